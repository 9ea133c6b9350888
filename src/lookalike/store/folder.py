"""The index folder: manifest.json, items.parquet, embeddings.npy and index.faiss (with the
Milvus backend, manifest.json and items.parquet beside a Milvus collection); model-int8.onnx
when built in int8; journal/ (changes.log, the changes since the build: journal.py); photos/,
photos of items added with their bytes; and .lock, the writers' lock.

A folder is written next to its destination under a temporary name and renamed into place
only when every file is complete, so a crash mid-build never leaves a half index that loads.
The swap happens under the folder's writer lock, so it never lands between a writer reading
the journal and appending to it. Opening a folder loads the built index as it is (nothing is
re-trained or rebuilt) and applies the journal's changes on top (segments.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lookalike.errors import IndexFormatError
from lookalike.search.vector_index import (
    build_vector_index,
    searchable,
    set_search_params,
    stored_kind,
)
from lookalike.store import journal, milvus
from lookalike.store.litter import (
    WriterLock,
    build_tmp_prefix,
    remove_dead_builds,
    remove_dead_files,
)
from lookalike.store.segments import Segments

log = logging.getLogger(__name__)
FORMAT = "lookalike-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ITEMS = "items.parquet"
EMBEDDINGS = "embeddings.npy"
FAISS = "index.faiss"
PHOTOS = "photos"  # photos of items added with their bytes, inside the index folder
OPEN_RETRIES = 5  # a folder replaced while it is being opened is read again


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


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """An index folder's manifest.json, as written (no consistency checks: see open_segments)."""
    return json.loads((Path(path) / MANIFEST).read_text())


