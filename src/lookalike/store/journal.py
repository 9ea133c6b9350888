"""The change journal of an index folder, and the lock that its writers share.

Every change since the folder was built is one record of ``journal/changes.log``, an
append-only file: a fixed header (magic, the change's number, the lengths of its parts, a CRC-32
of them), the change as JSON, and for an add its vectors (a type byte, ``f`` float32 or ``e``
float16, the row count as 4 bytes, then the rows, one per item, in the folder's storage type). A change is committed, and acknowledged, once its record is
written and ``fdatasync``-ed. A record cut short by a crash, or being written right now, fails
its length or checksum: readers stop before it, and the next writer cuts it off before it
appends. Journals of earlier versions, one ``NNNNNNNNNNNN.json`` (+ ``.npy``) file per change,
are read first and never written again.

Writers (``Index.add``/``delete``/``compact``, ``lookalike build`` replacing a folder) hold the
folder's lock while they append or swap: an ``flock`` on the folder's ``.lock`` file (a writer
that waited while the folder was replaced takes the new folder's lock instead). Under it, the
next number is the one after the last committed record, so numbers never collide and the
journal's order is the order in which changes were acknowledged. Readers never take the lock:
records are committed whole and in order, so a reader sees a prefix of the journal and resumes
where it stopped (a :class:`Cursor`). The kernel drops the lock of a process that dies, so
there are no stale locks.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lookalike.errors import IndexFormatError, LookalikeError
from lookalike.files import atomic_path

JOURNAL = "journal"
LOG = "changes.log"
LOCK = ".lock"  # the writers' lock file, inside the folder
LOCK_TIMEOUT = 300.0  # seconds a writer waits for the folder's lock before giving up
OPS = ("add", "delete")
MAGIC = b"LKJ1"
HEADER = struct.Struct("<4sQIQI")  # magic, number, JSON bytes, vector bytes, CRC-32 of both


class LockTimeout(LookalikeError):
    """Another writer held the index folder's lock for too long."""


@dataclass(frozen=True)
class Entry:
    """One committed change: ``{"op": "add", "items": [...]}`` (or the older single
    ``"item"``) with one vector per item, or ``{"op": "delete", "item_ids": [...]}`` (or the
    older single ``"item_id"``)."""

    seq: int
    change: dict[str, Any]
    vectors: np.ndarray | None = None  # (items, dim) for an add, in the stored type

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.change["items"] if "items" in self.change else [self.change["item"]]

    @property
    def item_ids(self) -> list[str]:
        c = self.change
        return [str(i) for i in c["item_ids"]] if "item_ids" in c else [str(c["item_id"])]


def lock_path(folder: str | os.PathLike) -> Path:
    return Path(folder) / LOCK


@contextmanager
def locked(folder: str | os.PathLike, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the folder's writer lock: a blocking ``flock`` on its ``.lock`` file, so a waiter
    is woken by the kernel the moment the holder lets go. A folder replaced while we waited
    has a new lock file: the lock is taken again on that one. Raises :class:`LockTimeout`
    after ``timeout`` seconds."""
    path = lock_path(folder)
    deadline = missing_since = time.monotonic() + 0.0
    deadline += timeout
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # between the two renames of a swap, or no folder at all
            if time.monotonic() > min(deadline, missing_since + 1.0):
                raise IndexFormatError(f"{folder} is not a lookalike index: no such folder") \
                    from None
            time.sleep(0.005)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _wait(fd, path, max(0.0, deadline - time.monotonic()))  # closes fd if it gives up
        except BaseException:
            os.close(fd)
            raise
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        fcntl.flock(fd, fcntl.LOCK_UN)  # the folder was replaced meanwhile
        os.close(fd)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _wait(fd: int, path: Path, timeout: float) -> None:
    """Block in ``flock`` on a helper thread (only the main thread can be interrupted by an
    alarm) for at most ``timeout`` seconds. A wait given up closes ``fd`` once the helper
    has the lock, which releases it at once."""
    guard = threading.Lock()
    done = threading.Event()
    state: dict[str, Any] = {"abandoned": False, "error": None}

    def take() -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            state["error"] = e
        with guard:
            if state["abandoned"]:
                os.close(fd)
                return
            done.set()

    threading.Thread(target=take, name="lookalike-lock-wait", daemon=True).start()
    done.wait(timeout)
    with guard:
        if not done.is_set():
            state["abandoned"] = True
            raise LockTimeout(f"another writer has held {path} for over {timeout:.0f} s; "
                              "nothing was changed, try again when it is done")
    if state["error"] is not None:
        os.close(fd)
        raise state["error"]


def folder_of(path: str | os.PathLike) -> Path:
    return Path(path) / JOURNAL


class Cursor(NamedTuple):
    """How far a reader has read: the last change's number and the bytes of the log."""

    seq: int = 0
    offset: int = 0


def _legacy(path: str | os.PathLike) -> list[int]:
    """Numbers of the one-file-per-change entries of earlier versions, oldest first."""
    try:
        names = os.listdir(folder_of(path))
    except FileNotFoundError:
        return []
    return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())


