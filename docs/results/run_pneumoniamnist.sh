#!/usr/bin/env bash
# PneumoniaMNIST (the published SIBNet example's data) with ResNet-18 as in that example, at 64 px
# (the 28 px images upsampled; ResNet-18's last feature map is then 2x2, so GradCAM's map has
# spatial extent), the official train/val/test splits (3882/524/624), early stopping after 4
# epochs without a better validation AUROC (at most 20 epochs), 3 seeds.
# Methods: baseline; sibnet-gradient (DeepTaylor + CLRP maps, gradient-norm balance: the defaults);
# sibnet-gradcam-gradient (GradCAM maps, the same balance); authors (the published code's objective:
# GradCAM with constant channel weights, L_CD as |cos| of the maps, first-step value balance).
# Method names that fix their balance are used so that the jobs stay valid if the defaults change.
# CPU plan (2-core machine, single-thread processes, measured): baseline ~25 s per epoch (it ran all 20
# epochs: ~9 min per seed), sibnet-gradient ~135 s per epoch (up to ~45 min per seed), the GradCAM
# methods ~1 min per epoch. About 3.5 h of one core for everything; minutes on a GPU.
# Resumable: rerun to continue; two copies share the jobs (each takes the next free one).
set -u
cd "$(dirname "$0")/../.."
ROOT=${ROOT:-../shared/data/pneumoniamnist/pneumoniamnist.npz}
COMMON="--dataset medmnist --root $ROOT --image-size 64 --folds 1 --seeds 3 --budget epochs=20 --patience 4
        --batch-size 32"
sibnet experiment table1 $COMMON --methods ${METHODS:-baseline,sibnet-gradient,sibnet-gradcam-gradient,authors} \
  --runs runs/study15/pneumoniamnist-64px --out docs/results/pneumoniamnist model.name=resnet18
