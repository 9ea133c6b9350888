"""The Python facade: open an index folder, ask it for similar items, change it.

``Index.add``/``delete``/``compact`` are the one way an index folder changes after its build:
the CLI (``lookalike add``/``remove``/``compact``) and the server use them too. A change is
acknowledged (the call returns) once it is durable in the folder's journal and searchable in
this process; other processes see it on their next ``refresh`` (the server refreshes on its own).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lookalike.build import BuildSummary, build_index
from lookalike.embed.local import pool_views
from lookalike.embedders import DEFAULT_EMBEDDER, Embedder, EmbedderSpec, index_embedder
from lookalike.errors import ImageError, IndexFormatError, LookalikeError, UnknownItemError
from lookalike.ingest.catalog import (
    IMAGE_PATH,
    ITEM_ID,
    PRODUCT_ID,
    Catalog,
    read_catalog,
    resolve_image,
    telling_attributes,
)
from lookalike.ingest.images import (
    DEFAULT_MAX_PIXELS,
    ImageSource,
    is_uri,
    parse_views,
    query_views,
)
from lookalike.ingest.preprocess import Preprocess
from lookalike.search.classifier import CategoryHead, load_head
from lookalike.search.neighbors import write_neighbors
from lookalike.search.rerank import Rerank
from lookalike.search.topk import Where
from lookalike.store.changes import UpdateSummary, prepare
from lookalike.store.live import LiveFolder, Snapshot
from lookalike.store.reranked import Classify, ranked, ranked_many
from lookalike.store.segments import Segments


@dataclass(frozen=True)
class Hit:
    """One search result: the item's id, its cosine similarity to the query, its metadata."""

    item_id: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)