def _legacy_entry(path: str | os.PathLike, seq: int, dim: int | None) -> Entry:
    folder = folder_of(path)
    name = f"{seq:012d}"
    try:
        change = json.loads((folder / f"{name}.json").read_bytes())
        vectors = None
        if isinstance(change, dict) and change.get("op") == "add" and dim is not None:
            vectors = np.load(folder / f"{name}.npy", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise IndexFormatError(f"index {path}: journal entry {name} is damaged: {e}") from None
    return _checked(path, Entry(seq, change, vectors), dim, name)


def _checked(path: str | os.PathLike, entry: Entry, dim: int | None, name: str) -> Entry:
    """``entry`` if it is a known operation with one vector of ``dim`` finite numbers per
    added item (``dim`` None: no vectors, a Milvus collection holds them)."""
    try:
        change = entry.change
        if not isinstance(change, dict) or change.get("op") not in OPS:
            raise ValueError(f"unknown op {change.get('op') if isinstance(change, dict) else change!r}")
        if change["op"] == "delete":
            entry.item_ids  # noqa: B018 (checks the key is there)
            return entry
        records = entry.records
        if not records or not all(isinstance(r, dict) and "item_id" in r for r in records):
            raise ValueError("an add without item records")
        if dim is None:
            return Entry(entry.seq, change)
        v = entry.vectors
        if v is not None and v.ndim == 1:
            v = v.reshape(1, -1)
        if v is None or v.shape != (len(records), dim) or v.dtype.kind != "f":
            raise ValueError(f"{len(records)} item(s) of {dim} dimensions, but the vectors are "
                             f"{None if v is None else (v.shape, str(v.dtype))}")
        if not np.isfinite(v).all():
            raise ValueError("the vectors hold NaN or infinity")
        return Entry(entry.seq, change, v)
    except (ValueError, KeyError, TypeError) as e:
        raise IndexFormatError(f"index {path}: journal {name} is damaged: {e}") from None


def _records(data: bytes) -> Iterator[tuple[int, int, bytes, bytes]]:
    """(number, end offset, JSON, vectors) of each whole record in ``data``; stops at the end
    or at a record cut short or still being written."""
    pos = 0
    while pos + HEADER.size <= len(data):
        magic, seq, jlen, vlen, crc = HEADER.unpack_from(data, pos)
        end = pos + HEADER.size + jlen + vlen
        if magic != MAGIC or end > len(data):
            return
        body = data[pos + HEADER.size:end]
        if zlib.crc32(body) != crc:
            return
        yield seq, end, bytes(body[:jlen]), bytes(body[jlen:])
        pos = end


def read(path: str | os.PathLike, cursor: Cursor, dim: int | None
         ) -> tuple[list[Entry], Cursor]:
    """The committed changes after ``cursor``, checked (a damaged one is named in an
    :class:`IndexFormatError`), and the cursor after them."""
    entries: list[Entry] = []
    seq, offset = cursor
    if offset == 0:  # earlier versions' files come before the log
        for n in _legacy(path):
            if n > seq:
                entries.append(_legacy_entry(path, n, dim))
                seq = n
    try:
        with open(folder_of(path) / LOG, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return entries, Cursor(seq, offset)
    last = 0
    for n, end, text, vec in _records(data):
        name = f"record {n} (byte {offset + last})"
        if n != seq + 1:
            raise IndexFormatError(f"index {path}: journal {name} follows change {seq}")
        try:
            change = json.loads(text)
            vectors = _vectors(vec) if vec and dim else None
        except ValueError as e:
            raise IndexFormatError(f"index {path}: journal {name} is damaged: {e}") from None
        entries.append(_checked(path, Entry(n, change, vectors), dim, name))
        seq, last = n, end
    return entries, Cursor(seq, offset + last)


def has_news(path: str | os.PathLike, cursor: Cursor) -> bool:
    """Whether changes may have been committed after ``cursor`` (one stat)."""
    try:
        return os.stat(folder_of(path) / LOG).st_size > cursor.offset
    except FileNotFoundError:
        return False


VECTORS = struct.Struct("<cI")  # type code, rows


def _vectors(data: bytes) -> np.ndarray:
    code, rows = VECTORS.unpack_from(data)
    if code not in (b"f", b"e"):
        raise ValueError(f"unknown vector type {code!r}")
    v = np.frombuffer(data, dtype=np.dtype(code.decode()), offset=VECTORS.size)
    if rows == 0 or len(v) % rows:
        raise ValueError(f"{len(v)} numbers do not make {rows} rows")
    return v.reshape(rows, -1)


def _encode(seq: int, change: dict[str, Any], vectors: np.ndarray | None) -> bytes:
    text = json.dumps(change, default=str).encode()
    vec = b""
    if vectors is not None:
        v = np.ascontiguousarray(vectors)
        if v.dtype not in (np.float32, np.float16):
            v = v.astype(np.float32)
        v = v.reshape(len(v), -1)
        vec = VECTORS.pack(v.dtype.char.encode(), len(v)) + v.tobytes()
    return HEADER.pack(MAGIC, seq, len(text), len(vec), zlib.crc32(text + vec)) + text + vec


def append(path: str | os.PathLike, cursor: Cursor, change: dict[str, Any],
           vectors: np.ndarray | None = None) -> Cursor:
    """Commit ``change`` as the change after ``cursor``: durable when this returns. The caller
    holds the folder's lock and has read every change up to ``cursor``; what follows it in
    the log can only be a record a crash cut short, and is cut off first."""
    return _append(path, cursor, [(change, vectors)])


def _append(path: str | os.PathLike, cursor: Cursor,
            changes: Sequence[tuple[dict[str, Any], np.ndarray | None]]) -> Cursor:
    """``append`` of several changes in order, written and synced at once."""
    folder = folder_of(path)
    log = folder / LOG
    new = not log.exists()
    if new:
        folder.mkdir(exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size < cursor.offset:
            raise IndexFormatError(f"index {path}: its journal is shorter than this process "
                                   "read it; nothing was changed")
        if size > cursor.offset:  # a torn record: nothing whole may follow what was read
            with open(log, "rb") as f:
                f.seek(cursor.offset)
                if next(_records(f.read()), None) is not None:
                    raise IndexFormatError(f"index {path}: its journal holds changes this "
                                           "process has not read; nothing was changed")
            os.ftruncate(fd, cursor.offset)
        record = b"".join(_encode(cursor.seq + 1 + i, change, vectors)
                          for i, (change, vectors) in enumerate(changes))
        os.lseek(fd, cursor.offset, os.SEEK_SET)
        view = memoryview(record)
        while view:
            view = view[os.write(fd, view):]
        os.fdatasync(fd)
    finally:
        os.close(fd)
    if new:
        fsync_dir(folder)
        fsync_dir(folder.parent)
    return Cursor(cursor.seq + len(changes), cursor.offset + len(record))


def write_file(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` durably and atomically (a unique temporary name renamed
    into place)."""
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(target.parent)


def fsync_dir(path: Path) -> None:
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


def history(path: str | os.PathLike, compacted: list[dict[str, Any]],
            upto: int | None = None) -> list[dict[str, Any]]:
    """The change log: ``compacted`` (the manifest's ``history``), then every committed change
    (up to number ``upto``), an add's item records left out."""
    entries, _ = read(path, Cursor(), None)
    return list(compacted) + [
        {k: v for k, v in e.change.items() if k not in ("items", "item")}
        for e in entries if upto is None or e.seq <= upto]


def carry(src: str | os.PathLike, dst: str | os.PathLike, after: int, dim: int | None) -> int:
    """Copy ``src``'s changes numbered above ``after`` into ``dst``'s journal, numbered from 1
    (a compaction carries the changes that landed while it ran). Returns how many."""
    entries, _ = read(src, Cursor(), dim)
    todo = [(e.change, e.vectors) for e in entries if e.seq > after]
    if todo:  # under the lock: one write and one sync for all of them
        _append(dst, Cursor(), todo)
    return len(todo)
