#!/usr/bin/env bash
# Synthetic chest radiographs, shortcut off: the baselines with attention and the ablations beside
# the methods of run_synthetic.sh, in the same study folder (same folds, data and budget): SE and
# CBAM DenseNet-121, SIBNet+ (the dataset's unlabeled split, 200 images), SIBNet without L_CD and
# without L_SC. Resumable like run_synthetic.sh; one thread at low priority.
set -u
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
COMMON="--dataset synthetic --image-size 64 --folds 2 --seeds 1 --budget epochs=5 --batch-size 16
        --data-option n=200 --keep-epochs"
RUNS=runs/experiments/synthetic-64px-shortcut-off
OUT=docs/results/synthetic-shortcut-off
for methods in se,cbam sibnet-plus no-cd,no-sc; do
  nice -n 10 sibnet experiment table1 $COMMON --methods $methods --runs $RUNS --out $RUNS/tables-$methods
done
ALL=baseline,sibnet,sibnet-gradcam,se,cbam,sibnet-plus,no-cd,no-sc
sibnet experiment table1 $COMMON --methods $ALL --runs $RUNS --out $OUT --report-only
sibnet experiment table3 $COMMON --methods $ALL --runs $RUNS --out $OUT --saliency deep_taylor --max-maps 100
sibnet experiment table4 $COMMON --methods $ALL --runs $RUNS --out $OUT
