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
# The default objective (GradCAM maps, gradient-norm balance) in the converged setting: the full synthetic
# splits (1000 / 250 / 250), 64 px, early stopping after 4 epochs without a better validation AUROC
# (<= 20 epochs), 1 seed; lambda_cd and lambda_sc each in {0.3, 3} around the defaults (1.4 / 1): under the
# gradient balance lambda is the ratio of a term's pull on the weights to the weighted BCE's at the first
# step. ~10 min per job with two jobs on the 2 cores. The ablations no-cd / no-sc (lambda 0) are in
# run_converged.sh.
sibnet experiment lambda-grid --dataset synthetic --image-size 64 --folds 1 --seeds 1 --budget epochs=20 \
  --patience 4 --batch-size 16 --lambdas 0.3,3 --methods sibnet-gradcam-gradient \
  --runs "$PWD/runs/study15/lambda-grid-gradcam-gradient" --out docs/results/synthetic-converged/lambda-grid-gradcam-gradient
