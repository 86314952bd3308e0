"""Evaluation: plain functions on numpy arrays or tensors.

``classification``  per-label AUROC / AUPRC with bootstrap intervals; ``mean_auroc`` for early stopping
``agreement``       saliency maps vs expert masks (convex-hull binarisation, Dice, HD95, SSIM)
``marks``           the share of each map on burned-in marks (bright thin text and calipers)
``distinctiveness`` how alike the K class maps of an image are (maps and their embeddings: L_CD)
``overlap``         Dice, HD95 (MONAI convention) and set Hausdorff of binary masks
``glas``            the GlaS challenge's object- and pixel-level segmentation scores
``robustness``      Gaussian noise on [0, 1] images
``probes``          linear / RBF SVM and random forest on frozen features
``statistics``      paired differences over matched runs, mean (sd) formatting
``batchnorm``       BatchNorm statistics re-estimated with a model's final weights ("precise BN")
"""

from sibnet.evaluation.agreement import binarise_convex_hull, saliency_agreement, ssim
from sibnet.evaluation.batchnorm import BN_STATS, recalibrate_batchnorm
from sibnet.evaluation.classification import classification_metrics, mean_auroc, to_rows
from sibnet.evaluation.distinctiveness import map_distinctiveness
from sibnet.evaluation.glas import glas_dataset_scores, glas_scores, label_instances
from sibnet.evaluation.marks import marks_region, marks_share
from sibnet.evaluation.overlap import dice, hausdorff, hd95
from sibnet.evaluation.probes import PROBES, evaluate_probes
from sibnet.evaluation.robustness import DEFAULT_SIGMAS, add_gaussian_noise
from sibnet.evaluation.statistics import mean_sd, paired_difference, wilcoxon_floor

__all__ = [
    "BN_STATS",
    "DEFAULT_SIGMAS",
    "PROBES",
    "add_gaussian_noise",
    "binarise_convex_hull",
    "classification_metrics",
    "dice",
    "evaluate_probes",
    "glas_dataset_scores",
    "glas_scores",
    "hausdorff",
    "hd95",
    "label_instances",
    "map_distinctiveness",
    "marks_region",
    "marks_share",
    "mean_auroc",
    "mean_sd",
    "paired_difference",
    "recalibrate_batchnorm",
    "saliency_agreement",
    "ssim",
    "to_rows",
    "wilcoxon_floor",
]
