"""U-Net on a classifier backbone: shapes, skip features, frozen encoder, checkpoint transfer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sibnet.errors import SibnetError
from sibnet.models.classifier import build_classifier
from sibnet.models.unet import build_unet
from sibnet.segmentation.train import train_segmenter, unet_from_checkpoint
from sibnet.training.checkpoint import FORMAT, VERSION, model_meta, save_checkpoint

SMALL = (16, 8, 8, 8, 4)  # small decoder for speed


def _head(classifier, backbone, last):
    """The classifier's own head applied to the U-Net's deepest skip feature map."""
    pooled = F.adaptive_avg_pool2d(last, 1).flatten(1)
    if backbone == "densenet121":
        return classifier.class_layers.out(pooled)
    return classifier.fc(pooled)


@pytest.mark.parametrize("backbone,channels", [("densenet121", (64, 256, 512, 1024, 1024)),
                                               ("resnet101", (64, 256, 512, 1024, 2048))])
def test_shapes_and_skips_are_the_classifier_stages(backbone, channels):
    torch.manual_seed(0)
    clf = build_classifier(backbone, 3, 2).eval()
    net = build_unet(backbone, 3, classifier=clf, decoder_channels=SMALL)
    assert net.encoder_out_channels == channels
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        feats = net.encode(x)
        y = net(x)
        logits = clf(x)
    assert y.shape == (2, 2, 64, 96)
    for k, (f, c) in enumerate(zip(feats, channels)):
        assert f.shape == (2, c, 64 // 2 ** (k + 1), 96 // 2 ** (k + 1))
    # the deepest skip is exactly what the classifier pools: its head reproduces the logits
    torch.testing.assert_close(_head(clf, backbone, feats[4]), logits, rtol=1e-4, atol=1e-5)


def test_input_size_and_channels_checked():
    net = build_unet("densenet121", 3, decoder_channels=SMALL)
    with pytest.raises(SibnetError, match="multiples of 32"):
        net(torch.zeros(1, 3, 64, 80))
    with pytest.raises(SibnetError, match=r"\(B, 3, H, W\)"):
        net(torch.zeros(1, 1, 64, 64))


def _batch(n=4, h=64, w=64):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, h, w, generator=g)
    y = (x[:, 0] > 0.5).long()
    return x, y


def test_frozen_encoder_unchanged_after_training_decoder_changes():
    torch.manual_seed(0)
    net = build_unet("densenet121", 3, decoder_channels=SMALL)
    assert all(not p.requires_grad for p in net.encoder.parameters())
    assert all(p.requires_grad for p in net.decoder_parameters())
    net.train()
    assert not any(m.training for m in net.encoder.modules())  # BatchNorm keeps its running statistics
    assert net.blocks[0][0].training
    enc0 = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    dec0 = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("encoder.")}
    x, y = _batch()
    train_segmenter(net, x, y, epochs=1, batch_size=2, weights=torch.tensor([1.0, 2.0]))
    for k, v in net.encoder.state_dict().items():
        assert torch.equal(v, enc0[k]), k
    changed = [k for k, v in net.state_dict().items() if k in dec0 and not torch.equal(v, dec0[k])]
    assert len(changed) > len(dec0) // 2
    assert all(p.grad is None for p in net.encoder.parameters())


def test_unfrozen_encoder_is_trained():
    torch.manual_seed(0)
    net = build_unet("densenet121", 3, freeze_encoder=False, decoder_channels=SMALL)
    w0 = net.encoder[0][0].weight.detach().clone()
    net.train()
    assert net.encoder[0][1].training
    x, y = _batch(2)
    train_segmenter(net, x, y, epochs=1, batch_size=2)
    assert not torch.equal(net.encoder[0][0].weight, w0)


@pytest.mark.parametrize("backbone", ["densenet121", "resnet18"])
def test_checkpoint_encoder_weights_transferred(tmp_path, backbone):
    from sibnet.data.base import DatasetInfo

    torch.manual_seed(3)
    clf = build_classifier(backbone, 3, 2)
    with torch.no_grad():  # non-default BatchNorm statistics must travel too
        for m in clf.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    clf.eval()
    info = DatasetInfo("glas", ("benign", "malignant"), task="multiclass", in_channels=3)
    path = save_checkpoint(tmp_path / "c.pt", {"format": FORMAT, "version": VERSION, "model": clf.state_dict(),
                                               "meta": model_meta(model_name=backbone, info=info, image_size=64)})
    net, meta = unet_from_checkpoint(path, decoder_channels=SMALL)
    assert meta["model_name"] == backbone and net.backbone == backbone and net.frozen
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = clf(x)
        got = _head(clf, backbone, net.encode(x)[4])
        fresh = _head(clf, backbone, build_unet(backbone, 3, decoder_channels=SMALL).encode(x)[4])
    torch.testing.assert_close(got, logits, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(fresh, logits, atol=1e-3)
    # every encoder tensor equals the classifier's
    sd = clf.state_dict()
    prefix = "features." if backbone == "densenet121" else ""
    stem = net.encoder[0][0]
    assert torch.equal(stem.weight, sd[prefix + ("conv0.weight" if prefix else "conv1.weight")])
    n_enc = len(net.encoder.state_dict())
    n_clf = len([k for k in sd if not k.startswith(("class_layers", "fc."))])
    assert n_enc == n_clf


def test_same_seed_same_decoder_for_checkpoint_and_scratch(tmp_path):
    """The comparison's U-Nets differ only in the encoder: with one seed, identical decoder init."""
    from sibnet.data.base import DatasetInfo

    clf = build_classifier("resnet18", 3, 2)
    info = DatasetInfo("glas", ("benign", "malignant"), task="multiclass", in_channels=3)
    path = save_checkpoint(tmp_path / "c.pt", {"format": FORMAT, "version": VERSION, "model": clf.state_dict(),
                                               "meta": model_meta(model_name="resnet18", info=info, image_size=64)})
    torch.manual_seed(5)
    a, _ = unet_from_checkpoint(path, decoder_channels=SMALL)
    torch.manual_seed(5)
    b = build_unet("resnet18", 3, freeze_encoder=False, decoder_channels=SMALL)
    da = {k: v for k, v in a.state_dict().items() if not k.startswith("encoder.")}
    db = {k: v for k, v in b.state_dict().items() if not k.startswith("encoder.")}
    assert da.keys() == db.keys()
    assert all(torch.equal(da[k], db[k]) for k in da)
