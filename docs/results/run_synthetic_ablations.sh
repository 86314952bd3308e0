#!/usr/bin/env bash
# Synthetic chest radiographs, shortcut off: the baselines with attention and the ablations beside
# the methods of run_synthetic.sh, in the same study folder (same folds, data and budget): SE and
# CBAM DenseNet-121, SIBNet+ (the dataset's unlabeled split, 200 images), SIBNet without L_CD and
# without L_SC, with LRP-epsilon maps, and with image embeddings (L_CD on x times each map).
# Resumable like run_synthetic.sh; one thread at low priority.
set -u
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
# glibc keeps freed memory for reuse: 5-8% faster CPU steps, same results (docs/benchmarks.md)
export MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=67108864
COMMON="--dataset synthetic --image-size 64 --folds 2 --seeds 1 --budget epochs=5 --batch-size 16
        --data-option n=200 --keep-epochs"
RUNS=runs/experiments/synthetic-64px-shortcut-off
OUT=docs/results/synthetic-shortcut-off
for methods in se,cbam sibnet-plus no-cd,no-sc sibnet-lrp,image-embed; do
  nice -n 10 sibnet experiment table1 $COMMON --methods $methods --runs $RUNS --out $RUNS/tables-$methods
done
ALL=baseline,sibnet,sibnet-gradcam,se,cbam,sibnet-plus,no-cd,no-sc,sibnet-lrp,image-embed
sibnet experiment table1 $COMMON --methods $ALL --runs $RUNS --out $OUT --report-only
sibnet experiment table3 $COMMON --methods $ALL --runs $RUNS --out $OUT --saliency deep_taylor --max-maps 100
sibnet experiment table4 $COMMON --methods $ALL --runs $RUNS --out $OUT
