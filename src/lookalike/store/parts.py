"""What one search sees of an index that changes: its parts (the sealed segment, the indexed
part of the growing one), each with its tombstones, and the View that holds them, published
whole and never changed after.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np


class Part(NamedTuple):
    """Slots [lo, hi) in a vector index that answers with offsets from ``lo``: the sealed
    segment, or the indexed part of the growing one."""

    index: Any
    lo: int
    hi: int
    bits: np.ndarray | None  # packed alive bits of those slots; None: all alive
    count: int  # alive slots among them
    vectors: Any  # their vectors, row 0 = slot lo (None: Milvus holds them)


@dataclasses.dataclass(frozen=True, eq=False)
class View:
    """The state one search sees. Nothing in it changes once published."""

    seq: int  # the last journal entry applied
    n: int  # slots: built and added
    alive: np.ndarray  # bool per slot
    count: int  # alive slots
    parts: tuple[Part, ...]  # indexed: the sealed segment, then the growing one's indexed slots

    @property
    def indexed(self) -> int:
        """Slots below this are in ``parts``; the rest are searched exactly."""
        return self.parts[-1].hi


def kill(part: Part, slots: Sequence[int], alive: np.ndarray) -> Part:
    """``part`` with ``slots`` (those of it still alive in ``alive``) marked removed."""
    gone = sorted({s for s in slots if part.lo <= s < part.hi and alive[s]})
    if not gone:
        return part
    bits = np.packbits(np.ones(part.hi - part.lo, bool), bitorder="little") \
        if part.bits is None else part.bits.copy()
    for s in gone:
        o = s - part.lo
        bits[o >> 3] &= ~np.uint8(1 << (o & 7))
    bits.setflags(write=False)
    return part._replace(bits=bits, count=part.count - len(gone))
