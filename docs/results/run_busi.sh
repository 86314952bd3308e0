#!/usr/bin/env bash
# BUSI breast ultrasound (benign / malignant / normal, expert lesion masks, burned-in text and calipers):
# does SIBNet move the maps onto the lesion and off the marks, and at what cost in AUROC?
# 128 px, DenseNet-121, batch 16, 5 folds stratified by class over near-duplicate groups, held-out test
# folds (fold i tests, fold i+1 validates for early stopping, the other three train: 372 / 125 / 124
# images in fold 0), early stopping after 4 epochs without a better validation AUROC (<= 20 epochs),
# best.pt evaluated on the test fold. 1 seed.
# Methods: baseline; warm-baseline / warm-sibnet: the converged baseline trained on for 3 epochs
# without / with SIBNet's terms (the configuration's defaults: DeepTaylor + CLRP, first_step balance),
# the recipe that kept AUROC on the synthetic study (docs/results/README.md, "Start here");
# sibnet-gradcam: SIBNet from scratch with GradCAM maps (same balance).
# Second block: warm-baseline-lr0.0001 / warm-sibnet-lr0.0001: the same fine-tuning with Adam at lr 1e-4
# (the first warm epoch at 1e-3 disturbed every converged baseline); sibnet: SIBNet from scratch
# (DeepTaylor + CLRP, first_step), ~2.5 min per epoch here (about 30 min per fold);
# warm-sibnet-gradient-lr0.0001: the lr 1e-4 fine-tuning with the gradient-norm balance (the SIBNet terms
# pull as hard as the CE; under first_step they pull a fraction of it on a converged model);
# sibnet-gradcam-gradient: SIBNet from scratch with GradCAM maps and the gradient-norm balance (~1 min per
# epoch here).
# CPU plan (2-core machine, two single-thread processes): baseline ~30 s per epoch (about 10 min per
# fold), warm-sibnet ~2-3 min per epoch: about 1.2 h for the first 15 jobs; sibnet-gradcam(-gradient)
# ~35-60 s per epoch (12-15 min per fold). Second block: about 2 h with two jobs at a time. Not in either
# block: SIBNet from scratch with DeepTaylor (30-45 min per fold), no-cd, no-sc (the same); minutes on a
# GPU. SE and CBAM (baseline cost, ~8 min per fold) ran at the end of the second block.
# Third block: sibnet-gradient: SIBNet from scratch with DeepTaylor + CLRP maps and the gradient-norm
# balance; no-cd-gradcam-gradient / no-sc-gradcam-gradient: the default objective (GradCAM + gradient
# balance) without L_CD / without L_SC. One process ran sibnet-gradient, the other the two ablations
# (fold by fold) and then helped with sibnet-gradient.
# Resumable: rerun to continue; two copies of this script share the jobs (each takes the next free one).
set -u
# the jobs of this study ran when first_step was the default balance: kept for every method that does
# not set its own (sibnet, warm-sibnet, sibnet-gradcam, ...; the *-gradient methods set theirs)
PIN=loss.balance=first_step
cd "$(dirname "$0")/../.."
COMMON="--dataset busi --root ../shared/data/busi --image-size 128 --folds 5 --seeds 1 --budget epochs=20
        --warm-budget epochs=3 --patience 4 --batch-size 16 --held-out-test"
METHODS=${METHODS:-baseline,se,cbam,warm-baseline,warm-sibnet,sibnet-gradcam,warm-baseline-lr0.0001,warm-sibnet-lr0.0001,warm-sibnet-gradient-lr0.0001,sibnet-gradcam-gradient,sibnet-gradient,no-cd-gradcam-gradient,no-sc-gradcam-gradient}
RUNS=$PWD/runs/busi/128px  # absolute: the jobs record the path they were started with
OUT=docs/results/busi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for pass in 1 2; do  # a warm job whose baseline another process still trains runs on the second pass
  sibnet experiment table1 $PIN $COMMON --methods "$METHODS" --runs $RUNS --out $OUT
done
sibnet experiment table1 $PIN $COMMON --methods "$METHODS" --runs $RUNS --out $OUT/vs-warm-baseline \
  --reference warm-baseline --report-only
sibnet experiment table1 $PIN $COMMON --methods "$METHODS" --runs $RUNS --out $OUT/vs-warm-baseline-lr0.0001 \
  --reference warm-baseline-lr0.0001 --report-only
# agreement with the lesion masks and share on the marks: the loss's own maps (DeepTaylor + CLRP),
# plain DeepTaylor and GradCAM, every test image of each fold
sibnet experiment table3 $PIN $COMMON --methods "$METHODS" --runs $RUNS --out $OUT --saliency deep_taylor \
  --saliency-option contrast=clrp --max-maps 1000
sibnet experiment table3 $PIN $COMMON --methods "$METHODS" --runs $RUNS --out $OUT/vs-warm-baseline-lr0.0001 \
  --saliency deep_taylor --saliency-option contrast=clrp --max-maps 1000 --reference warm-baseline-lr0.0001
sibnet experiment table3 $PIN $COMMON --methods "$METHODS" --runs $RUNS --out $OUT/deep-taylor --saliency deep_taylor \
  --max-maps 1000
sibnet experiment table3 $PIN $COMMON --methods "$METHODS" --runs $RUNS --out $OUT/gradcam --saliency gradcam \
  --max-maps 1000
sibnet experiment table4 $PIN $COMMON --methods "$METHODS" --runs $RUNS --out $OUT
# third block: validation AUROC and map cosines epoch by epoch, per fold
for f in 0 1 2 3 4; do
  python docs/results/tabulate_progress.py runs/busi/128px $OUT/progress/fold$f.md baseline/fold$f-seed0 \
    sibnet-gradcam-gradient/fold$f-seed0 no-cd-gradcam-gradient/fold$f-seed0 no-sc-gradcam-gradient/fold$f-seed0 \
    sibnet-gradient/fold$f-seed0
done
# third block, check: SIBNet from scratch with DeepTaylor without early stopping (patience 20 = the whole
# budget), in its own runs folder; as run, only fold 1 (the command was stopped after it; fold 0 already
# ran all 20 epochs under patience 4, so the patience cannot change it, and was skipped)
if [ "${PATIENCE20:-0}" = 1 ]; then  # PATIENCE20=1 bash docs/results/run_busi.sh
  sibnet experiment table1 $PIN ${COMMON/--patience 4/--patience 20} \
    --methods sibnet-gradient --runs $PWD/runs/busi/128px-patience20 --out $OUT/patience20
  python docs/results/tabulate_progress.py runs/busi $OUT/patience20/progress-fold1.md \
    128px/baseline/fold1-seed0 128px/sibnet-gradient/fold1-seed0 128px-patience20/sibnet-gradient/fold1-seed0
fi
sibnet experiment cases $PIN $COMMON --methods "$METHODS" --runs $RUNS --out $OUT/cases --saliency deep_taylor \
  --saliency-option contrast=clrp --cases 2
