"""Checkpoints: atomic writes, weights-only loading (pickled payloads refused, never run), RNG
capture round trip, and rebuilding a model from a checkpoint alone."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from sibnet.data.base import DatasetInfo
from sibnet.errors import SibnetError
from sibnet.files import load_tensor_file
from sibnet.models import build_classifier
from sibnet.training.checkpoint import (
    FORMAT,
    VERSION,
    load_checkpoint,
    load_model_from_checkpoint,
    model_meta,
    save_checkpoint,
)
from sibnet.training.rng import capture_rng, restore_rng


class Payload:
    """Unpickling this object runs ``os.system(command)``."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_checkpoint_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "version": VERSION, "model": {}, "meta": {}, "x": Payload(f"touch {marker}")},
               path)
    with pytest.raises(SibnetError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "refused" in msg and "evil.pt" in msg and "\n" not in msg
    assert not marker.exists()
    with pytest.raises(SibnetError):
        load_model_from_checkpoint(path)
    with pytest.raises(SibnetError):
        load_tensor_file(path)
    assert not marker.exists()
    # the payload is real: a full unpickle would have run it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_atomic_save_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"a": torch.arange(3)})
    with pytest.raises(Exception):
        save_checkpoint(path, {"a": lambda: 0})  # not picklable: fails mid-write
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left


@pytest.mark.parametrize("content, message", [
    (b"", "not a readable torch file"),
    (b"PK\x03\x04 truncated", "not a readable torch file"),
])
def test_corrupt_files(tmp_path, content, message):
    path = tmp_path / "c.pt"
    path.write_bytes(content)
    with pytest.raises(SibnetError, match=message):
        load_checkpoint(path)


def test_not_a_sibnet_checkpoint(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "sd.pt")
    with pytest.raises(SibnetError, match="not a sibnet checkpoint"):
        load_checkpoint(tmp_path / "sd.pt")
    with pytest.raises(SibnetError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")


def test_truncated_real_checkpoint(tmp_path):
    path = tmp_path / "t.pt"
    save_checkpoint(path, {"format": FORMAT, "version": VERSION, "w": torch.randn(1000)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SibnetError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_model_rebuilt_from_checkpoint_alone(tmp_path):
    info = DatasetInfo("tiny", ("a", "b", "c"), task="multiclass", in_channels=1)
    torch.manual_seed(0)
    model = build_classifier("resnet18", 1, 3).eval()
    meta = model_meta(model_name="resnet18", info=info, image_size=32, normalisation=[[0.5], [0.25]],
                      saliency="gradcam")
    save_checkpoint(tmp_path / "best.pt", {"format": FORMAT, "version": VERSION, "model": model.state_dict(),
                                           "meta": meta})
    rebuilt, meta2 = load_model_from_checkpoint(tmp_path / "best.pt")
    assert not rebuilt.training
    assert meta2["class_names"] == ["a", "b", "c"] and meta2["task"] == "multiclass"
    assert meta2["image_size"] == 32 and meta2["normalisation"] == [[0.5], [0.25]]
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_model_meta_mismatch_fails_clearly(tmp_path):
    info = DatasetInfo("tiny", ("a", "b"), in_channels=1)
    meta = model_meta(model_name="resnet18", info=info, image_size=32)
    sd = build_classifier("resnet18", 1, 3).state_dict()  # 3 classes, meta says 2
    save_checkpoint(tmp_path / "m.pt", {"format": FORMAT, "version": VERSION, "model": sd, "meta": meta})
    with pytest.raises(SibnetError, match="do not fit resnet18"):
        load_model_from_checkpoint(tmp_path / "m.pt")


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.random(), np.random.normal(), torch.rand(1)  # leave a cached gaussian in numpy
    save_checkpoint(tmp_path / "r.pt", {"rng": capture_rng()})
    expected = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    got = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])
