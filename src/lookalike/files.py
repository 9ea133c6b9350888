"""Writing files so that readers never see half of one: every writer writes a temporary
file beside its target, named after its process, and renames it onto the target when complete
(lookalike.store.litter removes what a killed writer leaves).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


def temp_file(target: Path, tag: str) -> Path:
    """A temporary name beside ``target`` that says which process writes it."""
    return target.with_name(f".{target.name}.{os.getpid()}-{tag}.tmp")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``target`` to write the whole file to; renamed onto ``target``
    when the block ends, removed if it fails: readers see the old file or the new one, never
    half of one (a killed writer's leftover is removed by :func:`remove_dead_files`)."""
    target = Path(target)
    tmp = temp_file(target, uuid.uuid4().hex[:8])
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
