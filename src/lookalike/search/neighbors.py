"""Top-k neighbours of every item (the original recipe's 7-hour job), in blocks.

Memory stays bounded by the block size (never an N×N matrix); rows stream to disk as they are
computed. Output, long format: ``item_id, rank, neighbor_id, score`` with rank 1..k and the
item itself excluded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from lookalike.errors import LookalikeError
from lookalike.files import atomic_path

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl"}


def neighbor_blocks(index: faiss.Index, embeddings: np.ndarray, k: int, *,
                    block_size: int = 2048) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(query_rows, neighbor_rows (b, k), scores (b, k))`` for consecutive blocks of
    items; each item's own row is removed from its neighbours."""
    n = len(embeddings)
    if k < 1:
        raise LookalikeError(f"k must be at least 1, got {k}")
    k = min(k, n - 1)
    if k < 1:
        raise LookalikeError("the index has a single item: it has no neighbours")
    for start in range(0, n, block_size):
        q = np.ascontiguousarray(embeddings[start:start + block_size], dtype=np.float32)
        scores, rows = index.search(q, k + 1)
        own = np.arange(start, start + len(q))
        yield (own, *drop_self(rows, scores, own))


def drop_self(rows: np.ndarray, scores: np.ndarray, own: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """From (n, k+1) results, each query's own row removed: where ties pushed it out of the
    list, the last (k+1-th) result goes instead. Returns (n, k) rows and scores."""
    n, k1 = rows.shape
    is_self = rows == own[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k1 - 1)
    keep = np.ones_like(rows, dtype=bool)
    keep[np.arange(n), drop] = False
    return rows[keep].reshape(n, k1 - 1), scores[keep].reshape(n, k1 - 1)


def neighbor_rows(index: faiss.Index, embeddings: np.ndarray, k: int, *,
                  block_size: int = 2048) -> np.ndarray:
    """The (N, k) rows of every item's neighbours, best first, the item itself excluded."""
    return np.concatenate([nbr for _, nbr, _ in neighbor_blocks(index, embeddings, k,
                                                                block_size=block_size)])


def neighbor_agreement(a: Any, b: Any, k: int = 10) -> float:
    """How far two opened indexes of the same items agree (an approximate index, another
    engine or backend against exact search): the mean share of each item's top-k neighbour
    ids that both give."""
    def by_id(ix: Any) -> dict[str, set[str]]:
        own = ix.items["item_id"].astype(str).to_numpy()
        rows = neighbor_rows(ix.vector_index, ix.embeddings, k)
        return {i: set(own[r[r >= 0]]) for i, r in zip(own, rows)}

    na, nb = by_id(a), by_id(b)
    if na.keys() != nb.keys():
        raise LookalikeError(f"the two indexes hold different items ({len(na)} and {len(nb)})")
    return float(np.mean([len(na[i] & nb[i]) / k for i in na]))


class _Writer:
    def __init__(self, path: Path, fmt: str, id_type: pa.DataType) -> None:
        self.fmt = fmt
        self.schema = pa.schema([("item_id", id_type), ("rank", pa.int32()),
                                 ("neighbor_id", id_type), ("score", pa.float32())])
        if fmt == "parquet":
            self._w = pq.ParquetWriter(path, self.schema)
        elif fmt == "csv":
            self._w = pacsv.CSVWriter(path, self.schema)
        else:
            self._f = open(path, "w")  # noqa: SIM115 (closed in close())

    def write(self, table: pa.Table) -> None:
        if self.fmt == "jsonl":
            for row in table.to_pylist():
                self._f.write(json.dumps(row) + "\n")
        else:
            self._w.write_table(table)

    def close(self) -> None:
        (self._f if self.fmt == "jsonl" else self._w).close()


def output_format(out: str | os.PathLike) -> str:
    """The neighbours file's format from its name, refused before any work when unsupported."""
    out = Path(out)
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise LookalikeError(f"output {out}: unsupported file type {out.suffix!r} "
                             f"(use {', '.join(FORMATS)})")
    return fmt


def write_neighbors(index: faiss.Index, embeddings: np.ndarray, item_ids: np.ndarray,
                    out: str | os.PathLike, k: int = 10, *, block_size: int = 2048,
                    on_block: Callable[[int], None] | None = None) -> int:
    """Write the top-k neighbours of every item to ``out`` (.parquet, .csv or .jsonl),
    atomically. Returns the number of rows written."""
    out = Path(out)
    fmt = output_format(out)
    ids = pa.array(item_ids)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with atomic_path(out) as tmp:
        writer = _Writer(tmp, fmt, ids.type)
        try:
            for own, nbr, scores in neighbor_blocks(index, embeddings, k, block_size=block_size):
                b, kk = nbr.shape
                table = pa.table({
                    "item_id": ids.take(pa.array(np.repeat(own, kk))),
                    "rank": pa.array(np.tile(np.arange(1, kk + 1, dtype=np.int32), b)),
                    "neighbor_id": ids.take(pa.array(nbr.ravel())),
                    "score": pa.array(scores.ravel().astype(np.float32)),
                }, schema=writer.schema)
                writer.write(table)
                written += len(table)
                if on_block:
                    on_block(b)
        finally:
            writer.close()
    return written
