#!/usr/bin/env bash
# How alike the class maps of a converged baseline are, with each contrast option (issue: SIBNet that
# does not collapse). The model: the baseline of the converged synthetic study, seed 0 (run_converged.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${B:-runs/study15/shortcut-off/baseline/fold0-seed0/best.pt}
for c in none clrp sglrp; do
  sibnet evaluate --checkpoint "$B" --method deep_taylor --contrast "$c" --max-maps 64 --n-boot 0 --out "runs/contrast-cosine/$c"
done
sibnet evaluate --checkpoint "$B" --method gradcam --max-maps 64 --n-boot 0 --out runs/contrast-cosine/gradcam
