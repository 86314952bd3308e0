#!/usr/bin/env bash
# The synthetic study where the baseline converges (issue: SIBNet that does not collapse).
# Synthetic chest radiographs at their full split sizes (1000 train / 250 val / 250 test; a different
# draw per seed), 64 px, DenseNet-121, batch 16, early stopping after 4 epochs without a better
# validation AUROC (at most 20 epochs; best.pt evaluated on the test split), 3 seeds.
# Resumable: rerun to continue; finished jobs are skipped, interrupted ones resume exactly.
#
# CPU plan (2-core machine, measured in this study's first jobs, with other work on the machine):
#   baseline       75-110 s per epoch; 20 epochs (it kept improving to epoch 19): ~30 min per seed
#   sibnet (DeepTaylor + CLRP, first_step balance) ~150 s per epoch: up to ~50 min per seed
#   sibnet-gradcam ~1.7x the baseline's step: ~50 min per seed at 20 epochs
# Decisive comparison first (baseline, sibnet; 3 seeds: ~4 h), then the GradCAM and ablation
# methods (no-cd, no-sc, sibnet-plain-dt, sibnet-raw, authors, sibnet-plus, warm-*), then shortcut on.
# About two sessions of this machine for the first block; a GPU would do all of it in minutes.
# State on 2026-12-05: baseline, sibnet, warm-baseline, warm-sibnet finished for 3 seeds (SIBNet jobs
# stopped early after 15-19 epochs, 40-90 min each with two or three jobs sharing the 2 cores; warm
# jobs 5-18 epochs). Then sibnet-gradcam (3 seeds, 7-13 epochs, ~40-65 s per epoch) and
# sibnet-gradcam-gradient (GradCAM with loss.balance gradient; 3 seeds, 19-20 epochs, ~40 s per epoch).
# Then sibnet-gradient (DeepTaylor + CLRP, gradient balance; 3 seeds, 15-20 epochs, ~130-150 s per epoch
# with two jobs on the 2 cores). Partial: no-cd and no-sc (seed 0, a few epochs each, first_step). Next:
# METHODS=baseline,sibnet,warm-baseline,warm-sibnet,sibnet-gradcam,sibnet-gradcam-gradient,sibnet-gradient,no-cd,no-sc
# then sibnet-raw, authors, sibnet-plus (about 1 h per DeepTaylor job and seed here), then VARIANTS=on.
# Since GradCAM + gradient balance became the default objective, its ablations have methods of their own
# (no-cd-gradcam-gradient, no-sc-gradcam-gradient, sibnet-plus-gradcam-gradient, sibnet-gradcam-raw).
# Measured in the session that ran them (two single-thread jobs on the 2 cores, nothing else): ~30 s per
# epoch for the baseline and the GradCAM methods (8-12 min per job, 15-20 epochs); SIBNet+ twice that.
# Ran: no-cd-gradcam-gradient, no-sc-gradcam-gradient, authors (3 seeds each, ~1.7 h), VARIANTS=on with
# baseline and sibnet-gradcam-gradient (3 seeds each, ~1 h), then sibnet-plus-gradcam-gradient.
set -u
# the jobs of this study ran when first_step was the default balance: kept for every method that does
# not set its own (sibnet, warm-sibnet, sibnet-gradcam, ...; the *-gradient methods set theirs)
PIN=loss.balance=first_step
cd "$(dirname "$0")/../.."
COMMON="--dataset synthetic --image-size 64 --folds 1 --seeds 3 --budget epochs=20 --patience 4 --batch-size 16"
METHODS_OFF=${METHODS:-baseline,sibnet,warm-baseline,warm-sibnet,sibnet-gradcam,sibnet-gradcam-gradient,sibnet-gradient,no-cd-gradcam-gradient,no-sc-gradcam-gradient,authors,sibnet-plus-gradcam-gradient,sibnet-gradcam-raw}
# shortcut on: the baseline and the default objective (GradCAM + gradient balance), 3 seeds each
METHODS_ON=${METHODS_ON:-baseline,sibnet-gradcam-gradient}
for variant in ${VARIANTS:-off on}; do
  if [ "$variant" = on ]; then OPT="--data-option shortcut=Cardiomegaly"; METHODS=$METHODS_ON
  else OPT=""; METHODS=$METHODS_OFF; fi
  RUNS=$PWD/runs/study15/shortcut-$variant  # absolute: the jobs record the path they were started with
  OUT=docs/results/synthetic-converged/shortcut-$variant
  sibnet experiment table1 $PIN $COMMON $OPT --methods "$METHODS" --runs $RUNS --out $OUT
  sibnet experiment table3 $PIN $COMMON $OPT --methods "$METHODS" --runs $RUNS --out $OUT --saliency deep_taylor \
    --saliency-option contrast=clrp --max-maps 100
  sibnet experiment table3 $PIN $COMMON $OPT --methods "$METHODS" --runs $RUNS --out $OUT/gradcam --saliency gradcam \
    --max-maps 100
  sibnet experiment table4 $PIN $COMMON $OPT --methods "$METHODS" --runs $RUNS --out $OUT
  if [ "$variant" = on ]; then  # each method's maps of the same test images, the glyph's box shaded
    sibnet experiment cases $PIN $COMMON $OPT --methods "$METHODS" --runs $RUNS --out $OUT/cases \
      --saliency deep_taylor --saliency-option contrast=clrp --cases 1
  fi
done
