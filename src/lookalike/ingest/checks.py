"""What an index accepts, checked before anything is stored: item ids and metadata values.

One id rule for catalogues, ``lookalike add``, ``Index.add`` and ``POST /items``: an id is text
that is not only spaces, has no control character (tab, newline, …) and no ``/`` (it is a path
segment of ``/items/{id}``), and is at most :data:`MAX_ID_CHARS` characters long (:data:`ID_RULE`;
the API's schema says the same with :data:`ID_PATTERN`).

A metadata value must fit its column as the catalogue built it: text for text columns, a number
for numeric ones (a whole number for integer ones), ``true``/``false`` for boolean ones, or
empty (None). Lists, objects and text longer than :data:`MAX_TEXT_CHARS` are refused. A value
that does not fit would otherwise sit in the journal and break every later read or compaction.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from lookalike.errors import LookalikeError

MAX_ID_CHARS = 256
_ALLOWED = r"[^/\x00-\x1f\x7f-\x9f]"
#: the id rule as a regular expression (with the length limit beside it)
ID_PATTERN = rf"^{_ALLOWED}*[^/\s\x00-\x1f\x7f-\x9f]{_ALLOWED}*$"
ID_RULE = (f"An item id: text that is not only spaces, without '/' or control characters, at "
           f"most {MAX_ID_CHARS} characters.")
MAX_TEXT_CHARS = 4096
KINDS = ("text", "integer", "number", "bool")
INT64 = (-(2**63), 2**63 - 1)


def shown(value: object, width: int = 40) -> str:
    """``value`` for a message: repr, cut to ``width`` characters."""
    text = repr(value)
    return text if len(text) <= width else f"{text[:width]}…({len(str(value)):,} characters)"


def id_problem(item_id: object) -> str | None:
    """Why ``item_id`` cannot be an item id, or None when it can."""
    if not isinstance(item_id, str):
        return f"is {type(item_id).__name__}, not text"
    if not item_id.strip():
        return "is empty"
    if len(item_id) > MAX_ID_CHARS:
        return f"is {len(item_id):,} characters long (at most {MAX_ID_CHARS})"
    if "/" in item_id:
        return "contains '/'"
    if any(unicodedata.category(c) == "Cc" for c in item_id):
        return "contains a control character (tab, newline, …)"
    return None


def check_item_id(item_id: object, where: str = "") -> str:
    """``item_id`` when it follows the id rule, else a LookalikeError naming it."""
    problem = id_problem(item_id)
    if problem:
        raise LookalikeError(f"item id {shown(item_id)}{' ' + where if where else ''} {problem}. "
                             f"{ID_RULE}")
    return str(item_id)


def column_kinds(items: pd.DataFrame, attributes: Sequence[str]) -> dict[str, str]:
    """What each attribute column holds, from the built items' types: text, integer, number
    or bool (a numeric column with no value at all counts as text: an empty catalogue column)."""
    kinds = {}
    for a in attributes:
        col = items[a]
        if pd.api.types.is_bool_dtype(col.dtype):
            kinds[a] = "bool"
        elif pd.api.types.is_integer_dtype(col.dtype):
            kinds[a] = "integer"
        elif pd.api.types.is_numeric_dtype(col.dtype) and col.notna().any():
            kinds[a] = "number"
        else:
            kinds[a] = "text"
    return kinds


def value_problem(value: object, kind: str) -> str | None:
    """Why ``value`` cannot go into a column of ``kind``, or None when it can."""
    if value is None:
        return None
    if isinstance(value, (Mapping, list, tuple, set)):
        return f"is a {type(value).__name__}; values are single texts or numbers"
    if kind == "text":
        if not isinstance(value, str):
            return f"is {type(value).__name__}, and the column holds text"
        if len(value) > MAX_TEXT_CHARS:
            return f"is {len(value):,} characters long (at most {MAX_TEXT_CHARS:,})"
        return None
    if kind == "bool":
        return None if isinstance(value, (bool, np.bool_)) else \
            f"is {type(value).__name__}, and the column holds true/false"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return f"is {type(value).__name__}, and the column holds numbers"
    if isinstance(value, (int, np.integer)) and not INT64[0] <= int(value) <= INT64[1]:
        return "is outside the 64-bit integer range"
    if not math.isfinite(float(value)):
        return "is not a finite number"
    if kind == "integer" and float(value) != int(value):
        return "is not a whole number, and the column holds whole numbers"
    if kind == "integer" and not INT64[0] <= int(value) <= INT64[1]:
        return "is outside the 64-bit integer range"
    return None


def checked_value(column: str, value: Any, kind: str, item_id: str) -> Any:
    """``value`` as it is stored (a whole float of an integer column as int), or a
    LookalikeError naming the item, the column and the problem."""
    problem = value_problem(value, kind)
    if problem:
        raise LookalikeError(f"item {shown(item_id)}: {column} {shown(value)} {problem}")
    if kind == "integer" and value is not None:
        return int(value)
    return value


def checked_metadata(record: Mapping[str, Any], kinds: Mapping[str, str], item_id: str
                     ) -> dict[str, Any]:
    """Each attribute of ``record`` checked against its column (``kinds``)."""
    return {a: checked_value(a, record.get(a), kind, item_id) for a, kind in kinds.items()}
