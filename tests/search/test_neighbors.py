from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lookalike import LookalikeError
from lookalike.search.neighbors import neighbor_blocks, neighbor_rows, write_neighbors
from lookalike.search.vector_index import flat_index


def _unit(n: int, d: int) -> np.ndarray:
    x = np.random.default_rng(3).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_blocks_match_brute_force() -> None:
    x = _unit(333, 24)
    got = neighbor_rows(flat_index(x), x, 5, block_size=50)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    assert got.tolist() == np.argsort(-sims, axis=1, kind="stable")[:, :5].tolist()


def test_self_excluded_even_among_exact_duplicates() -> None:
    x = np.repeat(_unit(10, 8), 3, axis=0)  # every vector three times
    for own, nbr, _ in neighbor_blocks(flat_index(x), x, 4, block_size=7):
        for o, row in zip(own, nbr):
            assert o not in row and len(set(row.tolist())) == 4


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_file_formats(tmp_path: Path, suffix: str) -> None:
    x = _unit(40, 8)
    ids = np.array([f"sku-{i:03d}" for i in range(40)], dtype=object)
    out = tmp_path / f"nb{suffix}"
    assert write_neighbors(flat_index(x), x, ids, out, k=3, block_size=16) == 120
    df = {".parquet": pd.read_parquet, ".csv": pd.read_csv,
          ".jsonl": lambda p: pd.read_json(p, lines=True)}[suffix](out)
    assert list(df.columns) == ["item_id", "rank", "neighbor_id", "score"]
    assert df["rank"].tolist()[:6] == [1, 2, 3, 1, 2, 3]
    assert (df.item_id != df.neighbor_id).all()
    first = df[df.item_id == "sku-000"]
    sims = x[1:] @ x[0]
    assert first.neighbor_id.tolist() == [ids[1 + i] for i in np.argsort(-sims)[:3]]
    assert not list(tmp_path.glob(".*tmp*"))


def test_bad_output_and_k(tmp_path: Path) -> None:
    x = _unit(3, 4)
    with pytest.raises(LookalikeError, match="unsupported file type '.xlsx'"):
        write_neighbors(flat_index(x), x, np.arange(3), tmp_path / "a.xlsx")
    with pytest.raises(LookalikeError, match="single item"):
        list(neighbor_blocks(flat_index(x[:1]), x[:1], 3))
