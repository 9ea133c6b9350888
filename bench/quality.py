"""Retrieval quality of an index: every item queries the rest (itself excluded) and
precision@k is the share of its top k with the same attribute value(s).

Usage: .venv/bin/python bench/quality.py [--index demo-out/index] [-k 10]
"""

from __future__ import annotations

import argparse

import numpy as np

from lookalike import Index
from lookalike.evaluate import attribute_labels, precision_at_k
from lookalike.neighbors import neighbor_rows

RELEVANCE = [["articleType"], ["articleType", "baseColour"], ["gender"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--index", default="demo-out/index")
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args()
    ix = Index.open(args.index)
    x = np.asarray(ix.embeddings)
    nb = neighbor_rows(ix.vector_index, x, args.k)
    print(f"{args.index}: {len(ix)} items, model {ix.model}\n")
    print(f"| same … | precision@1 | precision@5 | precision@{args.k} |\n|---|---|---|---|")
    for attrs in RELEVANCE:
        labels = attribute_labels(ix.items, attrs)
        p = [precision_at_k(nb, labels, k) for k in (1, 5, args.k)]
        print(f"| {' + '.join(attrs)} | " + " | ".join(f"{v:.3f}" for v in p) + " |")


if __name__ == "__main__":
    main()
