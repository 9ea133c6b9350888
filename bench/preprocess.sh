#!/usr/bin/env bash
# Every preprocessing step alone and combined, on the same queries: one myntra-9k index per
# choice (built once, reused when present), then `lookalike evaluate` on all of them with the
# street photos as outside queries. Usage: bash bench/preprocess.sh [OUT] [MODEL]
# (OUT: bench/out/preprocess, MODEL: efficientnet-lite0). Report in OUT/report.
set -euo pipefail
DATASETS=${DATASETS:-../shared/datasets}
OUT=${1:-bench/out/preprocess}
MODEL=${2:-efficientnet-lite0}
BIN=${BIN:-.venv/bin}
CHOICES=(none face crop background face,crop face,background crop,background face,crop,background)
dirs=()
for c in "${CHOICES[@]}"; do
  d="$OUT/$MODEL-${c//,/+}"
  if [ ! -f "$d/manifest.json" ]; then
    "$BIN/lookalike" build "$DATASETS/myntra-9k/catalog.csv" --model "$MODEL" --preprocess "$c" \
      --out "$d" -q
  fi
  dirs+=("$d")
done
"$BIN/lookalike" evaluate "${dirs[@]}" -r articleType -r articleType+baseColour -r gender \
  -k 1,5,10 --queries "$DATASETS/street-photos/photos.csv" --mapping docs/street-photos-mapping.yaml \
  --report "$OUT/report" -q