class Index:
    """An opened index folder. ``Index.open(path)``, then ``similar``/``search``/``neighbors``,
    and ``add``/``delete``/``compact`` to change it."""

    def __init__(self, path: str | os.PathLike, model: str | None = None, *,
                 auto_compact: bool = True) -> None:
        self._live = LiveFolder(path, auto_compact)
        self.path = self._live.path
        if model is not None and model != self.spec.name:
            raise IndexFormatError(f"index {self.path} was built with {self.spec.name!r}, "
                                   f"not {model!r}; rebuild it or open it without a model")
        self._embedder: Embedder | None = None
        self._embedder_spec: EmbedderSpec | None = None
        self._head: CategoryHead | None = None

    @classmethod
    def open(cls, path: str | os.PathLike, model: str | None = None, *,
             auto_compact: bool = True) -> Index:
        """Open an index folder; with ``model``, refuse one built by another embedder."""
        return cls(path, model, auto_compact=auto_compact)

    @staticmethod
    def build(catalog: Catalog, out: str | os.PathLike, *, model: str = DEFAULT_EMBEDDER,
              **options: Any) -> BuildSummary:
        return build_index(catalog, out, model=model, **options)

    # --- what the index holds ----------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The state a request reads from start to end (changes made meanwhile not seen)."""
        return self._live.snapshot()

    @property
    def _seg(self) -> Segments:
        return self._live.seg

    @property
    def auto_compact(self) -> bool:
        """Whether an add or delete folds the journal in once it grows (store.live)."""
        return self._live.auto_compact

    @property
    def manifest(self) -> dict[str, Any]:
        """The folder's manifest, its item count as of now (``counts.items``; at the last build
        or compaction: ``counts.built``) and, when the journal holds changes, how many
        (``journal``)."""
        seg, v = self.snapshot()
        m = dict(seg.manifest)
        m["counts"] = {**m["counts"], "items": v.count, "built": m["counts"]["items"]}
        if seg.applied:
            m["journal"] = {"changes": seg.applied}
        return m

    @property
    def spec(self) -> EmbedderSpec:
        return EmbedderSpec.from_dict(self._seg.manifest["embedder"])

    @property
    def attributes(self) -> list[str]:
        return list(self._seg.attributes)

    @property
    def category(self) -> str | None:
        """The catalogue's category column (what the category vote predicts), if it has one."""
        return self._seg.manifest["catalog"].get("columns", {}).get("category")

    @property
    def color(self) -> str | None:
        """The catalogue's colour column, if it has one (training uses it)."""
        return self._seg.manifest["catalog"].get("columns", {}).get("color")

    @property
    def rerank(self) -> Rerank:
        """The re-ranking searches run unless told otherwise (chosen at build)."""
        return Rerank.from_dict(self._seg.manifest.get("search", {}).get("rerank"))

    @property
    def classifier(self) -> CategoryHead | None:
        """The category classifier of the index's model (``lookalike train`` fits one; the
        ``classify`` re-ranking uses it), if the index was built with one."""
        digest = self._seg.manifest.get("search", {}).get("classifier")
        if digest is None:
            return None
        if self._head is None:
            self._head = load_head(self.spec.source, digest)
        return self._head

    @property
    def preprocess(self) -> Preprocess:
        """The steps every photo went through before embedding; queries get the same."""
        return Preprocess.from_dict(self._seg.manifest.get("preprocess"))

    @property
    def items(self) -> pd.DataFrame:
        """The items, one row each (rows numbered from 0; row i is ``embeddings`` row i)."""
        seg, v = self.snapshot()
        return seg.items(v)

    @property
    def embeddings(self) -> Any:
        """The items' vectors, row i = ``items`` row i (memory-mapped when unchanged)."""
        seg, v = self.snapshot()
        return seg.embeddings(v)

    @property
    def vector_index(self) -> Any:
        """What whole-catalogue work searches, answering with ``items`` rows: the faiss index
        over ``embeddings`` (IVF-PQ with exact re-ranking), or the Milvus search."""
        seg, v = self.snapshot()
        return seg.vector_index(v)

    @property
    def backend(self) -> Any:
        """The Milvus collection the vectors live in (None: they are in the folder)."""
        return self._seg.backend

    def __len__(self) -> int:
        return self._seg.view.count

    def __contains__(self, item_id: object) -> bool:
        return self._live.holds(item_id)

    @property
    def model(self) -> str:
        return self.spec.name

    @property
    def images_root(self) -> Path | str:
        root = self._seg.manifest["catalog"]["images_root"]
        return root if is_uri(root) else Path(root)

    def row(self, item_id: object) -> int:
        """The item's row in ``items`` and ``embeddings``."""
        snap = self.snapshot()
        return int(snap.seg.row_of_slot(snap.view)[snap.slot(item_id)])

    def _columns(self, seg: Segments) -> list[str]:
        return seg.attributes + ([PRODUCT_ID] if seg.manifest["catalog"].get("has_products")
                                 else [])

    def metadata(self, item_id: object) -> dict[str, Any]:
        snap = self.snapshot()
        return snap.seg.metadata(snap.slot(item_id), self._columns(snap.seg))

    def display_attributes(self, n: int = 5) -> list[str]:
        """The ``n`` attributes that tell items apart best, for tables, pictures and filters
        (lookalike.ingest.catalog.telling_attributes)."""
        return telling_attributes(self.items, self.attributes, n)

    def image_path(self, item_id: object) -> Path | str:
        snap = self.snapshot()
        rel = snap.seg.metadata(snap.slot(item_id), [IMAGE_PATH])[IMAGE_PATH]
        if rel is None:
            raise ImageError(f"item {item_id!r} was added with its vector alone: it has no photo")
        return resolve_image(self.images_root, rel)

    def vector(self, item_id: object) -> np.ndarray:
        snap = self.snapshot()
        return snap.seg.vector(snap.slot(item_id))

    @property
    def embedder(self) -> Embedder:
        """The model the index was embedded with (its int8 copy for an int8 index)."""
        spec = self.spec
        if self._embedder is None or self._embedder_spec != spec:
            self._embedder = index_embedder(self.path, spec,
                                            self._seg.manifest.get("precision", {}))
            self._embedder_spec = spec
        return self._embedder

    @property
    def views(self) -> tuple[str, ...]:
        """The extra views a query photo is embedded from (test-time augmentation, chosen at
        build; images.VIEWS), averaged with the photo itself."""
        return parse_views(self._seg.manifest.get("search", {}).get("views"))

    def embed(self, image: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS,
              views: Sequence[str] | str | None = None) -> np.ndarray:
        """The embedding of one photo, preprocessed as the index's catalogue was, averaged
        over ``views`` of it (default: the index's own, :attr:`views`)."""
        return pool_views(self.embedder(self.model_input(image, max_pixels=max_pixels,
                                                         views=views)))

    def model_input(self, image: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                    views: Sequence[str] | str | None = None) -> np.ndarray:
        """What :meth:`embed` hands the model: uint8 (1 + len(views), size, size, 3), the
        photo preprocessed as the index's catalogue was and each of its views (the server
        decodes photos in parallel and runs the model on several at once)."""
        return query_views(image, self.spec.input_size, self.views if views is None else views,
                           max_pixels=max_pixels, preprocess=self.preprocess or None)

    # --- searching -----------------------------------------------------------------------------

    def _hits(self, seg: Segments, slots: np.ndarray, scores: np.ndarray) -> list[Hit]:
        cols = self._columns(seg)
        return [Hit(seg.ids[s], float(sc), seg.metadata(s, cols))
                for s, sc in zip(slots.tolist(), scores.tolist()) if s >= 0]

    def search_vector(self, vector: np.ndarray, k: int = 10, *, where: Where | None = None,
                      per_product: bool = False, exclude: Sequence[object] = (),
                      rerank: Rerank | str | None = None) -> list[Hit]:
        """Nearest items to an embedding (cosine similarity, best first), re-ranked as
        ``rerank`` says (default: as the index was built to, :attr:`rerank`)."""
        snap = self.snapshot()
        slots = []
        for e in exclude:
            try:
                slots.append(snap.slot(e))
            except UnknownItemError:
                pass
        return self._hits(snap.seg, *self._ranked(snap, vector, k, where, per_product, slots,
                                                  rerank))

    def similar(self, item_id: object, k: int = 10, *, where: Where | None = None,
                per_product: bool = False, rerank: Rerank | str | None = None) -> list[Hit]:
        """Items that look like ``item_id`` (itself excluded; with ``per_product`` its whole
        product excluded and one hit per product), re-ranked as in :meth:`search_vector`."""
        snap = self.snapshot()
        seg = snap.seg
        slot = snap.slot(item_id)
        return self._hits(seg, *self._ranked(snap, seg.vector(slot), k, where, per_product,
                                             [slot], rerank))

    def reranking(self, rerank: Rerank | str | None = None) -> Rerank:
        """The re-ranking a search asking for ``rerank`` runs (None: the index's own);
        raises when it needs a column the index lacks."""
        r = self.rerank if rerank is None else \
            rerank if isinstance(rerank, Rerank) else Rerank.parse(rerank)
        if r.categorises and self.category is None:
            raise LookalikeError(f"index {self.path} has no category column: a category cannot "
                                 "be ranked first (build with one, or re-rank without vote or "
                                 "classify)")
        if r.classify and self.classifier is None:
            raise LookalikeError(f"index {self.path} has no category classifier: build it with "
                                 "a model from lookalike train (or re-rank with vote)")
        return r

    def similar_slots(self, snap: Snapshot, slots: Sequence[int], ks: Sequence[int],
                      rerank: Rerank | str | None = None) -> list[list[Hit]]:
        """Unfiltered similar items for many items of one snapshot in one pass (the server
        batches concurrent requests this way): each item itself left out, re-ranked by the
        category vote as :meth:`similar` does (query expansion is not batched)."""
        r = self.reranking(rerank)
        return [self._hits(snap.seg, *found)
                for found in ranked_many(snap, slots, ks, r, self.category, self._classify(r))]

    def _ranked(self, snap: Snapshot, query: np.ndarray, k: int, where: Where | None,
                per_product: bool, exclude: Sequence[int], rerank: Rerank | str | None
                ) -> tuple[np.ndarray, np.ndarray]:
        r = self.reranking(rerank)
        return ranked(snap, query, k, where, per_product, exclude, r, self.category,
                      self._classify(r))

    def _classify(self, r: Rerank) -> Classify | None:
        """The classifier's category per query vector when ``r`` asks for it."""
        head = self.classifier if r.classify else None
        return None if head is None else \
            (lambda queries: head.predict(np.asarray(queries, np.float32)))

    def search(self, image: ImageSource, k: int = 10, *, where: Where | None = None,
               per_product: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
               rerank: Rerank | str | None = None, views: Sequence[str] | str | None = None
               ) -> list[Hit]:
        """Items that look like an uploaded photo (path, bytes, file object or PIL image),
        embedded as :meth:`embed` does and re-ranked as in :meth:`search_vector`."""
        return self.search_vector(self.embed(image, max_pixels=max_pixels, views=views), k,
                                  where=where, per_product=per_product, rerank=rerank)

    def neighbors(self, out: str | os.PathLike, k: int = 10, **options: Any) -> int:
        """Write the top-k neighbours of every item to a .parquet/.csv/.jsonl file."""
        seg, v = self.snapshot()
        return write_neighbors(seg.vector_index(v), seg.embeddings(v),
                               seg.items(v)[ITEM_ID].to_numpy(), out, k, **options)

    # --- changing ------------------------------------------------------------------------------

    def read_delta(self, path: str | os.PathLike, images: str | os.PathLike | None = None, *,
                   allow_outside_images: bool = False) -> Catalog:
        """A catalogue delta, read with the columns the index was built with."""
        cols = self._seg.manifest["catalog"]["columns"]
        return read_catalog(path, images, id_column=cols["id"], image_column=cols["image"],
                            product_column=cols.get("product"), attributes=self.attributes,
                            category_column=cols.get("category"),
                            color_column=cols.get("color"),
                            allow_outside_images=allow_outside_images)

    def add(self, items: Catalog | str | os.PathLike | pd.DataFrame | Sequence[Mapping[str, Any]],
            photos: Sequence[ImageSource] | None = None, *, vectors: np.ndarray | None = None,
            images: str | os.PathLike | None = None, replace: bool = True,
            batch_size: int = 32, progress: bool = False,
            max_pixels: int = DEFAULT_MAX_PIXELS,
            allow_outside_images: bool = False) -> UpdateSummary:
        """Add items, or replace those with the same id; one journal entry for all of them.

        ``items`` is either a catalogue delta (a :class:`Catalog`, or the path of one, read
        with the index's columns; ``images``: the folder its photo paths are relative to): new
        items and those whose photo or metadata changed are embedded as the catalogue was,
        unchanged rows left alone, unreadable photos skipped and reported. Or rows (a table or
        mappings with ``item_id``, optional ``product_id`` and attribute values) with one of
        ``photos`` (paths, bytes, file objects or PIL images, one per row; bytes are kept in
        the folder so the server can show them) or ``vectors`` (one embedding per row, from
        this index's model); a photo that cannot be used fails the whole call. With
        ``replace=False`` an id the index holds already fails it too (ItemExistsError).

        Returns when the change is durable and searchable here."""
        if isinstance(items, (str, os.PathLike)):
            items = self.read_delta(items, images, allow_outside_images=allow_outside_images)
        prepared = prepare(self, items, photos, vectors, batch_size, progress, max_pixels)
        if not prepared.records:
            return prepared.summary
        return self._live.add(prepared, replace)

    def delete(self, item_ids: Sequence[object]) -> UpdateSummary:
        """Remove items by id, all or none: an unknown id changes nothing and is named."""
        return self._live.delete(list(dict.fromkeys(str(i) for i in item_ids)))

    def compact(self) -> int:
        """Fold the journal into a new build of the folder (store.compaction), then reopen it.
        Searches go on meanwhile, on the state before; changes made meanwhile are carried
        over. Returns the number of changes folded in."""
        return self._live.compact()

    def refresh(self) -> int:
        """Apply changes that other processes made to the folder since this one last looked
        (a replaced folder is read again). Cheap when there are none: a server calls it several
        times a second. Searches never wait for it. Returns the entries applied."""
        return self._live.refresh()

    @property
    def compacting(self) -> bool:
        """Whether a compaction started by an add or delete is running."""
        return self._live.compacting

    def wait_for_compaction(self, timeout: float | None = None) -> None:
        """Wait until a compaction started by an add or delete has finished."""
        self._live.wait_for_compaction(timeout)
