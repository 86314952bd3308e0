#!/usr/bin/env bash
# How alike the class maps of the NIH CPU study's fold-0 models are (run_nih.sh's models, after
# their 5th epoch, on the fold's held-out images): `sibnet evaluate` with DeepTaylor and GradCAM
# maps, the first 64 held-out images, maps embedded at 32 px for every model; then one table.
set -eu
cd "$(dirname "$0")/../.."
RUNS=runs/experiments/nih-128px
OUT=$RUNS/distinctiveness
METHODS="baseline sibnet sibnet-gradcam no-cd no-sc se cbam"
for m in $METHODS; do
  for s in deep_taylor gradcam; do
    [ -f "$OUT/$m-$s/metrics.json" ] || sibnet evaluate --checkpoint $RUNS/$m/fold0-seed0/last.pt --split val \
      --method $s --embed-size 32 --max-maps 64 --n-boot 0 --out "$OUT/$m-$s" > /dev/null
  done
done
python - "$OUT" $METHODS > docs/results/nih/distinctiveness-fold0.md <<'PY'
import json, sys
out, methods = sys.argv[1], sys.argv[2:]
print("# Class distinctiveness of the maps, NIH CPU study, fold 0\n")
print("Command: `bash docs/results/run_nih_distinctiveness.sh`, i.e. for each model and saliency method")
print("`sibnet evaluate --checkpoint runs/experiments/nih-128px/METHOD/fold0-seed0/last.pt --split val "
      "--method SALIENCY --embed-size 32 --max-maps 64 --n-boot 0`.\n")
print("Mean over images of the mean pairwise cosine similarity over the 5 classes (sd over images): of the")
print("normalised maps themselves, and of their embeddings by the model's own encoder (L_CD). 1 = the")
print("classes' maps are alike.\n")
print("| model | DeepTaylor maps | DeepTaylor embeddings | GradCAM maps | GradCAM embeddings | AUROC (fold 0) |")
print("|---|---|---|---|---|---|")
for m in methods:
    cells = []
    for s in ("deep_taylor", "gradcam"):
        d = json.load(open(f"{out}/{m}-{s}/metrics.json"))
        c = d["distinctiveness"]
        cells += [f"{c['map_cosine']['mean']:.3f} ({c['map_cosine']['sd']:.3f})",
                  f"{c['embedding_cosine']['mean']:.5f} ({c['embedding_cosine']['sd']:.5f})"]
    auroc = d["classification"]["mean"]["auroc"]
    print(f"| {m} | " + " | ".join(cells) + f" | {auroc:.3f} |")
n = json.load(open(f"{out}/{methods[0]}-deep_taylor/metrics.json"))["distinctiveness"]["n_images"]
print(f"\n{n} held-out images per model.")
PY
echo "written: docs/results/nih/distinctiveness-fold0.md"