def is_index(path: Path) -> bool:
    """Whether ``path`` holds a lookalike index folder."""
    try:
        return read_manifest(path).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def write_index(out: str | os.PathLike, manifest: dict[str, Any], items: pd.DataFrame,
                embeddings: np.ndarray | None, kind: str = "exact",
                params: dict[str, int] | None = None, milvus_uri: str | None = None, *,
                before_swap: Callable[[Path], None] | None = None,
                extra_files: dict[str, Path] | None = None) -> Path:
    """Write an index folder atomically; replaces ``out`` only if it is an index already.
    ``kind`` (exact, hnsw, ivf, ivfpq) is the vector index; an approximate one is tuned and its
    measured recall@10 recorded in the manifest (:func:`lookalike.search.vector_index.build_vector_index`).
    With ``milvus_uri`` the vectors go to a new Milvus collection instead (the folder names
    it; a replaced folder's collection is dropped once the new folder is in place); a manifest
    that names a collection already (``backend``) keeps it, and no vectors are written.
    ``extra_files`` are copied in under the given names (an int8 model). The swap happens
    under the folder's writer lock; ``before_swap(tmp)`` runs under it first (a compaction
    carries what landed meanwhile) and abandons the write by raising."""
    out = Path(out)
    keep_backend = None if milvus_uri else manifest.get("backend")
    if embeddings is not None and len(items) != len(embeddings):
        raise ValueError(f"{len(items)} items but {len(embeddings)} embeddings")
    if out.exists() and not (out.is_dir() and (is_index(out) or not any(out.iterdir()))):
        raise IndexFormatError(f"{out} exists and is not a lookalike index; refusing to "
                               "overwrite it (choose another out= or remove it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_builds(out)
    tmp = Path(tempfile.mkdtemp(prefix=build_tmp_prefix(out), dir=out.parent))
    held = WriterLock(tmp)  # proof of life for whoever cleans up beside us
    old_backend = read_manifest(out).get("backend") if is_index(out) else None
    made: list[dict[str, Any]] = []  # a Milvus collection made for this folder
    try:
        items = items.reset_index(drop=True)
        # one thread: a compaction may run while the interpreter exits, when pyarrow's
        # converter pool can no longer start
        pq.write_table(pa.Table.from_pandas(items, preserve_index=False, nthreads=1),
                       tmp / ITEMS)
        manifest, files = _write_vectors(tmp, out, manifest, items, embeddings, kind, params,
                                         milvus_uri, keep_backend, made)
        _seal(tmp, manifest, files, extra_files or {})
        held.release()  # (the folder becomes the index: no lock file in it)
        _swap(tmp, out, before_swap)
    except BaseException:
        held.release()
        shutil.rmtree(tmp, ignore_errors=True)
        for backend in made:
            milvus.MilvusStore(backend).drop()
        raise
    if old_backend and old_backend.get("type") == "milvus" and old_backend != keep_backend:
        try:  # the replaced folder's collection: nothing refers to it any more
            milvus.MilvusStore(old_backend).drop()
        except Exception as e:  # noqa: BLE001 (another Milvus, unreachable: leave it)
            log.warning("could not drop the replaced index's Milvus collection %s: %s",
                        old_backend.get("collection"), e)
    return out


def _write_vectors(tmp: Path, out: Path, manifest: dict[str, Any], items: pd.DataFrame,
                   embeddings: np.ndarray | None, kind: str, params: dict[str, int] | None,
                   milvus_uri: str | None, keep_backend: dict[str, Any] | None,
                   made: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """The vectors into ``tmp`` (embeddings.npy and index.faiss) or a new Milvus collection
    (appended to ``made``); returns the manifest with its ``index`` entry and the files."""
    if keep_backend:  # the collection holds the vectors already
        info, files = manifest["index"], [ITEMS]
    elif milvus_uri:
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        backend = milvus.create(milvus_uri, milvus.collection_name(out), items, emb,
                                manifest["catalog"]["attributes"], kind, params)
        made.append(backend)
        info = {"type": "flat" if kind == "exact" else kind, "metric": "inner_product",
                **{k: backend[k] for k in ("params", "recall@10", "recall_queries",
                                           "recall_target")}}
        files = [ITEMS]
        manifest = {**manifest, "backend": backend}
    else:
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        index, info = build_vector_index(emb, kind, params)
        # float16 vectors: the stored copy at half the size (search and re-ranking read it;
        # the index holds its own float16 copy or PQ codes)
        np.save(tmp / EMBEDDINGS, emb.astype(np.float16) if info.get("params", {}).get("fp16")
                else emb)
        faiss.write_index(index, str(tmp / FAISS))
        files = [ITEMS, EMBEDDINGS, FAISS]
    return {**manifest, "format": FORMAT, "format_version": FORMAT_VERSION,
            "files": dict(zip(("items", "embeddings", "index"), files)), "index": info}, files


def _seal(tmp: Path, manifest: dict[str, Any], files: list[str],
          extra_files: dict[str, Path]) -> None:
    """Copy the extra files in, sync every file, and write the manifest last: it marks a
    complete folder."""
    if extra_files:
        manifest["files"]["extra"] = sorted(extra_files)
    for name, src in extra_files.items():
        shutil.copyfile(src, tmp / name)
    for name in [*files, *extra_files]:
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    with open(tmp / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o755)


def _swap(tmp: Path, out: Path, before_swap: Callable[[Path], None] | None) -> None:
    """Put the complete folder ``tmp`` in the place of ``out``, under the writers' lock."""
    with journal.locked(out) if out.exists() else contextlib.nullcontext():
        if before_swap is not None:
            before_swap(tmp)
        old = None
        if not out.exists():
            os.rename(tmp, out)
        elif _exchange(tmp, out):  # one atomic step: readers never find the folder missing
            old = tmp
        else:  # two renames; a crash between them is undone by the next opener (_recover)
            old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
            os.rename(tmp, out)
        journal.fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders atomically (Linux renameat2 RENAME_EXCHANGE). False where the system
    or the filesystem cannot."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _recover(path: Path) -> bool:
    """A swap by two renames that died between them left no folder at ``path`` and the
    replaced one beside it: put that one back (the swap then never happened). Only when its
    writer is gone, i.e. its lock can be taken."""
    for old in sorted(path.parent.glob(f".{path.name}.old-*")):
        try:
            with journal.locked(old, timeout=0):
                if not path.exists() and is_index(old):
                    os.rename(old, path)
                    journal.fsync_dir(path.parent)
                    return True
        except (journal.LockTimeout, IndexFormatError, OSError):
            continue
    return False


def generation(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """Which build of the folder is at ``path`` now (its manifest file's identity): it changes
    when a compaction or a rebuild replaces the folder. None when there is none."""
    try:
        return _identity(os.stat(Path(path) / MANIFEST))
    except OSError:
        return None


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_dev, st.st_ino, st.st_mtime_ns


def _read_manifest(path: Path) -> tuple[dict[str, Any], tuple[int, int, int]]:
    if not path.is_dir():
        raise IndexFormatError(f"{path} is not a lookalike index: no such folder")
    mpath = path / MANIFEST
    try:
        with open(mpath, "rb") as f:
            st = os.fstat(f.fileno())
            text = f.read()
    except FileNotFoundError:
        raise IndexFormatError(f"{path} is not a lookalike index: it has no {MANIFEST} "
                               "(build one with `lookalike build`)") from None
    try:
        manifest = json.loads(text)
    except ValueError as e:
        raise IndexFormatError(f"{mpath} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFormatError(f"{path} is not a lookalike index ({MANIFEST} has no "
                               f"\"format\": \"{FORMAT}\")")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise IndexFormatError(f"{path} was written by a newer lookalike (format version "
                               f"{manifest['format_version']} > {FORMAT_VERSION}); upgrade")
    return manifest, _identity(st)


def open_segments(path: str | os.PathLike) -> Segments:
    """Open an index folder, checking that it is complete and self-consistent: the built
    vector index as stored, with every committed journal entry applied. A folder replaced
    while it is read (a compaction, a rebuild) is read again."""
    path = Path(path)
    for attempt in range(OPEN_RETRIES):
        try:
            manifest, gen = _read_manifest(path)
        except IndexFormatError:
            # between the two renames of a swap the folder is briefly missing
            if not _swapping(path):
                raise
            if not _recover(path):
                if attempt + 1 == OPEN_RETRIES:
                    raise
                time.sleep(0.01 * 2 ** attempt)
            continue
        try:
            seg = _load(path, manifest, gen)
            catch_up(seg)
        except (OSError, IndexFormatError):
            if generation(path) != gen:
                continue
            raise
        if generation(path) == gen:
            remove_dead_files(journal.folder_of(path))
            remove_dead_builds(path)
            return seg
    raise IndexFormatError(f"index {path} was replaced {OPEN_RETRIES} times while it was "
                           "being opened; try again")


def _swapping(path: Path) -> bool:
    """Whether a replaced copy of ``path`` sits beside it (mid-swap)."""
    return any(p.name.startswith(f".{path.name}.old-") for p in path.parent.iterdir())


def catch_up(seg: Segments, check: Callable[[], bool] | None = None) -> int:
    """Apply the journal's changes after ``seg.cursor`` (the vectors checked against its
    dimensions, kept in their stored type). With ``check``, they are applied only if it
    still says yes once they are read. Returns how many were applied."""
    entries, cursor = journal.read(seg.path, seg.cursor, None if seg.milvus else seg.dim)
    if check is not None and not check():
        return 0
    seg.apply(entries)
    seg.cursor = cursor
    return len(entries)


def _load(path: Path, manifest: dict[str, Any], gen: Any) -> Segments:
    backend = manifest.get("backend")
    for name in (ITEMS,) if backend else (ITEMS, EMBEDDINGS, FAISS):
        if not (path / name).is_file():
            raise IndexFormatError(f"index {path} is incomplete: {name} is missing")
    items = pd.read_parquet(path / ITEMS)
    if backend:
        return _open_milvus(path, manifest, items, gen)
    emb = np.load(path / EMBEDDINGS, mmap_mode="r")
    # the built index is never changed once loaded: its vectors stay memory-mapped (a 1M-item
    # HNSW opens in 0.1 s instead of 1-2.5 s, and processes share the pages)
    index = faiss.read_index(str(path / FAISS), faiss.IO_FLAG_MMAP_IFC)
    dim = manifest["embedder"]["dim"]
    n = manifest["counts"]["items"]
    if emb.ndim != 2 or emb.shape != (n, dim) or len(items) != n or index.ntotal != n \
            or index.d != dim:
        raise IndexFormatError(
            f"index {path} is inconsistent: manifest says {n} items × {dim} dims, found "
            f"{len(items)} items, embeddings {emb.shape}, faiss {index.ntotal} × {index.d}")
    kind, params = stored_kind(manifest)
    set_search_params(index, kind, params)
    return Segments(path, manifest, items, emb, searchable(index, emb, kind, params),
                    generation=gen)


def _open_milvus(path: Path, manifest: dict[str, Any], items: pd.DataFrame,
                 gen: Any) -> Segments:
    if manifest["backend"].get("type") != "milvus":
        raise IndexFormatError(f"index {path}: unknown backend {manifest['backend'].get('type')!r}")
    store = milvus.MilvusStore(manifest["backend"])
    if not store.client.has_collection(store.collection):
        raise IndexFormatError(f"index {path}: its Milvus collection {store.collection!r} is "
                               f"gone from {store.uri}; rebuild the index")
    store.client.load_collection(store.collection)
    seg = Segments(path, manifest, items, None, None, backend=store, generation=gen,
                   storage=np.dtype(np.float32))
    seg.sealed = milvus.MilvusSearch(store, seg.slot_of)
    return seg


