"""The index folder: manifest.json, items.parquet, embeddings.npy, index.faiss, or, with
the Milvus backend, manifest.json and items.parquet beside a Milvus collection.

A folder is written next to its destination under a temporary name and renamed into place
only when every file is complete, so a crash mid-build never leaves a half index that loads.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd

from . import milvus
from .errors import IndexFormatError
from .index import build_vector_index, make_index, searchable, set_search_params

log = logging.getLogger(__name__)
FORMAT = "lookalike-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ITEMS = "items.parquet"
EMBEDDINGS = "embeddings.npy"
FAISS = "index.faiss"
JOURNAL = "journal"  # changes since the build: one committed JSON file (+ vector) per change


@dataclass
class StoredIndex:
    path: Path
    manifest: dict[str, Any]
    items: pd.DataFrame
    embeddings: np.ndarray  # memory-mapped, read-only (Milvus: read from the collection)
    faiss_index: Any  # a faiss index, an IVF-PQ one with exact re-ranking (index.Reranked),
    # or the Milvus collection (milvus.MilvusSearch): all answer search(q, k, params)
    backend: Any = None  # the Milvus collection (milvus.MilvusStore) the vectors live in


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("lookalike", "numpy", "onnxruntime", "torch", "faiss-cpu", "pillow", "pyarrow"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """An index folder's manifest.json, as written (no consistency checks: see read_index)."""
    return json.loads((Path(path) / MANIFEST).read_text())


