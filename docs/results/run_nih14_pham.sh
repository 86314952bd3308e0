#!/usr/bin/env bash
# The Pham et al. 2020 recipe against the plain DenseNet-121 on the NIH sample with all 14 NIH
# findings (546 images, 128 px, 5 patient-wise folds x 1 seed, 5 epochs per job). Of the recipe's
# CheXpert hierarchy only Consolidation -> Pneumonia exists among NIH's labels, so stage 1 learns
# Pneumonia conditioned on Consolidation and every other label unconditionally; NIH has no
# uncertain labels, so U-LSR does nothing. Rerun to continue.
set -u
cd "$(dirname "$0")/../.."
COMMON="--dataset nih --root ../shared/data/nih-cxr14 --data-option label_set=nih14 --image-size 128 --folds 5 --seeds 1 --budget epochs=5"
RUNS=runs/experiments/nih14-128px
export OMP_NUM_THREADS=1
export MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=67108864
nice -n 10 sibnet experiment table1 $COMMON --methods baseline,pham --runs $RUNS --out docs/results/nih14-pham --jobs 2
