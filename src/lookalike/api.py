"""The Python facade: open an index folder, ask it for similar items, change it.

``Index.add``/``delete``/``compact`` are the one way an index folder changes after its build:
the CLI (``lookalike add``/``remove``/``compact``) and the server use them too. A change is
acknowledged (the call returns) once it is durable in the folder's journal and searchable in
this process; other processes see it on their next ``refresh`` (the server refreshes on its own).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from lookalike.build import BuildSummary, build_index
from lookalike.embedders import DEFAULT_EMBEDDER, Embedder, EmbedderSpec, create_embedder
from lookalike.embedders.quantize import INT8_MODEL
from lookalike.errors import (
    ImageError,
    IndexFormatError,
    ItemExistsError,
    LookalikeError,
    UnknownItemError,
)
from lookalike.ingest.catalog import (
    IMAGE_PATH,
    ITEM_ID,
    PRODUCT_ID,
    Catalog,
    read_catalog,
    resolve_image,
)
from lookalike.ingest.images import (
    DEFAULT_MAX_PIXELS,
    ImageSource,
    is_uri,
    load_model_views,
    parse_views,
)
from lookalike.ingest.preprocess import Preprocess
from lookalike.search.classifier import CategoryHead, load_head
from lookalike.search.neighbors import drop_self, write_neighbors
from lookalike.search.rerank import VOTE_POOL, Rerank, expand_queries, vote
from lookalike.search.topk import Where
from lookalike.store import journal
from lookalike.store.changes import Prepared, UpdateSummary, from_delta, from_rows, keep_photo
from lookalike.store.compaction import compact
from lookalike.store.folder import catch_up, generation, now, open_segments
from lookalike.store.segments import Segments, View

log = logging.getLogger(__name__)

#: Auto-compaction: an add or delete folds the journal in (in the background) once it holds
#: this many entries (opening replays every entry) ...
COMPACT_ENTRIES = 10_000
#: ... or once the items added and removed since the build pass this share of the built items
#: (a search then steps over the removed ones and searches the added ones apart) and this count.
COMPACT_SHARE = 0.10
COMPACT_MIN_ITEMS = 1_000


def _distinct(column: pd.Series) -> int:
    """How many distinct values ``column`` has; a list or an object (only a journal written
    before values were checked can hold one: lookalike.ingest.checks) counts by its text."""
    try:
        return int(column.nunique())
    except TypeError:
        return int(column.dropna().astype(str).nunique())


@dataclass(frozen=True)
class Hit:
    """One search result: the item's id, its cosine similarity to the query, its metadata."""

    item_id: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)


def pool_views(embeddings: np.ndarray) -> np.ndarray:
    """One photo's embedding from those of its views (n, d): the first when alone, else their
    normalised mean."""
    if len(embeddings) == 1:
        return embeddings[0]
    mean = embeddings.mean(axis=0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)


class Snapshot(NamedTuple):
    """The state one request reads from start to end: the segments and their view."""

    seg: Segments
    view: View

    def slot(self, item_id: object) -> int:
        return self.seg.slot(item_id, self.view)


