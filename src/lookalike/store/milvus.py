"""Milvus as the vector store of an index folder (``lookalike build --backend milvus``).

The folder keeps its manifest, items table and journal; the vectors and the filterable
attributes live in a Milvus collection (FLAT, HNSW, IVF_FLAT or IVF_PQ index there), which answers the
searches, filters and deletes. ``uri`` is a Milvus server or cluster (``http://host:19530``)
or a local file path, which runs milvus-lite in this process (one process per file).
:class:`MilvusSearch` answers ``search`` like a faiss index over the items' rows, and
:class:`MilvusVectors` reads vectors like an array, so every command works on top.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from lookalike.errors import IndexFormatError, LookalikeError, choose
from lookalike.ingest.catalog import ITEM_ID, PRODUCT_ID
from lookalike.search.topk import filter_values
from lookalike.search.vector_index import RECALL_TARGET, default_params, measure_recall

BACKENDS = ("faiss", "milvus")
INDEX_TYPES = {"exact": "FLAT", "hnsw": "HNSW", "ivf": "IVF_FLAT", "ivfpq": "IVF_PQ"}
SEARCH_KNOB = {"HNSW": "ef", "IVF_FLAT": "nprobe", "IVF_PQ": "nprobe"}
MAX_TOPK = 16384  # Milvus's limit on results per query (and on HNSW ef)
MAX_NPROBE = 65536  # Milvus's limit on IVF nprobe
TEXT_MAX = 65535  # VARCHAR length limit of the attribute fields
BATCH = 1000  # rows per insert / get
INDEX_WAIT_S = 600  # how long a build waits for Milvus to index a new collection
_clients: dict[str, Any] = {}
log = logging.getLogger(__name__)


def is_lite(uri: str) -> bool:
    """A local file path (milvus-lite) rather than a server URI."""
    return "://" not in uri


def normal_uri(uri: str) -> str:
    """A server URI as given; a milvus-lite file as an absolute path (the manifest must work
    from any working directory)."""
    return uri if not is_lite(uri) else str(Path(uri).expanduser().resolve())


def client(uri: str) -> Any:
    """One MilvusClient per URI and process (milvus-lite allows one opener per file)."""
    uri = normal_uri(uri)
    if uri not in _clients:
        try:
            from pymilvus import MilvusClient
        except ImportError:
            raise LookalikeError("a Milvus store needs pymilvus (and milvus-lite for a local "
                                 "file): pip install 'lookalike[milvus]'") from None
        try:
            _clients[uri] = MilvusClient(uri, token=os.environ.get("MILVUS_TOKEN", ""))
        except Exception as e:  # noqa: BLE001 (connection and lock errors of many types)
            raise LookalikeError(f"could not open Milvus at {uri}: {type(e).__name__}: {e}") \
                from None
    return _clients[uri]


def close_clients() -> None:
    """Close every Milvus connection of this process (and milvus-lite's file locks); the next
    use opens them again."""
    while _clients:
        _, c = _clients.popitem()
        try:
            c.close()
        except Exception as e:  # noqa: BLE001 (closing is best effort)
            log.debug("closing a Milvus client: %s", e)


def field_names(attributes: Sequence[str]) -> dict[str, str]:
    """Attribute → Milvus field name: the attribute's own name where Milvus allows it."""
    out = {PRODUCT_ID: PRODUCT_ID}
    for i, a in enumerate(attributes):
        ok = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,254}", a) and a not in (ITEM_ID, "vector",
                                                                              PRODUCT_ID)
        out[a] = a if ok else f"attr_{i}"
    return out


def _text(values: pd.Series) -> list[str]:
    # the same text filter_mask compares, missing values as ""
    return values.astype("string").fillna("").str.slice(0, TEXT_MAX).tolist()


def _rows(items: pd.DataFrame, vectors: np.ndarray, fields: Mapping[str, str]
          ) -> list[dict[str, Any]]:
    cols = {f: _text(items[a]) for a, f in fields.items()}
    ids = items[ITEM_ID].astype(str).tolist()
    return [{ITEM_ID: ids[i], "vector": vectors[i].tolist(),
             **{f: v[i] for f, v in cols.items()}} for i in range(len(ids))]


