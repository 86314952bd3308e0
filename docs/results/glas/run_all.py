"""Run every command of the GlaS comparison (the same commands as run.sh), a few at a time.

    python docs/results/glas/run_all.py --workers 3

Jobs run in the order below as soon as their input exists: the two classifiers first (unless
already trained), then, per seed, each U-Net's training followed by its testA evaluation.
Logs go to RUNS/<job>.log. A job whose eval/scores.json exists is skipped.
"""

from __future__ import annotations

import argparse
import subprocess
import threading
import time
from pathlib import Path

ROOT = "../shared/data/glas"


def jobs(runs: Path, seeds, models):
    cls = {"ce": runs / "cls-ce", "sibnet": runs / "cls-sibnet"}
    out = []
    for name, d in cls.items():
        extra = " --saliency none" if name == "ce" else ""
        out.append((f"cls-{name}", [], d / "done",
                    f"sibnet train --config configs/segment-classifier.yaml --root {ROOT}{extra} --out {d} "
                    f"--overwrite --no-progress && touch {d}/done"))
    for seed in seeds:
        for m in models:
            d = runs / f"unet-{m}-s{seed}"
            enc = "--scratch" if m == "scratch" else f"--encoder-checkpoint {cls[m]}/best.pt"
            deps = [] if m == "scratch" else [cls[m] / "done"]
            out.append((d.name, deps, d / "eval" / "scores.json",
                        f"sibnet segment train --config configs/segment.yaml --root {ROOT} {enc} --seed {seed} "
                        f"--out {d} && sibnet segment evaluate {d}/model.pt --root {ROOT} --split testA "
                        f"--threads 1 --out {d}/eval"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="runs/seg")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--models", default="scratch,ce,sibnet")
    ap.add_argument("--skip", default="", help="comma-separated job names to leave alone (e.g. run elsewhere)")
    a = ap.parse_args()
    runs = Path(a.runs)
    runs.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, a.skip.split(",")))
    todo = [j for j in jobs(runs, [int(s) for s in a.seeds.split(",")], a.models.split(","))
            if not j[2].exists() and j[0] not in skip]
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                ready = [j for j in todo if all(p.exists() for p in j[1])]
                if not todo:
                    return
                job = ready[0] if ready else None
                if job:
                    todo.remove(job)
            if job is None:
                time.sleep(10)
                continue
            name, _, _, cmd = job
            t0 = time.time()
            with open(runs / f"{name}.log", "w") as log:
                rc = subprocess.call(cmd, shell=True, stdout=log, stderr=subprocess.STDOUT,
                                     env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
            print(f"{time.strftime('%H:%M:%S')} {name}: exit {rc} after {time.time() - t0:.0f} s", flush=True)

    threads = [threading.Thread(target=worker) for _ in range(a.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
