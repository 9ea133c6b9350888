"""Temporary files and folders that a killed process leaves behind, and their removal.

Every temporary name a writer makes carries its process id (``.NAME.tmp-PID-…``, journal files
``.NAME.PID-….tmp``), and a build's temporary folder holds a lock file its writer keeps locked
(``flock``) while it writes. The next open, build or compaction of that folder removes what it
can prove dead: no process with that id here, and (for a folder) its lock free, which also
holds for a writer in another PID namespace of this machine. Names without a pid are left
alone.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one we may not signal counts)."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


LOCK = ".writer.lock"


class WriterLock:
    """A lock file in a temporary folder, locked while its writer works in it (released, and
    the file removed, before the folder becomes an index)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK
        self.fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        """Remove the lock file and let go of it (idempotent)."""
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None


def _writer_gone(p: Path) -> bool:
    """For a folder with a lock file: whether nobody holds that lock."""
    lock = p / LOCK
    if not p.is_dir() or not lock.exists():
        return True
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def remove_dead(folder: Path, pattern: re.Pattern[str]) -> list[Path]:
    """Remove the entries of ``folder`` whose name matches ``pattern`` (its ``pid`` group: the
    writer) and whose writer is gone; returns what was removed."""
    gone = []
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:
        return gone
    for p in entries:
        m = pattern.fullmatch(p.name)
        if not m or alive(int(m.group("pid"))) or not _writer_gone(p):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except FileNotFoundError:
            continue
        log.info("removed %s, left by process %s", p, m.group("pid"))
        gone.append(p)
    return gone


def build_tmp_prefix(out: Path) -> str:
    """The prefix of a build's temporary folder beside ``out`` (mkdtemp adds the rest)."""
    return f".{out.name}.tmp-{os.getpid()}-"


def remove_dead_builds(out: Path) -> list[Path]:
    """Temporary folders of builds and compactions of ``out`` whose process is gone."""
    return remove_dead(out.parent, re.compile(rf"\.{re.escape(out.name)}\.tmp-(?P<pid>\d+)-.+"))


def remove_dead_files(folder: Path) -> list[Path]:
    """Temporary files of :func:`temp_file` in ``folder`` whose process is gone."""
    return remove_dead(folder, re.compile(r"\..+\.(?P<pid>\d+)-[0-9a-f]+\.tmp"))
