#!/usr/bin/env bash
# NIH ChestX-ray14 sample (546 images, CheXpert-5 findings), 128 px, 5 patient-wise folds x 1 seed,
# 5 epochs per job. Two invocations share one study folder (disjoint methods: the light ones and
# the DeepTaylor ones); each runs its jobs one after the other on one thread at low priority, so
# the two use the machine's two cores. Rerun to continue: finished jobs are skipped, interrupted
# ones resume from their last finished epoch.
set -u
cd "$(dirname "$0")/../.."
COMMON="--dataset nih --root ../shared/data/nih-cxr14 --image-size 128 --folds 5 --seeds 1 --budget epochs=5"
RUNS=runs/experiments/nih-128px
export OMP_NUM_THREADS=1
# glibc keeps freed memory for reuse: 5-8% faster CPU steps, same results (docs/benchmarks.md)
export MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=67108864
nice -n 10 sibnet experiment table1 $COMMON --methods baseline,sibnet-gradcam,se,cbam --runs $RUNS --out $RUNS/tables-light &
nice -n 10 sibnet experiment table1 $COMMON --methods sibnet,no-cd,no-sc --runs $RUNS --out $RUNS/tables-heavy &
wait
# the LRP-epsilon and image-embedding ablations, two jobs at a time (they run across several sessions)
nice -n 10 sibnet experiment table1 $COMMON --methods sibnet-lrp,image-embed --runs $RUNS --out $RUNS/tables-ablations --jobs 2
# tables from the finished jobs (no training)
METHODS=baseline,sibnet,sibnet-gradcam,se,cbam,no-cd,no-sc,sibnet-lrp,image-embed
sibnet experiment table1 $COMMON --methods $METHODS --runs $RUNS --out docs/results/nih --report-only
sibnet experiment table4 $COMMON --methods $METHODS --runs $RUNS --out docs/results/nih
sibnet experiment table5 $COMMON --methods $METHODS --runs $RUNS --out docs/results/nih
# the same models with their BatchNorm statistics re-estimated on each fold's training split
sibnet experiment table4 $COMMON --methods $METHODS --runs $RUNS --out docs/results/nih/bn-train --bn-stats train
