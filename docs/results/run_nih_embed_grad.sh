#!/usr/bin/env bash
# Diagnostic of the no-sc BatchNorm-statistics effect (docs/results/README.md, Observations): SIBNet
# without L_SC with the L_CD gradient into the encoder through the embedding pass stopped
# (loss.embed_grad=maps), on the NIH CPU study's folds and budget; then each model evaluated with
# its stored and with re-estimated BatchNorm statistics. Rerun to continue (resumable jobs).
set -u
cd "$(dirname "$0")/../.."
COMMON="--dataset nih --root ../shared/data/nih-cxr14 --image-size 128 --folds 5 --seeds 1 --budget epochs=5"
RUNS=runs/experiments/nih-128px-embedgrad-maps
export OMP_NUM_THREADS=1
export MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=67108864
nice -n 10 sibnet experiment table1 loss.embed_grad=maps $COMMON --methods no-sc --runs $RUNS --out docs/results/nih-embed-grad-maps
sibnet experiment table4 loss.embed_grad=maps $COMMON --methods no-sc --runs $RUNS --out docs/results/nih-embed-grad-maps --sigmas 0
sibnet experiment table4 loss.embed_grad=maps $COMMON --methods no-sc --runs $RUNS --out docs/results/nih-embed-grad-maps/bn-train --sigmas 0 --bn-stats train
