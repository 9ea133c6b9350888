#!/usr/bin/env bash
# make demo: build an index of the sample catalogue, show similar items, write the
# all-items neighbours file and a gallery, and say where everything is.
set -euo pipefail
CATALOG=${LOOKALIKE_CATALOG:-../shared/datasets/myntra-9k/catalog.csv}
OUT=${LOOKALIKE_DEMO_OUT:-demo-out}
BIN=${BIN:-.venv/bin}
if [ ! -f "$CATALOG" ]; then
  cat >&2 <<MSG
The sample catalogue was not found at $CATALOG.
Point the demo at any catalogue (a CSV/Parquet with columns id and image_path, image paths
relative to the catalogue's folder):
    make demo LOOKALIKE_CATALOG=/path/to/catalog.csv
or put the sample data in ../shared/datasets/myntra-9k.
MSG
  exit 1
fi
mkdir -p "$OUT"
echo "== building the index of $CATALOG"
# the catalogue's columns: LOOKALIKE_ID_COLUMN, LOOKALIKE_IMAGE_COLUMN, LOOKALIKE_PRODUCT_COLUMN,
# LOOKALIKE_CATEGORY_COLUMN, LOOKALIKE_COLOR_COLUMN (read by lookalike build; the index keeps them)
"$BIN/lookalike" build "$CATALOG" --out "$OUT/index" ${LOOKALIKE_IMAGES:+--images "$LOOKALIKE_IMAGES"}
"$BIN/lookalike" info "$OUT/index"
# a few queries of different kinds: the first item of each of the four largest groups
ITEMS=$("$BIN/python" - "$OUT/index" <<'PY'
import sys
from lookalike import Index
ix = Index.open(sys.argv[1])
col = ix.category
items = ix.items if col is None else ix.items.drop_duplicates(col)
if col:
    top = ix.items[col].value_counts().index[:4]
    items = items[items[col].isin(top)]
print(" ".join(items["item_id"].astype(str).head(4)))
PY
)
for id in $ITEMS; do
  echo; echo "== items similar to $id"
  "$BIN/lookalike" similar "$OUT/index" "$id" -k 5
done
echo; echo "== top-10 neighbours of every item"
"$BIN/lookalike" neighbors "$OUT/index" -k 10 -o "$OUT/neighbors.parquet"
"$BIN/lookalike" gallery "$OUT/index" $ITEMS -k 8 -o "$OUT/gallery.png"
"$BIN/lookalike" gallery "$OUT/index" $ITEMS -k 8 -o "$OUT/gallery.html"
echo; echo "== retrieval quality: every item queries the rest"
EVAL=("$BIN/lookalike" evaluate "$OUT/index" -k 1,5,10,20 --report "$OUT/report" -q)
STREET=${LOOKALIKE_STREET:-$(dirname "$CATALOG")/../street-photos/photos.csv}
if [ -f "$STREET" ] && "$BIN/python" -c "import sys, pandas as pd; sys.exit('articleType' not in pd.read_csv(sys.argv[1], nrows=0).columns)" "$CATALOG"; then
  EVAL+=(--queries "$STREET" --mapping docs/street-photos-mapping.yaml)  # the camera use case
fi
"${EVAL[@]}"
cat <<MSG

Done. Everything is in $OUT/:
  index/              the index folder (manifest.json, items.parquet, embeddings.npy, index.faiss)
  neighbors.parquet   top-10 similar items of every item: item_id, rank, neighbor_id, score
  gallery.png/.html   the queries above beside their top-8
  report/             report.html / report.md: quality numbers, plots, best and worst queries
Try:  $BIN/lookalike similar $OUT/index ITEM_ID -k 10 --where gender=Men
      $BIN/lookalike search $OUT/index --image PHOTO.jpg -k 10
MSG
if [ "${LOOKALIKE_DEMO_SERVE:-1}" != 0 ]; then
  PORT=${LOOKALIKE_PORT:-8000}
  echo
  echo "== serving the catalogue: open http://127.0.0.1:$PORT/ (Ctrl-C to stop;"
  echo "   LOOKALIKE_DEMO_SERVE=0 make demo skips this step)"
  exec "$BIN/lookalike" serve "$OUT/index" --port "$PORT"
fi
