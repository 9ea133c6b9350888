"""Clustered synthetic unit vectors for the index benchmarks (bench/neighbors.py,
bench/search.py): neighbours are meaningful, as with real embeddings, at any size."""

from __future__ import annotations

import numpy as np


def clustered(n: int, d: int, centres: int | np.ndarray, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors around ``centres`` (a count of random centres to draw, or the centres
    of an earlier call, to draw queries from the same clusters), with noise as large as a
    centre. Returns the vectors and the centres."""
    c = (rng.standard_normal((centres, d), dtype=np.float32) if isinstance(centres, int)
         else centres)
    label = rng.integers(0, len(c), n)
    x = np.empty((n, d), np.float32)
    for i in range(0, n, 65536):
        b = c[label[i:i + 65536]] + rng.standard_normal((len(label[i:i + 65536]), d),
                                                        dtype=np.float32)
        x[i:i + len(b)] = b / np.linalg.norm(b, axis=1, keepdims=True)
    return x, c
