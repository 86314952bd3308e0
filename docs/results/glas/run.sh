#!/usr/bin/env bash
# The GlaS segmentation comparison (docs/results/glas/README.md), run from the project root.
# Every process single-threaded (OMP_NUM_THREADS=1); run_all.py runs the same commands a few at a time.
set -euo pipefail
export OMP_NUM_THREADS=1
ROOT=../shared/data/glas
RUNS=runs/seg

# 1. the two DenseNet-121 classifiers (image-level grades; best.pt = best validation AUROC on fold 0)
sibnet train --config configs/segment-classifier.yaml --root $ROOT --out $RUNS/cls-sibnet --no-progress
sibnet train --config configs/segment-classifier.yaml --root $ROOT --saliency none --out $RUNS/cls-ce --no-progress

# 2. three U-Nets per seed, same decoder and schedule (configs/segment.yaml), scored on testA
for seed in 0 1 2; do
  sibnet segment train --config configs/segment.yaml --root $ROOT --scratch --seed $seed --out $RUNS/unet-scratch-s$seed
  sibnet segment train --config configs/segment.yaml --root $ROOT --encoder-checkpoint $RUNS/cls-ce/best.pt --seed $seed --out $RUNS/unet-ce-s$seed
  sibnet segment train --config configs/segment.yaml --root $ROOT --encoder-checkpoint $RUNS/cls-sibnet/best.pt --seed $seed --out $RUNS/unet-sibnet-s$seed
  for m in scratch ce sibnet; do
    sibnet segment evaluate $RUNS/unet-$m-s$seed/model.pt --root $ROOT --split testA --threads 1 --out $RUNS/unet-$m-s$seed/eval
    # post-processed: objects under 576 px dropped (576 = 1st percentile of the gland areas in GlaS train)
    sibnet segment evaluate $RUNS/unet-$m-s$seed/model.pt --root $ROOT --split testA --threads 1 --min-area 576 \
      --out $RUNS/unet-$m-s$seed/eval-pp
  done
done

# 3. table and figure
python docs/results/glas/summarize.py --runs $RUNS --root $ROOT --out docs/results/glas