class MilvusStore:
    """One collection: write vectors with their attributes, delete them, search them."""

    def __init__(self, info: Mapping[str, Any]) -> None:
        self.info = dict(info)
        self.uri, self.collection = info["uri"], info["collection"]
        self.fields: dict[str, str] = dict(info["fields"])
        self.client = client(self.uri)

    def upsert(self, items: pd.DataFrame, vectors: np.ndarray, *, new: bool = False) -> None:
        """Write (or overwrite, by item id) items' vectors and attributes; ``new``: into a
        collection that holds none of them yet (a plain insert)."""
        write = self.client.insert if new else self.client.upsert
        for s in range(0, len(items), BATCH):
            write(self.collection, _rows(items.iloc[s:s + BATCH], vectors[s:s + BATCH],
                                         self.fields))
        self.client.flush(self.collection)

    def delete(self, item_ids: Sequence[str]) -> None:
        for s in range(0, len(item_ids), BATCH):
            self.client.delete(self.collection, ids=[str(i) for i in item_ids[s:s + BATCH]])
        self.client.flush(self.collection)

    def vectors(self, item_ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of ``item_ids``, in that order."""
        out = np.zeros((len(item_ids), self.info["dim"]), np.float32)
        for s in range(0, len(item_ids), BATCH):
            part = [str(i) for i in item_ids[s:s + BATCH]]
            got = {r[ITEM_ID]: r["vector"] for r in
                   self.client.get(self.collection, ids=part, output_fields=["vector"])}
            missing = [i for i in part if i not in got]
            if missing:
                raise IndexFormatError(f"Milvus collection {self.collection} has no vector for "
                                       f"item(s) {', '.join(missing[:10])}")
            out[s:s + len(part)] = [got[i] for i in part]
        return out

    def expression(self, where: Mapping[str, Any] | None) -> str:
        """A Milvus filter for ``where`` (values of one attribute are alternatives, all
        attributes must match; values compared as text, like the local filter)."""
        parts = []
        for attr, values in (where or {}).items():
            listed = ", ".join(json.dumps(v) for v in sorted(filter_values(values)))
            parts.append(f"{self.fields[attr]} in [{listed}]")
        return " and ".join(parts)

    def search(self, queries: np.ndarray, k: int, expression: str = "", breadth: int | None = None
               ) -> list[tuple[list[str], list[float]]]:
        """Item ids and scores of the ``k`` best items for each query."""
        kind = self.info["index_type"]
        params: dict[str, Any] = {}
        if kind in SEARCH_KNOB:
            b = breadth or self.info["params"][SEARCH_KNOB[kind]]
            params[SEARCH_KNOB[kind]] = min(MAX_TOPK, max(b, k)) if kind == "HNSW" \
                else min(b, MAX_NPROBE)
        # Strong: a search sees every write acknowledged before it (the default, Bounded, may
        # miss the last seconds' writes, a freshly built collection included)
        res = self.client.search(self.collection, data=np.asarray(queries, np.float32).tolist(),
                                 limit=min(k, MAX_TOPK), filter=expression,
                                 search_params={"metric_type": "IP", "params": params},
                                 consistency_level="Strong")
        return [(list(hits.ids), list(hits.distances)) for hits in res]

    def drop(self) -> None:
        if self.client.has_collection(self.collection):
            self.client.drop_collection(self.collection)


def collection_name(folder: Path) -> str:
    """A new collection's name for an index folder: its name, made safe, and a unique tail
    (a rebuild writes a new collection and drops the old one only when it is done)."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", folder.name)[:100]
    return f"lookalike_{safe}_{uuid.uuid4().hex[:12]}"


def create(uri: str, name: str, items: pd.DataFrame, embeddings: np.ndarray,
           attributes: Sequence[str], kind: str, params: Mapping[str, int] | None = None,
           target: float = RECALL_TARGET) -> dict[str, Any]:
    """A new collection holding ``items``' vectors and attributes, indexed and tuned (HNSW
    ``ef``, IVF ``nprobe`` doubled until recall@10 against exact search on a seeded sample
    reaches ``target``). Returns the manifest's backend entry."""
    from pymilvus import DataType

    uri = normal_uri(uri)
    choose(kind, INDEX_TYPES, "index type")
    if kind == "ivfpq" and is_lite(uri):
        raise LookalikeError("milvus-lite cannot build IVF_PQ (it accepts the index and fails "
                             "in the background); use index= hnsw, ivf or exact, or a Milvus "
                             "server")
    n, d = embeddings.shape
    p = {**default_params(kind, n, d), **(params or {})}
    fields = field_names(attributes)
    c = client(uri)
    if c.has_collection(name):
        raise LookalikeError(f"Milvus at {uri} already has a collection {name!r}")
    schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field(ITEM_ID, DataType.VARCHAR, is_primary=True, max_length=512)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=d)
    for f in fields.values():
        schema.add_field(f, DataType.VARCHAR, max_length=TEXT_MAX)
    index_type = INDEX_TYPES[kind]
    build = {"HNSW": {"M": p.get("M"), "efConstruction": p.get("efConstruction")},
             "IVF_FLAT": {"nlist": p.get("nlist")},
             "IVF_PQ": {"nlist": p.get("nlist"), "m": p.get("m"), "nbits": p.get("nbits")},
             "FLAT": {}}[index_type]
    index_params = c.prepare_index_params()
    index_params.add_index(field_name="vector", index_type=index_type, metric_type="IP",
                           params=build)
    c.create_collection(name, schema=schema, consistency_level="Strong")  # not loaded yet
    info: dict[str, Any] = {"type": "milvus", "uri": uri, "collection": name, "dim": d,
                            "index_type": index_type, "fields": fields,
                            "params": {**build, **({SEARCH_KNOB[index_type]:
                                                    p["efSearch" if kind == "hnsw" else "nprobe"]}
                                                   if index_type in SEARCH_KNOB else {})}}
    store = MilvusStore(info)
    try:
        t0 = time.perf_counter()
        store.upsert(items, embeddings, new=True)
        _index_every_row(c, name, index_params, n)
        c.load_collection(name)
        store.info["ready_s"] = round(time.perf_counter() - t0, 3)
        got, queries = _tune(store, items, embeddings, target)
    except BaseException:
        store.drop()
        raise
    return {**store.info, "recall@10": round(got, 4), "recall_queries": queries,
            "recall_target": target}


