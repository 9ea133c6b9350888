"""Progress bars: on a terminal only.

A bar redrawn into a redirected log leaves hundreds of carriage-return updates in it (a
9,583-photo build); so a bar shows when it is asked for and stderr is a terminal, and ``-q``
(``progress=False``) silences it everywhere.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int, *, unit: str, desc: str, show: bool) -> tqdm:
    """A tqdm bar on stderr, drawn only when ``show`` and stderr is a terminal."""
    return tqdm(total=total, unit=unit, desc=desc, disable=not (show and on_terminal()))


def on_terminal() -> bool:
    """Whether stderr is a terminal (where progress is drawn)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed
        return False
