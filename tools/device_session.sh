#!/usr/bin/env bash
# One session on a GPU machine, as one script: the training-step benchmark on the GPU (alone, so
# its timings are clean), then the CUDA tests while the NIH study (table1, then table4 and table5
# of the finished jobs) runs with every job on the GPU. Results land in $OUT:
#   train_step_cuda.txt, cuda_tests.txt, study.log, nih-gpu.tgz (the study folder without
#   checkpoints, tables included).
#
# Run from the repository root with the package importable (installed, or PYTHONPATH=src):
#   OUT=/tmp/out NIH_ROOT=../shared/data/nih-cxr14 bash tools/device_session.sh
# Knobs: EPOCHS (budget per job), JOBS (parallel jobs), SECONDS_TOTAL (the whole script's time),
# DEVICE (cuda; cpu for a dry run), RUNS (the study folder), STUDY_ARGS (replaces the NIH data
# arguments, e.g. for a dry run on synthetic data), CORE / ABLATIONS (the methods of the two study
# rounds), RESERVE (seconds kept for tables 1, 4, 5 and the archive; table 5's probes take about
# 5 s per job), SKIP_BENCH / SKIP_TESTS (1 skips them).
set -u
: "${OUT:?set OUT to the results folder}"
NIH_ROOT=${NIH_ROOT:-../shared/data/nih-cxr14}
EPOCHS=${EPOCHS:-6}
JOBS=${JOBS:-10}
SECONDS_TOTAL=${SECONDS_TOTAL:-540}
DEVICE=${DEVICE:-cuda}
RUNS=${RUNS:-runs/experiments/nih-128px-gpu}
STUDY_ARGS=${STUDY_ARGS:---dataset nih --root $NIH_ROOT --image-size 128 --folds 5 --seeds 1}
CORE=${CORE:-baseline,sibnet,sibnet-gradcam,sibnet-pair-mean}
ABLATIONS=${ABLATIONS:-no-cd,no-sc,se,cbam,sibnet-lrp,image-embed}
RESERVE=${RESERVE:-180}  # seconds kept for the tables and the archive
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
mkdir -p "$OUT"
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
left() { echo $(( SECONDS_TOTAL - $(elapsed) )); }
stamp() { echo "== $(elapsed) s: $*"; }

stamp "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
$PY -c "import torch, monai; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'monai', monai.__version__)"

if [ "${SKIP_BENCH:-0}" != 1 ]; then
  stamp "benchmark (alone on the device)"
  timeout 180 $PY benchmarks/train_step.py --device "$DEVICE" --size 128 --repeats 10 --warmup 3 --paired \
    --configs baseline floor gradcam@full gradcam@32 deep_taylor@32 deep_taylor@32:recompute=all lrp_epsilon@32 reference \
    > "$OUT/train_step_cuda.txt" 2>&1
  echo "exit $?" >> "$OUT/train_step_cuda.txt"
  tail -12 "$OUT/train_step_cuda.txt"
fi

COMMON="$STUDY_ARGS --budget epochs=$EPOCHS --device $DEVICE --runs $RUNS"
OVR=train.checkpoint_every=100000  # GPU steps are fast: no mid-epoch checkpoints
stamp "study: table1 core methods ($CORE), epochs=$EPOCHS, $JOBS parallel jobs"
(
  budget=$(( $(left) - RESERVE ))
  timeout -k 10 $budget $PY -m sibnet experiment table1 $OVR $COMMON --methods $CORE --jobs "$JOBS" --out "$RUNS/tables-core"
  echo "core exit $?"
  budget=$(( $(left) - RESERVE ))
  if [ $budget -gt 60 ]; then
    timeout -k 10 $budget $PY -m sibnet experiment table1 $OVR $COMMON --methods $ABLATIONS --jobs "$JOBS" --out "$RUNS/tables-ablations"
    echo "ablations exit $?"
  fi
) > "$OUT/study.log" 2>&1 &
study=$!

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  stamp "CUDA tests (beside the study)"
  timeout 300 $PY -m pytest -p no:cacheprovider -o addopts="" -q -rs tests/test_cuda.py \
    tests/test_clusters.py::test_cuda_path_matches_cpu > "$OUT/cuda_tests.txt" 2>&1
  echo "pytest exit $?" >> "$OUT/cuda_tests.txt"
  tail -6 "$OUT/cuda_tests.txt"
fi

wait $study
pkill -f "multiprocessing.spawn" 2>/dev/null  # workers of a study cut off by its time limit
stamp "study stopped"; tail -4 "$OUT/study.log"
ALL=$CORE,$ABLATIONS
$PY -m sibnet experiment status $OVR $COMMON --methods $ALL >> "$OUT/study.log" 2>&1
stamp "tables of the finished jobs"
for t in table1 table4 table5; do
  extra=""; [ $t = table1 ] && extra="--report-only"
  limit=60; [ $t = table5 ] && limit=$(( $(left) - 20 ))  # the probes: whatever time is left
  [ $limit -lt 30 ] && limit=30
  timeout $limit $PY -m sibnet experiment $t $OVR $COMMON --methods $ALL --out "$RUNS/tables" $extra >> "$OUT/study.log" 2>&1
  echo "$t exit $? (limit $limit s)" >> "$OUT/study.log"
done
tar czf "$OUT/nih-gpu.tgz" --exclude='*.pt' "$RUNS"
stamp "done"; ls -la "$OUT"
