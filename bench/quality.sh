#!/usr/bin/env bash
# Compare the embedders on myntra-9k, on the same queries: one index per embedder (built once,
# reused when present), then `lookalike evaluate` on all of them, street photos included.
# Usage: bash bench/quality.sh [OUT] [extra lookalike evaluate options]   (OUT: bench/out/quality)
# The report lands in OUT/report (report.md, report.html, plots/, gallery/).
set -euo pipefail
DATASETS=${DATASETS:-../shared/datasets}
OUT=${1:-bench/out/quality}
shift || true
BIN=${BIN:-.venv/bin}
MODELS=(efficientnet-lite0 efficientnet-lite2 mobilenet-v2 color-histogram)
for m in "${MODELS[@]}"; do
  if [ ! -f "$OUT/$m/manifest.json" ]; then
    "$BIN/lookalike" build "$DATASETS/myntra-9k/catalog.csv" --model "$m" --out "$OUT/$m" -q
  fi
done
"$BIN/lookalike" evaluate "${MODELS[@]/#/$OUT/}" \
  -r articleType -r articleType+baseColour -r gender -k 1,5,10,20 --by articleType --by gender \
  --queries "$DATASETS/street-photos/photos.csv" --mapping docs/street-photos-mapping.yaml \
  --report "$OUT/report" -q "$@"
