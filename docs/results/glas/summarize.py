"""Table 2-shaped summary and contour figure of the GlaS segmentation runs (see run.sh).

    python docs/results/glas/summarize.py --runs runs/seg --root ../shared/data/glas --out docs/results/glas

Reads RUNS/unet-<model>-s<seed>/<eval>/scores.json (from ``sibnet segment evaluate``; ``eval``:
raw connected components, ``eval-pp``: objects under ``--min-area`` pixels dropped), writes
OUT/results.json (every run's dataset-level scores) and OUT/table.md (mean (sd) over seeds; sd
with ddof=1, none for one seed), and OUT/contours.png from the seed-0 models on four testA images.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

MODELS = {"scratch": "U-Net (scratch)", "ce": "U-Net, CE-classifier encoder", "sibnet": "UNet_SIBNet"}
METRICS = [("f1", "object F1 (%)", 100), ("object_dice", "object Dice (%)", 100),
           ("object_hausdorff", "object Hausdorff (px)", 1), ("pixel_dice", "pixel Dice (%)", 100),
           ("pixel_hd95", "HD95 (px)", 1), ("mean_image_object_hausdorff", "object Hausdorff, mean of images (px)", 1)]
FIGURE_IDS = ["testA_1", "testA_2", "testA_5", "testA_8"]


def _num(v):
    return float(v) if not isinstance(v, str) else float(v)  # 'inf' / 'nan' strings from the JSON


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="runs/seg")
    ap.add_argument("--root", default="../shared/data/glas")
    ap.add_argument("--out", default="docs/results/glas")
    ap.add_argument("--no-figure", action="store_true")
    a = ap.parse_args()
    runs, out = Path(a.runs), Path(a.out)
    everything, tables = {}, []
    for ev in ("eval", "eval-pp"):
        results = {}
        for key in MODELS:
            for d in sorted(runs.glob(f"unet-{key}-s*")):
                f = d / ev / "scores.json"
                if f.is_file():
                    s = json.loads(f.read_text())
                    results.setdefault(key, {})[d.name.rsplit("-s", 1)[1]] = {
                        k: _num(s[k]) for k, _, _ in METRICS} | {"tp": s["tp"], "fp": s["fp"], "fn": s["fn"]}
        if results:
            everything[ev] = results
            tables.append(f"### {ev}\n\n" + _table(results))
    (out / "results.json").write_text(json.dumps(everything, indent=2, default=str))
    (out / "table.md").write_text("\n".join(tables))
    print("\n".join(tables))
    if a.no_figure:
        return
    _figure(runs, a.root, out)


def _table(results) -> str:
    header = "| metric (testA, 60 images) | " + " | ".join(
        f"{MODELS[k]} (n={len(results.get(k, {}))})" for k in MODELS) + " |"
    lines = [header, "|" + "---|" * (len(MODELS) + 1)]
    for m, label, scale in METRICS:
        cells = []
        for k in MODELS:
            v = np.array([r[m] for r in results.get(k, {}).values()], float) * scale
            if v.size == 0:
                cells.append("")
            elif v.size > 1 and np.isfinite(v).all():
                cells.append(f"{v.mean():.1f} ({v.std(ddof=1):.1f})")
            else:
                cells.append(f"{v.mean():.1f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _figure(runs: Path, root, out: Path) -> None:
    from sibnet.evaluation.glas import glas_scores
    from sibnet.segmentation.data import load_samples
    from sibnet.segmentation.figure import contour_figure
    from sibnet.segmentation.predict import predict_samples
    from sibnet.segmentation.train import load_segmenter

    samples = load_samples("glas", root, "testA", ids=FIGURE_IDS)
    preds, scores = {}, {}
    for k, name in MODELS.items():
        ck = runs / f"unet-{k}-s0" / "model.pt"
        if not ck.is_file():
            continue
        net, meta = load_segmenter(ck)
        preds[name] = predict_samples(net, samples, tuple(meta["image_size"]), meta.get("normalisation"))
        scores[name] = [glas_scores(p, s.instances) for p, s in zip(preds[name], samples)]
    contour_figure(samples, preds, out / "contours.png", scores=scores)


if __name__ == "__main__":
    main()
