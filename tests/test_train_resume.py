"""A training process killed with SIGKILL part-way through an epoch, then resumed, ends with the
same weights (bit for bit) as an uninterrupted run.

The child process (this file run as a script) trains the tiny set-up of ``test_train_loop``;
with ``--pause-at K`` it stops inside step K+1 (after K optimizer steps) and prints PAUSED, so the
parent kills it at a known point in the middle of an epoch.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from testnets import kill_child_at

HERE = Path(__file__).resolve().parent
EPOCHS, BATCHES = 3, 6  # 24 items, batch 4


def child(argv: list[str]) -> None:
    sys.path.insert(0, str(HERE))
    import test_train_loop as t

    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--pause-at", type=int, default=None)
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    calls = {"n": 0}

    class Pausing(t.PlainLoss):
        def __call__(self, x, y):
            if a.pause_at is not None and calls["n"] == a.pause_at:
                print("PAUSED", flush=True)
                time.sleep(600)
            calls["n"] += 1
            return super().__call__(x, y)

    cfg = t.tiny_config(a.out, f"train.epochs={EPOCHS}", f"train.checkpoint_every={a.checkpoint_every}")
    t.tiny_trainer(cfg, loss_factory=Pausing).fit(resume=a.out if a.resume else None)
    print("DONE", flush=True)


def run_child(*args: str, timeout: float = 120) -> None:
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0 and "DONE" in res.stdout, res.stderr[-2000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("reference") / "run"
    run_child(str(out))
    from sibnet.training import load_checkpoint

    return load_checkpoint(out / "last.pt")


@pytest.mark.parametrize("kill_step, checkpoint_every, resumed_from", [
    (9, 0, 6),  # killed in epoch 2 (steps 7..12); last.pt from the end of epoch 1
    # mid-epoch checkpoints every 4 steps: resumes inside epoch 2 (augmenter state from the checkpoint)
    pytest.param(10, 4, 8, marks=pytest.mark.slow),
])
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path, reference, kill_step, checkpoint_every,
                                                              resumed_from):
    from sibnet.training import load_checkpoint

    out = tmp_path / "run"
    kill_child_at(__file__, out, kill_step, checkpoint_every)
    saved = load_checkpoint(out / "last.pt")["state"]
    assert saved["step"] == resumed_from and saved["step"] < kill_step
    assert saved["batch_in_epoch"] == resumed_from % BATCHES
    run_child(str(out), "--resume", "--checkpoint-every", str(checkpoint_every))
    final = load_checkpoint(out / "last.pt")
    assert final["state"]["step"] == EPOCHS * BATCHES
    for k, v in reference["model"].items():
        assert torch.equal(final["model"][k], v), k
    ref_opt, got_opt = reference["optimizer"]["state"], final["optimizer"]["state"]
    for i in ref_opt:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(got_opt[i][name], ref_opt[i][name]), (i, name)
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in reference["state"]["history"]]
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in final["state"]["history"]] == strip


if __name__ == "__main__":
    child(sys.argv[1:])


def test_checkpoint_saved_before_a_setting_existed_is_resumable(tmp_path):
    from sibnet.config import Config
    from sibnet.errors import ConfigError
    from sibnet.training.trainer import check_resumable

    cfg = Config()
    saved = cfg.to_dict()
    del saved["loss"]["sc_scale"]  # as written by a version without this setting
    check_resumable(saved, cfg, tmp_path / "last.pt")
    saved["loss"]["sc_scale"] = "pair_mean"
    with pytest.raises(ConfigError, match="loss.sc_scale"):
        check_resumable(saved, cfg, tmp_path / "last.pt")
