#!/usr/bin/env bash
# Monitor scores (class distinctiveness and spatial coherence of the saliency maps vs MSP, energy and
# Mahalanobis): shift detection and failure prediction, docs/results/monitor/.
# Three baseline and three SIBNet (GradCAM, pair-mean L_SC) ResNet-18s, 64 px, 400 synthetic images per
# split with the Cardiomegaly shortcut glyph in training, 5 epochs each (about 1 CPU minute per model),
# then one study over the six models (the last checkpoints). NIH images: ../shared/data/nih-cxr14.
set -eu
cd "$(dirname "$0")/../.."
RUNS=runs/monitor
NIH=${NIH:-../shared/data/nih-cxr14}
for s in 0 1 2; do
  for kind in baseline sibnet; do
    [ -f $RUNS/$kind-s$s/last.pt ] && continue
    if [ $kind = baseline ]; then LOSS="loss.saliency=null"; else LOSS="loss.saliency=gradcam loss.sc_scale=pair_mean"; fi
    sibnet train --epochs 5 model.name=resnet18 $LOSS data.image_size=64 "data.options={n: 400, shortcut: Cardiomegaly}" \
      train.seed=$s train.device=cpu train.progress=false out=$RUNS/$kind-s$s
  done
done
MODELS=""
for s in 0 1 2; do MODELS="$MODELS --model baseline=$RUNS/baseline-s$s/last.pt --model sibnet=$RUNS/sibnet-s$s/last.pt"; done
SHIFTS=""
for sh in noise:0.02 noise:0.05 noise:0.1 blur:0.7 blur:1.5 contrast:0.5 gamma:0.5 gamma:2 marker:flipped difficulty:1 dataset:nih; do
  SHIFTS="$SHIFTS --shift $sh"
done
sibnet monitor study $MODELS $SHIFTS --other-root nih=$NIH --n-shifted 128 --n-clean 250 --device cpu \
  --out docs/results/monitor
# the same models with DeepTaylor maps for the saliency scores (fewer and smaller shifted sets: ~18x a forward per image)
SHIFTS=""
for sh in noise:0.1 blur:1.5 contrast:0.5 gamma:2 marker:flipped difficulty:1 dataset:nih; do SHIFTS="$SHIFTS --shift $sh"; done
sibnet monitor study $MODELS $SHIFTS --other-root nih=$NIH --n-shifted 64 --n-clean 128 --method deep_taylor \
  --device cpu --out docs/results/monitor-deep-taylor
