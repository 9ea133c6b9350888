"""The server's index: an :class:`~lookalike.api.Index` that follows the folder.

Changes go through ``Index.add``/``delete`` (the one mutation path); a watcher thread calls
``Index.refresh`` a few times a second, so items that other processes add or remove
(``lookalike add``, another server) are served without a restart. Requests take a snapshot
once and read it to the end, so a search never sees half a change and never waits for one.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from lookalike.api import Index

log = logging.getLogger(__name__)
WATCH_INTERVAL = 0.2  # seconds between looks at the folder for others' changes


class LiveIndex:
    def __init__(self, path: str | Path, interval: float = WATCH_INTERVAL) -> None:
        self.index = Index.open(path)
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, args=(interval,),
                                         name="lookalike-watch", daemon=True)
        self._watcher.start()

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.index.refresh()
            except Exception as e:  # noqa: BLE001 (a damaged entry: keep serving, say so)
                log.warning("index %s: could not apply others' changes: %s", self.index.path, e)

    def close(self) -> None:
        self._stop.set()
        self._watcher.join(timeout=5)
        self.index.wait_for_compaction()

    def add(self, item_id: str, photo: bytes, metadata: dict[str, Any] | None = None,
            product_id: str | None = None, *, max_pixels: int) -> None:
        """Embed ``photo``, keep it in the index folder and add the item. Raises ImageError
        for a photo that cannot be used, ItemExistsError for a taken id."""
        row = {**(metadata or {}), "item_id": item_id, "product_id": product_id}
        self.index.add([row], photos=[photo], replace=False, max_pixels=max_pixels)

    def delete(self, item_id: str) -> None:
        """Remove an item (its photo stays on disk). Raises UnknownItemError."""
        self.index.delete([item_id])


__all__ = ["LiveIndex"]