def _is_index(path: Path) -> bool:
    try:
        return read_manifest(path).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def write_index(out: str | os.PathLike, manifest: dict[str, Any], items: pd.DataFrame,
                embeddings: np.ndarray | None, kind: str = "exact",
                params: dict[str, int] | None = None, milvus_uri: str | None = None, *,
                carry: Sequence[str] = (), still_valid: Callable[[], bool] | None = None,
                extra_files: dict[str, Path] | None = None) -> Path:
    """Write an index folder atomically; replaces ``out`` only if it is an index already.
    ``kind`` (exact, hnsw, ivf, ivfpq) is the vector index; an approximate one is tuned and its
    measured recall@10 recorded in the manifest (:func:`lookalike.index.build_vector_index`).
    With ``milvus_uri`` the vectors go to a new Milvus collection instead (the folder names
    it; a replaced folder's collection is dropped once the new folder is in place); a manifest
    that names a collection already (``backend``) keeps it, and no vectors are written.
    ``carry`` names folders of the replaced index to keep (hard-linked);
    ``extra_files`` are copied in under the given names (an int8 model); ``still_valid`` is
    asked just before the swap, and the write is abandoned when it says no."""
    out = Path(out)
    keep_backend = None if milvus_uri else manifest.get("backend")
    if embeddings is not None and len(items) != len(embeddings):
        raise ValueError(f"{len(items)} items but {len(embeddings)} embeddings")
    if out.exists() and not (out.is_dir() and (_is_index(out) or not any(out.iterdir()))):
        raise IndexFormatError(f"{out} exists and is not a lookalike index; refusing to "
                               "overwrite it (choose another --out or remove it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    old_backend = read_manifest(out).get("backend") if _is_index(out) else None
    new_backend: dict[str, Any] | None = None
    try:
        items = items.reset_index(drop=True)
        items.to_parquet(tmp / ITEMS, index=False)
        if keep_backend:  # the collection holds the vectors already
            info, files = manifest["index"], [ITEMS]
        elif milvus_uri:
            emb = np.ascontiguousarray(embeddings, dtype=np.float32)
            new_backend = milvus.create(milvus_uri, milvus.collection_name(out), items, emb,
                                        manifest["catalog"]["attributes"], kind, params)
            info = {"type": "flat" if kind == "exact" else kind, "metric": "inner_product",
                    **{k: new_backend[k] for k in ("params", "recall@10", "recall_queries",
                                                   "recall_target")}}
            files = [ITEMS]
            manifest = {**manifest, "backend": new_backend}
        else:
            emb = np.ascontiguousarray(embeddings, dtype=np.float32)
            index, info = build_vector_index(emb, kind, params)
            # --vectors float16: the stored copy at half the size (search and re-ranking
            # read it; the index holds its own float16 copy or PQ codes)
            np.save(tmp / EMBEDDINGS, emb.astype(np.float16) if info.get("params", {}).get("fp16")
                    else emb)
            faiss.write_index(index, str(tmp / FAISS))
            files = [ITEMS, EMBEDDINGS, FAISS]
        manifest = {**manifest, "format": FORMAT, "format_version": FORMAT_VERSION,
                    "files": dict(zip(("items", "embeddings", "index"), files)), "index": info}
        if extra_files:
            manifest["files"]["extra"] = sorted(extra_files)
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
        for name in [*files, *(extra_files or {})]:
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        with open(tmp / MANIFEST, "w") as f:  # the manifest last: it marks a complete folder
            json.dump(manifest, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        for name in carry:
            if (out / name).is_dir():
                shutil.copytree(out / name, tmp / name, copy_function=os.link)
        os.chmod(tmp, 0o755)
        if still_valid is not None and not still_valid():
            raise IndexFormatError(f"index {out} changed while it was being rewritten; "
                                   "nothing was replaced, run it again")
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
        os.rename(tmp, out)
        _fsync_dir(out.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if new_backend:
            milvus.MilvusStore(new_backend).drop()
        raise
    if old_backend and old_backend.get("type") == "milvus" and old_backend != keep_backend:
        try:  # the replaced folder's collection: nothing refers to it any more
            milvus.MilvusStore(old_backend).drop()
        except Exception as e:  # noqa: BLE001 (another Milvus, unreachable: leave it)
            log.warning("could not drop the replaced index's Milvus collection %s: %s",
                        old_backend.get("collection"), e)
    return out


def append_change(path: str | os.PathLike, change: dict[str, Any],
                  vector: np.ndarray | None = None) -> int:
    """Record one change of an index folder (``{"op": "add", "item": {...}}`` with its vector,
    or ``{"op": "delete", "item_id": ...}``) in its journal. The vector is written first and
    the JSON file last, each under a temporary name renamed into place: a crash leaves either
    the whole change or none of it. Callers serialise their changes. Returns its number."""
    folder = Path(path) / JOURNAL
    folder.mkdir(exist_ok=True)
    seq = max((int(p.stem) for p in folder.glob("*.json")), default=0) + 1
    name = f"{seq:012d}"
    if vector is not None:
        tmp = folder / f".{name}.npy.tmp"
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(vector, dtype=np.float32))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / f"{name}.npy")
    tmp = folder / f".{name}.json.tmp"
    with open(tmp, "w") as f:
        json.dump(change, f, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / f"{name}.json")
    _fsync_dir(folder)
    return seq


def _journal_files(path: str | os.PathLike) -> list[Path]:
    """The committed journal entries of an index folder, oldest first."""
    folder = Path(path) / JOURNAL
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def journal(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The index folder's change log: every committed change since the build, in order
    (an added batch's item records left out), compacted ones first (the manifest's
    ``history``)."""
    return read_manifest(path).get("history", []) + [
        {k: v for k, v in json.loads(f.read_text()).items() if k not in ("items", "item")}
        for f in _journal_files(path)]


def compact(path: str | os.PathLike) -> int:
    """Fold the journal into the folder: the current items and vectors written as a new build
    (an approximate index rebuilt with its parameters and its recall measured again; with
    Milvus only the items table), the change log moved into the manifest's ``history``, the
    server's added photos kept. Atomic like a build; refused if a change lands meanwhile.
    Returns the number of changes folded in."""
    path = Path(path)
    entries = _journal_files(path)  # listed first: a change landing after it is noticed
    stored = read_index(path)
    if not entries:
        return 0
    log_ = journal(path)
    m = {k: v for k, v in stored.manifest.items() if k not in ("journal", "files")}
    m["counts"] = {**m["counts"], "items": len(stored.items)}
    m["history"] = log_ + [{"op": "compact", "time": now(),
                            "counts": {"changes": len(entries), "items": len(stored.items)}}]
    kind, params = stored_kind(stored.manifest)
    emb = None if stored.backend else np.asarray(stored.embeddings, dtype=np.float32)
    write_index(path, m, stored.items, emb, kind, params, carry=("photos",),
                extra_files={n: path / n for n in stored.manifest["files"].get("extra", [])},
                still_valid=lambda: _journal_files(path) == entries)
    return len(entries)


def _replay(path: Path, items: pd.DataFrame, emb: np.ndarray | None
            ) -> tuple[pd.DataFrame, np.ndarray | None, int]:
    """The built items and vectors with the journal's changes applied, in order (without
    ``emb``, the items alone: a Milvus collection holds the vectors)."""
    files = _journal_files(path)
    if not files:
        return items, emb, 0
    ids = items["item_id"].astype(str).tolist()
    alive: dict[str, tuple[int, dict[str, Any] | None, np.ndarray | None]] = {
        i: (r, None, None) for r, i in enumerate(ids)}
    for f in files:
        try:
            change = json.loads(f.read_text())
            if change["op"] == "add":  # one item (the server) or a batch (lookalike add)
                recs = change["items"] if "items" in change else [change["item"]]
                vecs = np.load(f.with_suffix(".npy")).reshape(len(recs), -1) \
                    if emb is not None else [None] * len(recs)
                for rec, vec in zip(recs, vecs):
                    alive.pop(str(rec["item_id"]), None)  # a replaced item moves to the end
                    alive[str(rec["item_id"])] = (-1, rec, vec)
            elif change["op"] == "delete":
                for item_id in change.get("item_ids", [change.get("item_id")]):
                    alive.pop(str(item_id), None)
            else:
                raise ValueError(f"unknown op {change['op']!r}")
        except (OSError, ValueError, KeyError) as e:
            raise IndexFormatError(f"index {path}: journal entry {f.name} is damaged: {e}") from None
    base = [r for r, rec, _ in alive.values() if rec is None]
    added = [(rec, vec) for r, rec, vec in alive.values() if rec is not None]
    parts = [items.iloc[base]]
    if added:
        parts.append(pd.DataFrame([rec for rec, _ in added]))
    new_items = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(
        drop=True)
    if emb is None:
        return new_items, None, len(files)
    vectors = [np.asarray(emb[base], dtype=np.float32)] + [vec.reshape(1, -1) for _, vec in added]
    return new_items, np.concatenate(vectors), len(files)


def read_index(path: str | os.PathLike) -> StoredIndex:
    """Open an index folder, checking that it is complete and self-consistent."""
    path = Path(path)
    if not path.is_dir():
        raise IndexFormatError(f"{path} is not a lookalike index: no such folder")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise IndexFormatError(f"{path} is not a lookalike index: it has no {MANIFEST} "
                               "(build one with `lookalike build`)")
    try:
        manifest = json.loads(mpath.read_text())
    except ValueError as e:
        raise IndexFormatError(f"{mpath} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFormatError(f"{path} is not a lookalike index ({MANIFEST} has no "
                               f"\"format\": \"{FORMAT}\")")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise IndexFormatError(f"{path} was written by a newer lookalike (format version "
                               f"{manifest['format_version']} > {FORMAT_VERSION}); upgrade")
    backend = manifest.get("backend")
    for name in (ITEMS,) if backend else (ITEMS, EMBEDDINGS, FAISS):
        if not (path / name).is_file():
            raise IndexFormatError(f"index {path} is incomplete: {name} is missing")
    items = pd.read_parquet(path / ITEMS)
    if backend:
        return _open_milvus(path, manifest, items)
    emb = np.load(path / EMBEDDINGS, mmap_mode="r")
    index = faiss.read_index(str(path / FAISS))
    dim = manifest["embedder"]["dim"]
    n = manifest["counts"]["items"]
    if emb.ndim != 2 or emb.shape != (n, dim) or len(items) != n or index.ntotal != n \
            or index.d != dim:
        raise IndexFormatError(
            f"index {path} is inconsistent: manifest says {n} items × {dim} dims, found "
            f"{len(items)} items, embeddings {emb.shape}, faiss {index.ntotal} × {index.d}")
    items, emb, changes = _replay(path, items, emb)
    if changes:  # items were added or deleted since the build: the stored index is stale
        manifest = {**manifest, "journal": {"changes": changes}}
        return changed(path, manifest, items, emb)
    kind, params = stored_kind(manifest)
    set_search_params(index, kind, params)
    return StoredIndex(path, manifest, items, emb, searchable(index, emb, kind, params))


def _open_milvus(path: Path, manifest: dict[str, Any], items: pd.DataFrame) -> StoredIndex:
    if manifest["backend"].get("type") != "milvus":
        raise IndexFormatError(f"index {path}: unknown backend {manifest['backend'].get('type')!r}")
    store = milvus.MilvusStore(manifest["backend"])
    if not store.client.has_collection(store.collection):
        raise IndexFormatError(f"index {path}: its Milvus collection {store.collection!r} is "
                               f"gone from {store.uri}; rebuild the index")
    store.client.load_collection(store.collection)
    items, _, changes = _replay(path, items, None)
    if changes:
        manifest = {**manifest, "journal": {"changes": changes}}
    return changed(path, manifest, items, None, store)


def changed(path: Path, manifest: dict[str, Any], items: pd.DataFrame,
            embeddings: np.ndarray | None, backend: milvus.MilvusStore | None = None
            ) -> StoredIndex:
    """An index over other items than the stored vector index was built for (a journal
    replayed, a live change): over ``embeddings`` a new index of the manifest's kind, or with
    the Milvus ``backend`` the collection (which holds the vectors already)."""
    items = items.reset_index(drop=True)
    if backend is not None:
        ids = items["item_id"].astype(str).tolist()
        return StoredIndex(path, manifest, items, milvus.MilvusVectors(backend, ids),
                           milvus.MilvusSearch(backend, ids), backend)
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    return StoredIndex(path, manifest, items, emb, vector_index(manifest, emb))


def stored_kind(manifest: dict[str, Any]) -> tuple[str, dict[str, int]]:
    """The vector index's kind (exact, hnsw, ivf, ivfpq) and parameters, from a manifest."""
    info = manifest.get("index", {})
    kind = {"flat": "exact"}.get(info.get("type", "flat"), info.get("type", "flat"))
    return kind, dict(info.get("params", {}))


def vector_index(manifest: dict[str, Any], embeddings: np.ndarray) -> Any:
    """A new searchable index of the manifest's kind over other ``embeddings`` (a changed
    live index), built with the stored parameters, not tuned again."""
    kind, params = stored_kind(manifest)
    return searchable(make_index(embeddings, kind, params), embeddings, kind, params)
