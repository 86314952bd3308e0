#!/usr/bin/env bash
# Lambda grid (Fig. 11) on the synthetic chest radiographs, 64 px, SIBNet with DeepTaylor:
# lambda_cd and lambda_sc each in {0, 0.1, 1} (the paper's grid is [0, 2]; 0.1 is there because the
# paper's L_SC, a sum per map, is 10-300x the weighted BCE), 2 folds x 1 seed, 3 epochs per job.
# Resumable: rerun to continue; finished jobs are skipped.
set -u
cd "$(dirname "$0")/../.."
sibnet experiment lambda-grid --dataset synthetic --image-size 64 --folds 2 --seeds 1 --budget epochs=3 \
  --batch-size 16 --data-option n=200 --lambdas 0,0.1,1 \
  --runs runs/experiments/lambda-grid-synthetic-64px --out docs/results/lambda-grid-synthetic
