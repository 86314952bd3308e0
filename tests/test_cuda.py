"""The CUDA paths: saliency maps, the SIBNet step, autocast and the commands on a GPU.

Skipped where no CUDA device is present (CI has none); run on a GPU machine with
``python -m pytest tests/test_cuda.py``. TF32 is switched off inside the comparisons so that
CUDA and CPU results differ by float32 rounding only.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

from sibnet import saliency  # noqa: E402
from sibnet.losses import SIBNetLoss  # noqa: E402
from sibnet.models import build_classifier  # noqa: E402

METHODS = ["gradcam", "deep_taylor", "lrp_epsilon", "lrp_alpha_beta", "input_x_gradient"]
CUDA = torch.device("cuda")


@pytest.fixture
def no_tf32():
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _net(seed=0):
    torch.manual_seed(seed)
    return build_classifier("densenet121", in_channels=1, num_classes=5)


def _batch(b=2, size=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, size, size, generator=g), (torch.rand(b, 5, generator=g) > 0.5).float()


def _state(model):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            {n: m.training for n, m in model.named_modules()})


@pytest.mark.parametrize("method", METHODS)
def test_maps_on_cuda_equal_the_cpu_maps_and_leave_the_model_as_it_was(method, no_tf32):
    # float64: LRP-epsilon through DenseNet-121 is ill-conditioned in float32 (its float32 and
    # float64 maps differ by about 5% of the map maximum on the CPU alone), so a float32 comparison
    # would measure rounding, not the CUDA path
    cpu_model = _net().eval().double()
    gpu_model = copy.deepcopy(cpu_model).to(CUDA)
    x, _ = _batch()
    x = x.double()
    ref = saliency.get(method)(cpu_model, x)
    before = _state(gpu_model)
    got = saliency.get(method)(gpu_model, x.to(CUDA))
    assert got.device.type == "cuda" and got.shape == ref.shape == (2, 5, 48, 48)
    assert torch.isfinite(got).all()
    scale = ref.abs().amax(dim=(-2, -1), keepdim=True).clamp(min=1e-12)
    assert ((got.cpu() - ref).abs() / scale).max().item() < 1e-6
    assert torch.isfinite(saliency.get(method)(copy.deepcopy(gpu_model).float(), x.float().to(CUDA))).all()
    after = _state(gpu_model)
    assert before[1] == after[1]
    for k, v in before[0].items():
        assert torch.equal(v, after[0][k]), k


@pytest.mark.parametrize("method", ["deep_taylor", "gradcam"])
def test_sibnet_step_on_cuda_matches_cpu_and_keeps_batchnorm_statistics(method, no_tf32):
    x, y = _batch(b=4, size=40)
    results = {}
    for device in ("cpu", "cuda"):
        base, sib = _net().train().to(device), _net().train().to(device)
        base_total, _ = SIBNetLoss(base, saliency=None)(x.to(device), y.to(device))
        base_total.backward()
        total, terms = SIBNetLoss(sib, saliency=method)(x.to(device), y.to(device))
        total.backward()
        for name, p in sib.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        for (name, b), (_, s) in zip(base.named_buffers(), sib.named_buffers()):
            torch.testing.assert_close(s, b, msg=f"BatchNorm buffer {name} differs from a baseline step's")
        results[device] = ({k: float(v) for k, v in terms.items() if k != "logits"},
                           sib.class_layers.out.weight.grad.cpu())
    (cpu_terms, cpu_grad), (gpu_terms, gpu_grad) = results["cpu"], results["cuda"]
    for k in ("wce", "cd"):
        assert gpu_terms[k] == pytest.approx(cpu_terms[k], rel=2e-3, abs=1e-5), k
    # L_SC also depends on which pixels pass the Otsu threshold: a rounding difference can move a
    # pixel in or out of a cluster, so it and the gradients are compared more loosely
    assert gpu_terms["sc"] == pytest.approx(cpu_terms["sc"], rel=5e-2, abs=1e-6), "sc"
    torch.testing.assert_close(gpu_grad, cpu_grad, rtol=5e-2, atol=1e-3 * cpu_grad.abs().max().item())


def test_bf16_autocast_gradcam_step_is_finite():
    model = _net().train().to(CUDA)
    x, y = (t.to(CUDA) for t in _batch(b=4, size=64))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    loss_fn = SIBNetLoss(model, saliency="gradcam")
    for _ in range(2):
        opt.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            total, terms = loss_fn(x, y)
        total.backward()
        opt.step()
        assert torch.isfinite(total) and terms["cd"] != 0 and terms["sc"] > 0
        assert all(torch.isfinite(p).all() for p in model.parameters())


def test_torch_cluster_labelling_on_cuda_equals_scipy():
    from sibnet.losses.clusters import clusters

    maps = torch.rand(6, 5, 40, 40, generator=torch.Generator().manual_seed(3))
    cpu = clusters(maps, method="scipy")
    gpu = clusters(maps.to(CUDA))
    assert gpu.device.type == "cuda"
    # same partition: equal labels in one map <=> equal labels in the other
    for a, b in zip(cpu.reshape(30, -1), gpu.cpu().reshape(30, -1)):
        pairs = set(zip(a.tolist(), b.tolist()))
        assert len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))
        assert ((a == 0) == (b == 0)).all()


def _run(*args, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    res = subprocess.run([sys.executable, "-m", "sibnet", *args], capture_output=True, text=True,
                         timeout=timeout, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_train_evaluate_explain_commands_on_cuda(tmp_path):
    out = tmp_path / "run"
    summary = json.loads(_run("train", "--dataset", "synthetic", "--image-size", "64", "--batch-size", "8",
                              "--epochs", "2", "--saliency", "deep_taylor", "--device", "cuda", "--no-progress",
                              "--out", str(out), "data.options={n: 32}"))
    assert summary["epochs"] == 2
    assert len((out / "metrics.csv").read_text().splitlines()) == 3  # header + one row per epoch
    _run("evaluate", "--checkpoint", str(out / "best.pt"), "--device", "cuda", "--max-maps", "8",
         "--n-boot", "50", "--out", str(tmp_path / "eval"))
    result = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0.0 <= result["classification"]["mean"]["auroc"] <= 1.0
    from PIL import Image

    img = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((80, 80)) * 255).astype(np.uint8)).save(img)
    _run("explain", "--checkpoint", str(out / "best.pt"), "--device", "cuda", "--out", str(tmp_path / "ex"),
         str(img))
    assert (tmp_path / "ex" / "x_deep_taylor.png").exists()


@pytest.mark.parametrize("precision", ["auto", "bf16"])
def test_train_with_autocast_on_cuda(tmp_path, precision):
    out = tmp_path / precision
    summary = json.loads(_run("train", "--dataset", "synthetic", "--image-size", "64", "--batch-size", "8",
                              "--epochs", "1", "--saliency", "gradcam", "--device", "cuda", "--no-progress",
                              "--out", str(out), "data.options={n: 16}", f"train.precision={precision}"))
    assert summary["epochs"] == 1
    from sibnet.training import load_model_from_checkpoint

    model, _ = load_model_from_checkpoint(Path(out) / "last.pt")
    assert all(torch.isfinite(p).all() for p in model.parameters())
