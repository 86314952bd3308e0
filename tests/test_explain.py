"""``sibnet explain``: overlays per image, probabilities in the titles, one-line errors (exit 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sibnet.cli import main
from sibnet.data.synthetic import SyntheticChestXray
from sibnet.models.classifier import build_classifier
from sibnet.training.checkpoint import FORMAT, VERSION, model_meta, save_checkpoint


def tiny_checkpoint(path, *, image_size=32, model_name="resnet18", n=16, seed=0, normalisation=None, **data):
    """A sibnet checkpoint of an untrained (seeded) classifier for the synthetic chest data."""
    torch.manual_seed(seed)
    info = SyntheticChestXray(split="test", size=image_size, n=0, cache=False).info
    model = build_classifier(model_name, info.in_channels, info.num_classes)
    meta = model_meta(model_name=model_name, info=info, image_size=image_size, normalisation=normalisation,
                      dataset="synthetic")
    config = {"data": {"name": "synthetic", "root": None, "options": {"n": n, "augment": True}, **data},
              "train": {"seed": seed}}
    save_checkpoint(path, {"format": FORMAT, "version": VERSION, "model": model.state_dict(), "meta": meta,
                           "config": config})
    return path


def _write_dicom(path, pixels):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def _synthetic_png(tmp_path, index=0):
    ds = SyntheticChestXray(split="test", size=32, n=4, cache=False)
    img, _ = ds.render(index)
    path = tmp_path / f"case{index}.png"
    Image.fromarray(img).save(path)
    return path, ds[index]["image"]


def test_png_jpeg_dicom_give_one_overlay_figure_each(ckpt, tmp_path, capsys):
    png, _ = _synthetic_png(tmp_path)
    rgb = np.random.default_rng(0).integers(0, 256, (50, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "colour.jpg")
    _write_dicom(tmp_path / "scan.dcm", np.random.default_rng(1).integers(0, 4096, (40, 40)))
    out = tmp_path / "out"
    rc = main(["explain", "--checkpoint", str(ckpt), "--method", "input_x_gradient", "--out", str(out),
               str(png), str(tmp_path / "colour.jpg"), str(tmp_path / "scan.dcm")])
    assert rc == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["case0_input_x_gradient.png", "colour_input_x_gradient.png", "scan_input_x_gradient.png"]
    printed = capsys.readouterr().out.split()
    assert len(printed) == 3
    for name in written:
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 3 * im.size[1]  # image + 5 class panels side by side


def test_input_matches_dataset_and_titles_carry_probabilities(ckpt, tmp_path):
    from sibnet.commands.explain import load_input
    from sibnet.report.figures import explain_figure
    from sibnet.saliency import get
    from sibnet.training.checkpoint import load_model_from_checkpoint

    png, item_image = _synthetic_png(tmp_path, 1)
    model, meta = load_model_from_checkpoint(ckpt)
    shown, x = load_input(png, meta)
    assert torch.equal(shown, item_image)  # same pixels as the dataset item (8-bit, no normalisation)
    assert torch.equal(x, shown)
    with torch.no_grad():
        probs = torch.sigmoid(model(x[None]))[0]
    maps = get("input_x_gradient")(model, x[None])[0].detach()
    fig = explain_figure(shown.numpy(), maps.numpy(), meta["class_names"], probs.numpy(), title="t")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "image"
    for j, name in enumerate(meta["class_names"]):
        assert titles[j + 1] == f"{name}\np = {float(probs[j]):.3f}"
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_normalisation_of_the_checkpoint_is_applied(tmp_path):
    from sibnet.commands.explain import load_input

    png, item_image = _synthetic_png(tmp_path)
    meta = {"in_channels": 1, "image_size": 32, "normalisation": [[0.5], [0.25]]}
    shown, x = load_input(png, meta)
    assert torch.allclose(x, (item_image - 0.5) / 0.25)
    meta["image_size"] = 16  # resized to the checkpoint's size
    shown, x = load_input(png, meta)
    assert shown.shape == (1, 16, 16)


@pytest.mark.parametrize("problem", ["missing", "unreadable"])
def test_bad_image_is_one_line_error_exit_2(ckpt, tmp_path, capsys, problem):
    png, _ = _synthetic_png(tmp_path)
    bad = tmp_path / "bad.png"
    if problem == "unreadable":
        bad.write_text("not an image")
    out = tmp_path / "out"
    rc = main(["explain", "--checkpoint", str(ckpt), "--method", "input_x_gradient", "--out", str(out),
               str(png), str(bad)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and str(bad) in err
    assert not out.exists()  # nothing written when one input is bad


def test_bad_checkpoint_and_method(ckpt, tmp_path, capsys):
    png, _ = _synthetic_png(tmp_path)
    assert main(["explain", "--checkpoint", str(tmp_path / "none.pt"), str(png)]) == 2
    assert "none.pt" in capsys.readouterr().err
    assert main(["explain", "--checkpoint", str(ckpt), "--method", "nope", str(png)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err and "gradcam" in err


def test_contrastive_maps_and_their_options(ckpt, tmp_path, capsys, monkeypatch):
    """--contrast clrp: the figure shows the CLRP maps (as the saliency function gives them) and says so in
    its name and title; an option the method does not take is a one-line error before any work."""
    import sibnet.report.figures as figures
    from sibnet.saliency import get
    from sibnet.training.checkpoint import load_model_from_checkpoint

    png, _ = _synthetic_png(tmp_path)
    shown = {}
    real = figures.explain_figure

    def spy(image, maps, names, probs, title="", method="", mask=None):
        shown.update(maps=maps, method=method, mask=mask)
        return real(image, maps, names, probs, title=title, method=method, mask=mask)

    monkeypatch.setattr(figures, "explain_figure", spy)
    out = tmp_path / "out"
    assert main(["explain", "--checkpoint", str(ckpt), "--contrast", "clrp", "--out", str(out), str(png)]) == 0
    assert [p.name for p in out.iterdir()] == ["case0_deep_taylor-contrast-clrp.png"]
    assert shown["method"] == "deep_taylor contrast=clrp" and shown["mask"] is None
    from sibnet.commands.explain import load_input

    model, meta = load_model_from_checkpoint(ckpt)
    model.eval()
    want = get("deep_taylor")(model, load_input(png, meta)[1][None], contrast="clrp")[0].detach()
    np.testing.assert_allclose(shown["maps"], want.numpy(), rtol=1e-5, atol=1e-7)
    capsys.readouterr()
    assert main(["explain", "--checkpoint", str(ckpt), "--method", "gradcam", "--contrast", "clrp",
                 "--out", str(tmp_path / "o2"), str(png)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "contrast" in err and not (tmp_path / "o2").exists()


def test_masks_beside_are_merged_drawn_and_scored(ckpt, tmp_path, capsys, monkeypatch):
    """--masks-beside: <stem>_mask.png and <stem>_mask_1.png are merged (the BUSI release's layout), resized
    with the image, passed to the figure, and each class panel gives the map's mass inside the mask."""
    import sibnet.report.figures as figures

    png, _ = _synthetic_png(tmp_path)  # 32 x 32 pixels
    a = np.zeros((32, 32), np.uint8)
    a[2:10, 2:10] = 255
    b = np.zeros((32, 32), np.uint8)
    b[20:30, 16:28] = 255
    Image.fromarray(a).save(tmp_path / "case0_mask.png")
    Image.fromarray(b).save(tmp_path / "case0_mask_1.png")
    Image.fromarray(b).save(tmp_path / "case0_mask_extra.png")  # not one of its masks
    other, _ = _synthetic_png(tmp_path, index=1)  # no mask beside it
    seen = []
    real = figures.explain_figure

    def spy(image, maps, names, probs, title="", method="", mask=None):
        seen.append((maps, mask))
        fig = real(image, maps, names, probs, title=title, method=method, mask=mask)
        seen.append([ax.get_title() for ax in fig.axes])
        return fig

    monkeypatch.setattr(figures, "explain_figure", spy)
    out = tmp_path / "out"
    assert main(["explain", "--checkpoint", str(ckpt), "--method", "input_x_gradient", "--masks-beside",
                 "--out", str(out), str(png), str(tmp_path / "case0_mask_1.png"), str(other)]) == 0
    printed = capsys.readouterr().out
    assert "case1.png: no mask beside it" in printed and "case0_mask_1.png: the mask of" in printed
    assert sorted(p.name for p in out.iterdir()) == ["case0_input_x_gradient.png", "case1_input_x_gradient.png"]
    (maps, mask), titles, (_, none), _ = seen
    assert none is None
    want = ((a > 0) | (b > 0)).astype(np.float32)
    np.testing.assert_array_equal(mask, want)
    pos = np.maximum(maps, 0)
    for j, title in enumerate(titles[1:]):
        share = pos[j][want > 0].sum() / pos[j].sum()
        assert f"in mask {100 * share:.0f}%" in title
    assert titles[0] == "image + mask"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "case1_mask.png")  # an empty mask: no share
    seen.clear()
    assert main(["explain", "--checkpoint", str(ckpt), "--method", "input_x_gradient", "--masks-beside",
                 "--out", str(out), str(other)]) == 0
    titles = seen[1]
    assert titles[0] == "image (mask empty)" and not any("in mask" in t for t in titles)


def test_mask_errors_name_the_file(ckpt, tmp_path, capsys):
    png, _ = _synthetic_png(tmp_path)
    small = tmp_path / "small_mask.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(small)
    cases = [(["--mask", str(small)], "small_mask.png: mask is 16x16 pixels"),
             (["--mask", str(tmp_path / "none.png")], "none.png: mask file not found"),
             (["--mask", str(small), "--mask", str(small)], "--mask: 2 masks for 1 images")]
    for extra, message in cases:
        capsys.readouterr()
        assert main(["explain", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), *extra, str(png)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "o").exists()


def test_mass_inside_by_hand():
    from sibnet.report.figures import mass_inside

    heat = np.array([[1.0, -2.0], [3.0, 0.0]])
    mask = np.array([[1, 1], [0, 0]])
    assert mass_inside(heat, mask) == pytest.approx(1 / 4)
    assert np.isnan(mass_inside(-np.ones((2, 2)), mask))
