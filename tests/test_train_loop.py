"""The training loop on a tiny in-test dataset, network and loss (also imported by the resume and
distributed tests, whose child processes run them).

The stand-in loss below follows SIBNetLoss's call convention with the saliency terms off
(weighted BCE only); the real loss is used by the end-to-end CLI test when it is installed.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch.utils.data import Dataset

from sibnet.config import load_config
from sibnet.data.base import DatasetInfo
from sibnet.errors import ConfigError, SibnetError
from sibnet.training import Trainer, load_checkpoint
from sibnet.training.loop import TrainState, update_early_stopping
from sibnet.training.sampling import EpochSampler, StreamBatchSampler, shard, stream_indices, unshard

SIZE = 16


class Jitter:
    """Follows the protocol of ``sibnet.data.transforms.LightAugment`` (a NumPy generator ``rng``,
    ``set_random_state(seed)``) that the loop reseeds per epoch and stores in checkpoints."""

    def __init__(self, seed: int):
        self.set_random_state(seed)

    def set_random_state(self, seed):
        self.rng = np.random.default_rng(seed)
        return self

    def __call__(self, item: dict) -> dict:
        shift = [int(v) for v in self.rng.integers(-1, 2, size=2)]
        return {**item, "image": torch.roll(item["image"], shift, dims=(1, 2)) * float(self.rng.uniform(0.9, 1.1))}


class TinySet(Dataset):
    """Two findings: a bright block on the left (a) / right (b); per-item noise from torch's global
    RNG and a seeded augmentation (so exact resume needs both random states restored)."""

    def __init__(self, n: int, seed: int, noise: bool = True, unlabeled: bool = False):
        g = torch.Generator().manual_seed(seed)
        y = (torch.rand(n, 2, generator=g) < 0.5).float()
        y[0], y[1] = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])  # both classes present
        x = torch.rand(n, 1, SIZE, SIZE, generator=g) * 0.3
        x[:, 0, 4:12, 2:7] += 0.6 * y[:, 0, None, None]
        x[:, 0, 4:12, 9:14] += 0.6 * y[:, 1, None, None]
        self.x, self.y = x, (torch.full_like(y, math.nan) if unlabeled else y)
        self.noise = noise
        self.augment = Jitter(seed) if noise else None
        self.info = DatasetInfo("tiny", ("a", "b"), task="multilabel", in_channels=1)
        self.patients = [f"p{i}" for i in range(n)]

    @property
    def labels(self) -> np.ndarray:
        return self.y.numpy()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        img = self.x[i] + (0.05 * torch.randn(1, SIZE, SIZE) if self.noise else 0.0)
        item = {"image": img, "label": self.y[i], "id": str(i), "patient": self.patients[i]}
        return self.augment(item) if self.augment is not None else item


class TinyNet(nn.Module):
    model_name = "tiny"

    def __init__(self, bn: bool = True, dropout: float = 0.2):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4) if bn else nn.Identity(), nn.ReLU(),
            nn.Conv2d(4, 8, 3, padding=1, stride=2), nn.ReLU(), nn.Dropout(dropout),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.features(x))


class PlainLoss:
    """Stand-in with SIBNetLoss's convention: ``total, terms = loss(x, y)``; ``y=None`` for an
    unlabeled batch (here a small logit penalty stands in for the saliency terms)."""

    def __init__(self, net, cfg, task, class_weight):
        self.net, self.pos_weight = net, class_weight

    def __call__(self, x, y):
        logits = self.net(x)
        if y is None:
            total = 0.01 * logits.pow(2).mean()
            return total, {"cd": total.detach(), "sc": torch.zeros(()), "total": total.detach(),
                           "logits": logits.detach()}
        wce = F.binary_cross_entropy_with_logits(logits, y, pos_weight=self.pos_weight)
        return wce, {"wce": wce.detach(), "cd": torch.zeros(()), "sc": torch.zeros(()), "total": wce.detach(),
                     "logits": logits.detach()}


def tiny_config(out, *overrides):
    return load_config(None, [f"out={out}", "data.batch_size=4", "train.epochs=3", "train.deterministic=true",
                              "train.progress=false", "train.device=cpu", "train.log_every=2", *overrides])


def tiny_datasets(unlabeled: bool = False, noise: bool = True):
    return (TinySet(24, 0, noise=noise), TinySet(12, 1, noise=False),
            TinySet(10, 2, unlabeled=True) if unlabeled else None)


def tiny_trainer(cfg, *, unlabeled=False, bn=True, dropout=0.2, noise=True, loss_factory=PlainLoss):
    torch.manual_seed(123)
    return Trainer(cfg, datasets=tiny_datasets(unlabeled, noise), model=TinyNet(bn, dropout),
                   loss_factory=loss_factory)


def weights(path) -> dict:
    return load_checkpoint(path)["model"]


def assert_same_weights(a: dict, b: dict, atol: float = 0.0):
    assert a.keys() == b.keys()
    for k in a:
        if atol:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------- sampling (pure functions)

def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    ds = list(range(10))
    a = EpochSampler(ds, seed=3)
    a.set_epoch(2)
    b = EpochSampler(ds, seed=3)
    b.set_epoch(2)
    b.set_start(4)
    assert list(b) == list(a)[4:] and len(b) == 6
    ref = torch.randperm(10, generator=torch.Generator().manual_seed(3 + 2)).tolist()  # DistributedSampler's rule
    assert list(a) == ref
    c = EpochSampler(ds, seed=3)
    c.set_epoch(3)
    assert list(c) != list(a)
    r0, r1 = EpochSampler(ds, num_replicas=2, rank=0, seed=3), EpochSampler(ds, num_replicas=2, rank=1, seed=3)
    r0.set_epoch(2), r1.set_epoch(2)
    assert list(r0) == ref[0::2] and list(r1) == ref[1::2]


def test_unlabeled_stream_and_shards():
    s = stream_indices(5, seed=1, start=0, count=15)
    assert all(sorted(s[i:i + 5]) == list(range(5)) for i in (0, 5, 10))  # consecutive permutations
    assert stream_indices(5, 1, 7, 4) == s[7:11]
    bs = StreamBatchSampler(5, 3, seed=1, rank=1, num_replicas=2, start=1)
    assert next(iter(bs)) == s[9:12]  # batch 1 of rank 1 = global batch 3
    parts = [torch.arange(10)[shard(10, r, 3)] for r in range(3)]
    assert torch.equal(unshard(parts), torch.arange(10))


def test_early_stopping_bookkeeping():
    s = TrainState()
    for epoch, auroc, expect in [(1, math.nan, True), (2, 0.7, True), (3, 0.7, False), (4, 0.69, False),
                                 (5, 0.71, True), (6, math.nan, False)]:
        s.epoch = epoch
        assert update_early_stopping(s, auroc, min_delta=0.0) is expect
    assert s.best_epoch == 5 and s.best_auroc == 0.71 and s.bad_epochs == 1


# ---------------------------------------------------------------- the loop

def test_fit_writes_checkpoints_logs_and_true_validation_auroc(tmp_path):
    cfg = tiny_config(tmp_path / "run")
    result = tiny_trainer(cfg).fit()
    out = tmp_path / "run"
    assert result["epochs"] == 3 and result["steps"] == 18 and result["stop_reason"] == "finished"
    for name in ("last.pt", "best.pt", "metrics.csv", "config.yaml"):
        assert (out / name).is_file(), name
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    logged = events.Scalars("epoch/val_auroc")
    assert [e.step for e in logged] == [6, 12, 18]
    assert [e.step for e in events.Scalars("train_step/wce")] == list(range(2, 19, 2))  # log_every=2
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and [int(r["step"]) for r in rows] == [6, 12, 18]
    assert all(float(r["train_wce"]) > 0 for r in rows)
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["meta"]["class_names"] == ["a", "b"] and ckpt["meta"]["model_name"] == "tiny"
    # the logged AUROC of the last epoch is sklearn's on the final weights and the whole val set
    net = TinyNet()
    net.load_state_dict(ckpt["model"])
    net.eval()
    val = TinySet(12, 1, noise=False)
    with torch.no_grad():
        p = torch.sigmoid(net(val.x)).numpy()
    expect = np.mean([roc_auc_score(val.y[:, j].numpy(), p[:, j]) for j in range(2)])
    assert float(rows[-1]["val_auroc"]) == pytest.approx(expect, abs=1e-5)
    assert [e.value for e in logged] == pytest.approx([float(r["val_auroc"]) for r in rows], abs=1e-5)
    best = max(range(3), key=lambda i: float(rows[i]["val_auroc"]))
    assert load_checkpoint(out / "best.pt")["state"]["epoch"] == best + 1


def test_resume_continues_exactly_in_process(tmp_path):
    tiny_trainer(tiny_config(tmp_path / "ref")).fit()
    tiny_trainer(tiny_config(tmp_path / "part", "train.epochs=1")).fit()
    result = tiny_trainer(tiny_config(tmp_path / "part")).fit(resume=tmp_path / "part")
    assert result["steps"] == 18
    assert_same_weights(weights(tmp_path / "ref" / "last.pt"), weights(tmp_path / "part" / "last.pt"))
    a = list(csv.DictReader(open(tmp_path / "ref" / "metrics.csv")))
    b = list(csv.DictReader(open(tmp_path / "part" / "metrics.csv")))
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in a] == \
           [{k: v for k, v in r.items() if k != "seconds"} for r in b]


def test_early_stopping_and_max_steps(tmp_path):
    res = tiny_trainer(tiny_config(tmp_path / "es", "train.patience=1", "train.min_delta=1.0",
                                   "train.epochs=5")).fit()
    assert res["epochs"] == 2 and res["stop_reason"].startswith("early stopping") and res["best_epoch"] == 1
    res = tiny_trainer(tiny_config(tmp_path / "ms", "train.max_steps=8")).fit()
    assert res["steps"] == 8 and res["epochs"] == 2


def test_unlabeled_batches_are_interleaved(tmp_path):
    calls = []

    class Recording(PlainLoss):
        def __call__(self, x, y):
            calls.append("u" if y is None else "l")
            return super().__call__(x, y)

    cfg = tiny_config(tmp_path / "plus", "unlabeled.enabled=true", "unlabeled.every=2", "unlabeled.batch_size=3",
                      "train.epochs=1")
    tiny_trainer(cfg, unlabeled=True, loss_factory=Recording).fit()
    assert "".join(calls) == "lu" + "l" + "lu" + "l" + "lu" + "l"
    state = load_checkpoint(tmp_path / "plus" / "last.pt")["state"]
    assert state["unlabeled_batches"] == 3
    rows = list(csv.DictReader(open(tmp_path / "plus" / "metrics.csv")))
    assert float(rows[0]["train_unlabeled_cd"]) > 0


def test_refuses_to_overwrite_or_resume_with_other_settings(tmp_path):
    tiny_trainer(tiny_config(tmp_path / "r", "train.epochs=1")).fit()
    with pytest.raises(SibnetError, match="already holds a run"):
        tiny_trainer(tiny_config(tmp_path / "r", "train.epochs=1")).fit()
    with pytest.raises(ConfigError, match="differs from the checkpoint's in optim.lr"):
        tiny_trainer(tiny_config(tmp_path / "r", "optim.lr=0.01")).fit(resume=tmp_path / "r")
    with pytest.raises(SibnetError, match="no checkpoint at"):
        tiny_trainer(tiny_config(tmp_path / "x")).fit(resume=tmp_path / "x")
    tiny_trainer(tiny_config(tmp_path / "r", "train.epochs=1")).fit(overwrite=True)


def test_unlabeled_pool_needs_saliency_terms(tmp_path):
    cfg = tiny_config(tmp_path / "u", "unlabeled.enabled=true", "loss.saliency=null")
    with pytest.raises(ConfigError, match="needs the saliency terms"):
        tiny_trainer(cfg, unlabeled=True).fit()


def test_without_validation_no_early_stopping(tmp_path):
    trainer = Trainer(tiny_config(tmp_path / "nv", "train.patience=1", "data.val_split=null"),
                      datasets=(TinySet(24, 0), None, None), model=TinyNet(), loss_factory=PlainLoss)
    res = trainer.fit()
    assert res["epochs"] == 3 and res["best_epoch"] == 3 and res["stop_reason"] == "finished"
    assert math.isnan(float(list(csv.DictReader(open(tmp_path / "nv" / "metrics.csv")))[0]["val_auroc"] or "nan"))


def test_autocast_choice():
    from sibnet.training.build import amp_dtype

    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu, "gradcam") is None and amp_dtype("fp32", cpu, "deep_taylor") is None
    assert amp_dtype("bf16", cpu, "gradcam") == torch.bfloat16 and amp_dtype("bf16", cpu, None) == torch.bfloat16
    assert amp_dtype("bf16", cpu, "deep_taylor") == torch.bfloat16  # explicit choice honoured
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        assert amp_dtype("auto", cuda, "deep_taylor") is None
        assert amp_dtype("auto", cuda, None) in (torch.bfloat16, torch.float16)


def test_bf16_autocast_path_on_cpu_and_fp16_refused(tmp_path):
    res = tiny_trainer(tiny_config(tmp_path / "bf16", "train.precision=bf16", "train.epochs=1",
                                   "loss.saliency=null")).fit()
    assert res["steps"] == 6
    ckpt = load_checkpoint(tmp_path / "bf16" / "last.pt")
    assert all(v.dtype != torch.bfloat16 and torch.isfinite(v.float()).all() for v in ckpt["model"].values())
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        tiny_trainer(tiny_config(tmp_path / "fp16", "train.precision=fp16", "loss.saliency=null")).fit()


def test_bn_stats_train_re_estimates_the_statistics_at_every_epoch_end(tmp_path):
    """train.bn_stats=train: the saved statistics are those of the final weights on the training
    split; the weights and the training itself are those of a plain run."""
    from sibnet.evaluation.batchnorm import recalibrate_batchnorm

    tiny_trainer(tiny_config(tmp_path / "bn", "train.bn_stats=train", "train.epochs=2"), noise=False).fit()
    tiny_trainer(tiny_config(tmp_path / "plain", "train.epochs=2"), noise=False).fit()
    bn, plain = weights(tmp_path / "bn" / "last.pt"), weights(tmp_path / "plain" / "last.pt")
    stats = [k for k in bn if "running_" in k]
    assert stats and all(torch.equal(bn[k], plain[k]) for k in bn if k not in stats and "num_batches" not in k)
    net = TinyNet()
    net.load_state_dict(plain)
    recalibrate_batchnorm(net, TinySet(24, 0, noise=False), batch_size=4, seed=0)
    for k in stats:
        torch.testing.assert_close(bn[k], net.state_dict()[k], rtol=1e-6, atol=1e-7, msg=k)
        assert not torch.allclose(bn[k], plain[k]), k  # the running averages of training differ
