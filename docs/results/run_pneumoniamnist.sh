#!/usr/bin/env bash
# PneumoniaMNIST (the published SIBNet example's data) with ResNet-18 as in that example, at 64 px
# (the 28 px images upsampled; ResNet-18's last feature map is then 2x2, so GradCAM's map has
# spatial extent), the official train/val/test splits (3882/524/624), early stopping after 4
# epochs without a better validation AUROC (at most 20 epochs), 3 seeds.
# Methods: baseline, SIBNet with the defaults (DeepTaylor + CLRP, first_step balance), SIBNet with
# GradCAM, and the published code's objective (authors). Resumable.
# Not run yet: at ~4x the synthetic study's training images it needs about one session of this
# machine for the baseline and GradCAM methods and more for DeepTaylor (measure the first epochs).
set -u
cd "$(dirname "$0")/../.."
ROOT=${ROOT:-../shared/data/pneumoniamnist/pneumoniamnist.npz}
COMMON="--dataset medmnist --root $ROOT --image-size 64 --folds 1 --seeds 3 --budget epochs=20 --patience 4
        --batch-size 32"
sibnet experiment table1 $COMMON --methods ${METHODS:-baseline,sibnet,sibnet-gradcam,authors} \
  --runs runs/study15/pneumoniamnist-64px --out docs/results/pneumoniamnist model.name=resnet18
