#!/usr/bin/env bash
# Synthetic chest radiographs (pixel masks for every finding), shortcut off and on (a glyph that
# marks Cardiomegaly in 90% of the training images and is independent of it at test time).
# Resumable: rerun the same script to continue; finished jobs are skipped.
set -u
cd "$(dirname "$0")/../.."
COMMON="--dataset synthetic --image-size 64 --folds 2 --seeds 1 --budget epochs=5 --batch-size 16
        --methods baseline,sibnet,sibnet-gradcam --data-option n=200 --keep-epochs"
for variant in off on; do
  if [ "$variant" = on ]; then OPT="--data-option shortcut=Cardiomegaly"; else OPT=""; fi
  RUNS=runs/experiments/synthetic-64px-shortcut-$variant
  OUT=docs/results/synthetic-shortcut-$variant
  sibnet experiment table1 $COMMON $OPT --runs $RUNS --out $OUT
  sibnet experiment table3 $COMMON $OPT --runs $RUNS --out $OUT --saliency deep_taylor --max-maps 100
  sibnet experiment table4 $COMMON $OPT --runs $RUNS --out $OUT
done
