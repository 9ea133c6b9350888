"""Fuzzing (issue 17): schemathesis against a running server, with every check and with and
without the API key, and hypothesis properties of catalogue parsing and metadata. Any 5xx, any
answer the OpenAPI schema does not describe, or any exception other than the documented error
fails."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lookalike import Index, LookalikeError, build_index, read_catalog
from lookalike.ingest.catalog import CatalogError
from lookalike.ingest.checks import checked_value, id_problem

from ..conftest import make_tiny_catalog, serve

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("LOOKALIKE_FUZZ_EXAMPLES", "30"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    csv = make_tiny_catalog(root)
    build_index(read_catalog(csv, id_column="sku", image_column="file", product_column="product",
                             category_column="type"), root / "ix", model="mobilenet-v2")
    return root


def _serve(folder: Path) -> tuple[subprocess.Popen, str]:
    return serve(folder, env={"LOOKALIKE_API_KEY": "fuzz-key"})


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("with_key", [False, True], ids=["no key", "with the key"])
def test_schemathesis_finds_nothing(tiny: Path, tmp_path: Path, with_key: bool) -> None:
    folder = Path(shutil.copytree(tiny / "ix", tmp_path / "ix"))  # the fuzzer changes it
    proc, url = _serve(folder)
    try:
        cli = Path(sys.executable).with_name("schemathesis")
        args = [str(cli), "--config-file", str(ROOT / "schemathesis.toml"), "run",
                f"{url}/openapi.json", "--checks", "all", "--max-examples", str(EXAMPLES),
                "--seed", "17", "--request-timeout", "60", "--no-color"]
        if with_key:
            args += ["-H", "X-API-Key: fuzz-key"]
        r = subprocess.run(args, check=False, capture_output=True, text=True, timeout=840)
    finally:
        proc.terminate()
        proc.wait(30)
    cases = re.search(r"(\d+) generated, (.*)", r.stdout)
    print(f"schemathesis ({'with' if with_key else 'without'} the key): "
          f"{cases.group(0) if cases else '?'}")
    assert r.returncode == 0, r.stdout[-6000:]
    assert cases and "passed" in cases.group(2) and "fail" not in cases.group(2)


TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=300)


@pytest.mark.model
@settings(max_examples=EXAMPLES * 3, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ids=st.lists(TEXT, min_size=1, max_size=4, unique=True))
def test_catalogue_ids_are_accepted_or_refused_by_the_rule(tiny: Path, ids: list[str]) -> None:
    """Any ids: the catalogue reads when each follows the id rule, and is refused with a
    CatalogError otherwise; nothing else escapes, and what reads keeps every id as written."""
    rows = pd.DataFrame({"id": ids, "image_path": ["photos/P1-0.jpg"] * len(ids),
                         "type": ["Shirts"] * len(ids)})
    path = tiny / "ids.csv"
    rows.to_csv(path, index=False)
    try:
        cat = read_catalog(path)
    except CatalogError:
        # refused: some id breaks the rule, or CSV reading turned two ids into the same one
        # (e.g. 'a' and 'a\r'); never an uncaught error
        return
    assert all(id_problem(i) is None for i in cat.items["item_id"])


VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
                      lambda kids: st.lists(kids, max_size=3)
                      | st.dictionaries(TEXT, kids, max_size=3), max_leaves=6)


@settings(max_examples=EXAMPLES * 10, deadline=None)
@given(value=VALUES, kind=st.sampled_from(["text", "integer", "number", "bool"]))
def test_a_checked_value_always_fits_its_column(value: object, kind: str) -> None:
    """A value checked for a column kind either is refused with a LookalikeError or can be
    stored in a column of that kind beside the catalogue's own values (what compaction does)."""
    base = {"text": pd.Series(["Shirts", None], dtype=object),
            "integer": pd.Series([2011, 2012]), "number": pd.Series([1.5, None]),
            "bool": pd.Series([True, False])}[kind]
    try:
        stored = checked_value("col", value, kind, "item-1")
    except LookalikeError:
        return
    column = pd.concat([base, pd.Series([stored], dtype=object)], ignore_index=True)
    if kind != "text":
        column = column.infer_objects()
    pa.Table.from_pandas(pd.DataFrame({"col": column}), preserve_index=False)


@pytest.mark.model
@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(metadata=st.dictionaries(st.sampled_from(["type", "colour", "gender", "other"]), VALUES,
                                max_size=3))
def test_any_metadata_leaves_the_index_readable_and_compactable(tiny: Path, tmp_path_factory,
                                                                metadata: dict) -> None:
    """Whatever metadata Index.add is given, it is refused with a LookalikeError or stored;
    either way the index opens, lists its attributes and compacts afterwards."""
    folder = Path(shutil.copytree(tiny / "ix", tmp_path_factory.mktemp("meta") / "ix"))
    ix = Index.open(folder)
    try:
        ix.add([{"item_id": "fuzzed", **metadata}], vectors=np.ones((1, ix.spec.dim)))
    except LookalikeError:
        assert "fuzzed" not in Index.open(folder)
    again = Index.open(folder)
    json.dumps([again.metadata(i) for i in again.items["item_id"]])
    again.compact()
    assert len(Index.open(folder)) == len(again)