def _index_every_row(c: Any, name: str, index_params: Any, rows: int,
                     wait_s: float = INDEX_WAIT_S) -> None:
    """Build the collection's index over every written row before it is loaded. Loaded
    earlier, Milvus answers from a scan of the rows not indexed yet, so the tuning would
    measure that scan (recall 1.0 at IVF nprobe 1) and the index would later answer with the
    breadth it chose, finding next to nothing."""
    c.create_index(name, index_params)  # returns once Milvus reports the index finished
    deadline = time.monotonic() + wait_s
    while True:
        d = c.describe_index(name, "vector")
        if str(d.get("state")) == "Failed":
            raise LookalikeError(f"Milvus could not index collection {name}: "
                                 f"{d.get('index_state_fail_reason') or 'no reason given'}")
        if d.get("pending_index_rows", 0) == 0 and d.get("indexed_rows", 0) >= rows:
            return
        if time.monotonic() > deadline:
            raise LookalikeError(f"Milvus had indexed {d.get('indexed_rows')} of {rows} rows "
                                 f"of collection {name} after {wait_s:.0f} s")
        time.sleep(0.2)


def _tune(store: MilvusStore, items: pd.DataFrame, embeddings: np.ndarray, target: float
          ) -> tuple[float, int]:
    """Double the search breadth until recall@10 reaches ``target``; the recall and the
    number of queries it was measured on."""
    index_type = store.info["index_type"]
    searcher = MilvusSearch(store, {str(i): r for r, i in enumerate(items[ITEM_ID])})
    got, queries = measure_recall(searcher, embeddings)
    knob = SEARCH_KNOB.get(index_type)
    # Milvus may cluster into other than the nlist asked (milvus-lite does), so nprobe
    # is bounded by the items, not by nlist
    limit = 4096 if index_type == "HNSW" else min(MAX_NPROBE, max(len(embeddings), 1))
    while knob and got < target and store.info["params"][knob] < limit:
        store.info["params"][knob] = min(limit, store.info["params"][knob] * 2)
        got, queries = measure_recall(searcher, embeddings)
    return got, queries


class Filter(NamedTuple):
    """A filtered search: the Milvus expression and the share of the items it keeps. The
    search breadth grows as the share shrinks (an HNSW walk finds few matching neighbours in
    a narrow filter), up to an exhaustive one."""

    expression: str
    share: float


class MilvusSearch:
    """Searches the collection and answers like a faiss index: scores and rows, ``row_of``
    numbering the items (ids it does not know, left by an interrupted change, are left out).
    ``row_of`` may grow and shrink as items come and go."""

    def __init__(self, store: MilvusStore, row_of: Mapping[str, int]) -> None:
        self.store, self.row_of = store, row_of
        self.d = store.info["dim"]

    @property
    def ntotal(self) -> int:
        return len(self.row_of)

    def search(self, q: np.ndarray, k: int, params: Filter | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        expression, breadth = "", None
        if params is not None:
            knob = SEARCH_KNOB.get(self.store.info["index_type"])
            expression = params.expression
            if knob:
                breadth = math.ceil(self.store.info["params"][knob] / max(params.share, 1e-3))
        found = self.store.search(q, k, expression, breadth)
        scores = np.full((len(q), k), -np.inf, np.float32)
        rows = np.full((len(q), k), -1, np.int64)
        for i, (ids, dist) in enumerate(found):
            known = [(self.row_of[x], s) for x, s in zip(ids, dist) if x in self.row_of][:k]
            if known:
                rows[i, :len(known)] = [r for r, _ in known]
                scores[i, :len(known)] = [s for _, s in known]
        return scores, rows


class MilvusVectors:
    """The items' vectors, read from the collection when indexed (one row, a slice, rows) or
    all at once through ``np.asarray`` (kept after the first time)."""

    def __init__(self, store: MilvusStore, item_ids: Sequence[str]) -> None:
        self.store, self.ids = store, [str(i) for i in item_ids]
        self.shape = (len(self.ids), store.info["dim"])
        self.ndim, self.dtype = 2, np.dtype(np.float32)
        self._all: np.ndarray | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if self._all is not None:
            return self._all[key]
        if isinstance(key, (int, np.integer)):
            return self.store.vectors([self.ids[int(key)]])[0]
        picked = np.arange(len(self.ids))[key]
        return self.store.vectors([self.ids[r] for r in np.atleast_1d(picked)])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if self._all is None:
            self._all = self.store.vectors(self.ids)
        return self._all if dtype is None else self._all.astype(dtype)