class Index:
    """An opened index folder. ``Index.open(path)``, then ``similar``/``search``/``neighbors``,
    and ``add``/``delete``/``compact`` to change it."""

    def __init__(self, path: str | os.PathLike, model: str | None = None, *,
                 auto_compact: bool = True) -> None:
        self._seg = open_segments(path)
        self.path = self._seg.path
        if model is not None and model != self.spec.name:
            raise IndexFormatError(f"index {self.path} was built with {self.spec.name!r}, "
                                   f"not {model!r}; rebuild it or open it without a model")
        #: fold the journal in on its own once it passes the COMPACT_* thresholds
        self.auto_compact = auto_compact
        self._embedder: Embedder | None = None
        self._embedder_spec: EmbedderSpec | None = None
        self._head: CategoryHead | None = None
        self._write = threading.Lock()  # this process's writers, one at a time
        self._compactor: threading.Thread | None = None

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
        seg = self._seg
        return Snapshot(seg, seg.view)

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
        try:
            self.snapshot().slot(item_id)
        except UnknownItemError:
            return False
        return True

    @property
    def model(self) -> str:
        return self.spec.name

    @property
    def images_root(self) -> Path | str:
        root = self._seg.manifest["catalog"]["images_root"]
        return root if is_uri(root) else Path(root)

    def _slot(self, snap: Snapshot, item_id: object) -> int:
        try:
            return snap.slot(item_id)
        except UnknownItemError:
            skipped = {s["item_id"]: s["reason"] for s in snap.seg.manifest.get("skipped", [])}
            if str(item_id) in skipped:
                raise UnknownItemError(f"item {item_id!r} was skipped when the index was built: "
                                       f"{skipped[str(item_id)]}") from None
            raise

    def row(self, item_id: object) -> int:
        """The item's row in ``items`` and ``embeddings``."""
        snap = self.snapshot()
        return int(snap.seg.row_of_slot(snap.view)[self._slot(snap, item_id)])

    def _columns(self, seg: Segments) -> list[str]:
        return seg.attributes + ([PRODUCT_ID] if seg.manifest["catalog"].get("has_products")
                                 else [])

    def metadata(self, item_id: object) -> dict[str, Any]:
        snap = self.snapshot()
        return snap.seg.metadata(self._slot(snap, item_id), self._columns(snap.seg))

    def display_attributes(self, n: int = 5) -> list[str]:
        """The ``n`` attributes that tell items apart best, for tables and pictures: most
        distinct values first, leaving out near-unique ones such as names."""
        items = self.items
        counts = {a: _distinct(items[a]) for a in self.attributes}
        useful = [a for a in self.attributes if 1 < counts[a] <= max(2, len(items) // 2)]
        return sorted(useful, key=lambda a: -counts[a])[:n]

    def image_path(self, item_id: object) -> Path | str:
        snap = self.snapshot()
        rel = snap.seg.metadata(self._slot(snap, item_id), [IMAGE_PATH])[IMAGE_PATH]
        if rel is None:
            raise ImageError(f"item {item_id!r} was added with its vector alone: it has no photo")
        return resolve_image(self.images_root, rel)

    def vector(self, item_id: object) -> np.ndarray:
        snap = self.snapshot()
        return snap.seg.vector(self._slot(snap, item_id))

    @property
    def embedder(self) -> Embedder:
        spec = self.spec
        if self._embedder is not None and self._embedder_spec == spec:
            return self._embedder
        if spec.precision == "int8":
            model = self.path / self._seg.manifest.get("precision", {}).get("model", INT8_MODEL)
            if not model.is_file():
                raise IndexFormatError(f"index {self.path} was embedded with an int8 model, "
                                       f"and its {model.name} is missing; rebuild the index")
            embedder = Embedder(spec, model)
        else:
            embedder = create_embedder(spec.source or spec.name)
            if embedder.spec != spec:
                raise IndexFormatError(
                    f"index {self.path} was built with a different {spec.name!r} "
                    f"(weights {spec.weights}, input {spec.input_size}) than this "
                    f"lookalike provides ({embedder.spec.weights}, "
                    f"{embedder.spec.input_size}); rebuild the index")
        self._embedder, self._embedder_spec = embedder, spec
        return embedder

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
        try:
            views = self.views if views is None else parse_views(views)
        except ValueError as e:
            raise LookalikeError(str(e)) from None
        try:  # the index's Preprocess applies its fit too
            return load_model_views(image, self.spec.input_size, views, max_pixels=max_pixels,
                                    preprocess=self.preprocess or None)
        except ImageError as e:
            name = f"photo {image}" if isinstance(image, (str, os.PathLike)) else "the photo"
            raise type(e)(f"{name}: {e}") from None  # the same kind, named

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
        slot = self._slot(snap, item_id)
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

    def _ranked(self, snap: Snapshot, query: np.ndarray, k: int, where: Where | None,
                per_product: bool, exclude: Sequence[int], rerank: Rerank | str | None,
                known: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The search behind :meth:`search_vector` and :meth:`similar`: α-query expansion,
        then the category vote or classifier (lookalike.search.rerank), each through the index's own
        search; ``known``: the category to rank first, found already."""
        seg, v = snap
        r = self.reranking(rerank)

        def search(q: np.ndarray, n: int, w: Where | None, skip: Sequence[int]
                   ) -> tuple[np.ndarray, np.ndarray]:
            return seg.search(v, q, n, where=w, per_product=per_product, exclude=skip)

        if r.expand:
            found, scores = search(query, r.expand, where, exclude)
            query = expand_queries(np.asarray(query, np.float32)[None],
                                   seg.vectors(found)[None], scores[None], r.alpha)[0]
        column = self.category
        if not r.categorises or column is None or (where and column in where):
            return search(query, k, where, exclude)
        won = known
        if won is None:
            # one search of a pool: its first r.vote vote (or the classifier names the
            # category), and when it holds k items of the winner (in order, so the winner's
            # best k overall) it is the answer
            found, scores = search(query, max(r.vote, VOTE_POOL * k), where, exclude)
            named = self._classified(query[None], r)
            won, answer = self._from_pool(seg, found, scores, k, r,
                                          None if named is None else named[0])
            if won is None:
                return search(query, k, where, exclude)
            if answer is not None and not per_product:  # (per product: a product's best
                return answer  # photo of the category may be outside the pool)
        first = search(query, k, {**(where or {}), column: won}, exclude)
        if len(first[0]) >= k:
            return first
        rest = search(query, k, where, [*exclude, *first[0].tolist()])
        if per_product:  # one hit per product across both lists
            seen = {seg.product(s) for s in first[0].tolist()}
            keep = np.array([seg.product(s) not in seen for s in rest[0].tolist()], bool)
            rest = rest[0][keep], rest[1][keep]
        take = k - len(first[0])
        return (np.concatenate([first[0], rest[0][:take]]),
                np.concatenate([first[1], rest[1][:take]]))

    def _classified(self, queries: np.ndarray, r: Rerank) -> list[str] | None:
        """The classifier's category per query vector (n, d) when ``r`` asks for it, else
        None."""
        head = self.classifier if r.classify else None
        return None if head is None else head.predict(np.asarray(queries, np.float32))

    def _from_pool(self, seg: Segments, found: np.ndarray, scores: np.ndarray, k: int,
                   r: Rerank, named: str | None = None
                   ) -> tuple[str | None, tuple[np.ndarray, np.ndarray] | None]:
        """The category the first ``r.vote`` of a best-first pool vote for (None: no votes),
        or the one the classifier ``named``, and the pool's first ``k`` of it when the pool
        holds that many."""
        column = self.category
        keep = found >= 0
        found, scores = found[keep], scores[keep]
        names = seg.values(column, found.tolist())
        if named is not None:
            won_name = named
        else:
            values = sorted({str(x) for x in names[:r.vote] if x is not None})
            if not values:
                return None, None
            won_name = values[vote(np.array([[values.index(str(x)) if x is not None else -1
                                              for x in names[:r.vote]]]),
                                   scores[None, :r.vote])[0]]
        hit = np.flatnonzero([str(x) == won_name for x in names])
        return won_name, (found[hit[:k]], scores[hit[:k]]) if len(hit) >= k else None

    def similar_slots(self, snap: Snapshot, slots: Sequence[int], ks: Sequence[int],
                      rerank: Rerank | str | None = None) -> list[list[Hit]]:
        """Unfiltered similar items for many items of one snapshot in one pass (the server
        batches concurrent requests this way): each item itself left out, re-ranked by the
        category vote as :meth:`similar` does (query expansion is not batched)."""
        seg, v = snap
        r = self.reranking(rerank)
        if r.expand:
            raise LookalikeError("query expansion is not batched: use Index.similar")
        rows = np.asarray(slots, np.int64)
        k = min(max(ks), max(v.count - 1, 0))
        if k == 0:
            return [[] for _ in slots]
        if not r.categorises or self.category is None:
            found, scores = drop_self(*seg.search_many(v, seg.vectors(rows), k + 1), rows)
            return [self._hits(seg, f[:kk], s[:kk]) for f, s, kk in zip(found, scores, ks)]
        pool = min(max(r.vote, VOTE_POOL * k), v.count - 1)
        vectors = seg.vectors(rows)
        found, scores = drop_self(*seg.search_many(v, vectors, pool + 1), rows)
        named = self._classified(vectors, r) or [None] * len(rows)
        out = []
        for slot, f, s, kk, name in zip(rows.tolist(), found, scores, ks, named):
            won, answer = self._from_pool(seg, f, s, kk, r, name)
            if won is None:  # nobody voted: the plain list
                answer = f[:kk], s[:kk]
            elif answer is None:  # fewer than k of the winner in the pool
                answer = self._ranked(snap, seg.vector(slot), kk, None, False, [slot], r,
                                      known=won)
            out.append(self._hits(seg, *answer))
        return out

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
        if isinstance(items, Catalog):
            if photos is not None or vectors is not None:
                raise LookalikeError("a catalogue delta brings its own photos; give photos= "
                                     "or vectors= with rows instead")
            prepared = from_delta(self, items, batch_size, progress)
        else:
            prepared = from_rows(self, items, photos, vectors, max_pixels)
        if not prepared.records:
            return prepared.summary
        summary = self._commit_add(prepared, replace)
        self._maybe_compact()
        return summary

    def delete(self, item_ids: Sequence[object]) -> UpdateSummary:
        """Remove items by id, all or none: an unknown id changes nothing and is named."""
        wanted = list(dict.fromkeys(str(i) for i in item_ids))
        out = UpdateSummary(removed=wanted)
        with self._write, journal.locked(self.path):
            self._refresh_locked()
            seg = self._seg
            unknown = [i for i in wanted if i not in self]
            if unknown:
                raise UnknownItemError(
                    f"index {self.path} has no item(s) {', '.join(unknown[:20])}"
                    + (f" (and {len(unknown) - 20} more)" if len(unknown) > 20 else "")
                    + "; nothing was removed")
            if not wanted:
                return out
            change = {"op": "delete", "item_ids": wanted, "time": now(),
                      "counts": {"removed": len(wanted)}}
            # the entry first, then Milvus: a vector a crash leaves behind is never returned
            out.change = self._commit(seg, change, None)
            if seg.backend is not None:
                seg.backend.delete(wanted)
        self._maybe_compact()
        return out

    def compact(self) -> int:
        """Fold the journal into a new build of the folder (store.compact), then reopen it.
        Searches go on meanwhile, on the state before; changes made meanwhile are carried
        over. Returns the number of changes folded in."""
        with self._write, journal.locked(self.path):
            self._refresh_locked()
            seg, v = self.snapshot()
        n = compact(seg, v)
        self.refresh()
        return n

    def refresh(self) -> int:
        """Apply changes that other processes made to the folder since this one last looked
        (a replaced folder is read again). Cheap when there are none: a server calls it several
        times a second. Searches never wait for it. Returns the entries applied."""
        seg = self._seg
        gen = generation(self.path)
        if gen is None:  # mid-swap: the next call will see the new folder
            return 0
        if gen != seg.generation:
            new = open_segments(self.path)  # outside the lock: writers keep going meanwhile
            with self._write:
                if self._seg is seg:
                    self._seg = new
                return self._apply_new(locked=False) + new.applied
        if not journal.has_news(self.path, seg.cursor):
            return 0
        with self._write:
            return self._apply_new(locked=False)

    @property
    def compacting(self) -> bool:
        """Whether a compaction started by an add or delete is running."""
        return self._compactor is not None and self._compactor.is_alive()

    def wait_for_compaction(self, timeout: float | None = None) -> None:
        """Wait until a compaction started by an add or delete has finished."""
        t = self._compactor
        if t is not None:
            t.join(timeout)

    def _apply_new(self, locked: bool) -> int:
        """Read and apply the changes after the last one applied (this process's writer lock
        held; without the folder's lock the folder is checked not to have been replaced while
        they were read: they could be the new folder's)."""
        seg = self._seg
        gen = seg.generation
        return catch_up(seg, None if locked else lambda: generation(self.path) == gen)

    def _refresh_locked(self) -> None:
        """Bring this process up to date with the folder (both locks held: nobody changes it
        now), so that the next change follows the last one."""
        if generation(self.path) != self._seg.generation:
            self._seg = open_segments(self.path)
        elif journal.has_news(self.path, self._seg.cursor):
            self._apply_new(locked=True)

    def _maybe_compact(self) -> None:
        if not self.auto_compact or self.compacting:
            return
        seg, v = self.snapshot()
        changed = (v.n - seg.n0) + (v.n - v.count)
        if seg.applied < COMPACT_ENTRIES and \
                changed < max(COMPACT_MIN_ITEMS, COMPACT_SHARE * seg.n0):
            return

        def run() -> None:
            try:
                n = self.compact()
                log.info("index %s: %d change(s) folded in", self.path, n)
            except Exception as e:  # noqa: BLE001 (the changes stay in the journal)
                log.warning("index %s: compaction failed, the journal is kept: %s", self.path, e)

        # not a daemon: a process that ends waits for it rather than leave a half-written copy
        self._compactor = threading.Thread(target=run, name="lookalike-compact")
        self._compactor.start()

    def _commit_add(self, p: Prepared, replace: bool) -> UpdateSummary:
        out = p.summary
        with self._write, journal.locked(self.path):
            self._refresh_locked()
            seg = self._seg
            for r in p.records:
                (out.replaced if r[ITEM_ID] in self else out.added).append(r[ITEM_ID])
            if out.replaced and not replace:
                raise ItemExistsError(f"item(s) {', '.join(map(repr, out.replaced[:20]))} "
                                      "already exist; delete them first")
            for rec, data in zip(p.records, p.photos):
                if data is not None:  # under the lock: a compaction's swap carries it along
                    rec[IMAGE_PATH] = str(keep_photo(self.path, rec[ITEM_ID], data))
            change = {"op": "add", "items": p.records, "time": now(),
                      "counts": {"added": len(out.added), "replaced": len(out.replaced)}}
            if seg.backend is None:
                out.change = self._commit(seg, change, np.asarray(p.vectors, seg.storage))
            else:  # the collection first: an id the items table lacks is never returned
                seg.backend.upsert(pd.DataFrame(p.records), np.asarray(p.vectors, np.float32))
                out.change = self._commit(seg, change, None)
        return out

    def _commit(self, seg: Segments, change: dict[str, Any], vectors: np.ndarray | None) -> int:
        """Append ``change`` to the journal (both locks held) and apply it here; returns its
        number."""
        cursor = journal.append(self.path, seg.cursor, change, vectors)
        seg.apply([journal.Entry(cursor.seq, change, vectors)])
        seg.cursor = cursor
        return cursor.seq
