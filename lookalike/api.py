"""The Python facade: open an index folder and ask it for similar items."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .build import BuildSummary, build_index
from .catalog import IMAGE_PATH, ITEM_ID, PRODUCT_ID, Catalog, resolve_image
from .embedders import DEFAULT_EMBEDDER, Embedder, EmbedderSpec, create_embedder
from .errors import ImageError, IndexFormatError, UnknownItemError
from .images import DEFAULT_MAX_PIXELS, ImageSource, is_uri, load_model_input
from .milvus import Filter
from .neighbors import write_neighbors
from .preprocess import Preprocess
from .quantize import INT8_MODEL
from .search import Where, filter_mask, top_k
from .store import StoredIndex, changed, read_index


@dataclass(frozen=True)
class Hit:
    """One search result: the item's id, its cosine similarity to the query, its metadata."""

    item_id: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)


def _plain(v: Any) -> Any:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    return v.item() if isinstance(v, np.generic) else v


class Index:
    """An opened index folder. ``Index.open(path)``, then ``similar``/``search``/``neighbors``."""

    def __init__(self, path: str | os.PathLike, model: str | None = None, *,
                 stored: StoredIndex | None = None) -> None:
        stored = stored or read_index(path)
        self.path = stored.path
        self.manifest = stored.manifest
        self.spec = EmbedderSpec.from_dict(self.manifest["embedder"])
        if model is not None and model != self.spec.name:
            raise IndexFormatError(f"index {self.path} was built with {self.spec.name!r}, "
                                   f"not {model!r}; rebuild it or open it without a model")
        self.items = stored.items
        self.embeddings = stored.embeddings
        #: the faiss index over ``embeddings`` (row i = ``items`` row i), or the Milvus search
        self.vector_index = stored.faiss_index
        #: the Milvus collection the vectors live in (None: they are in the folder)
        self.backend = stored.backend
        self.attributes: list[str] = list(self.manifest["catalog"]["attributes"])
        self._ids = [str(v) for v in self.items[ITEM_ID].tolist()]
        self._row_of = {v: i for i, v in enumerate(self._ids)}
        self._products = self.items[PRODUCT_ID].astype("string").to_numpy(dtype=object)
        #: the steps every photo went through before embedding; queries get the same
        self.preprocess = Preprocess.from_dict(self.manifest.get("preprocess"))
        self._embedder: Embedder | None = None
        self._meta: list[dict[str, Any]] | None = None

    def with_items(self, items: pd.DataFrame, embeddings: np.ndarray | None) -> Index:
        """A new Index over other items and vectors (same folder, model and embedder): how a
        live index changes without touching the one that queries are reading. With the
        Milvus backend the collection already holds the vectors (``embeddings`` unused)."""
        new = Index(self.path, stored=changed(self.path, self.manifest, items, embeddings,
                                              self.backend))
        new._embedder = self._embedder
        return new

    @classmethod
    def open(cls, path: str | os.PathLike, model: str | None = None) -> Index:
        """Open an index folder; with ``model``, refuse one built by another embedder."""
        return cls(path, model)

    @staticmethod
    def build(catalog: Catalog, out: str | os.PathLike, *, model: str = DEFAULT_EMBEDDER,
              **options: Any) -> BuildSummary:
        return build_index(catalog, out, model=model, **options)

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, item_id: object) -> bool:
        return str(item_id) in self._row_of

    @property
    def model(self) -> str:
        return self.spec.name

    @property
    def images_root(self) -> Path | str:
        root = self.manifest["catalog"]["images_root"]
        return root if is_uri(root) else Path(root)

    def row(self, item_id: object) -> int:
        try:
            return self._row_of[str(item_id)]
        except KeyError:
            skipped = {s["item_id"]: s["reason"] for s in self.manifest.get("skipped", [])}
            if str(item_id) in skipped:
                raise UnknownItemError(f"item {item_id!r} was skipped when the index was built: "
                                       f"{skipped[str(item_id)]}") from None
            raise UnknownItemError(f"unknown item id {item_id!r} (the index has "
                                   f"{len(self)} items)") from None

    def metadata(self, item_id: object) -> dict[str, Any]:
        return self._metadata(self.row(item_id))

    def _metadata(self, row: int) -> dict[str, Any]:
        if self._meta is None:  # built once: a search answers in microseconds, not per-row pandas
            cols = self.attributes + ([PRODUCT_ID] if self.manifest["catalog"].get("has_products")
                                      else [])
            values = [[_plain(v) for v in self.items[c].tolist()] for c in cols]
            self._meta = [dict(zip(cols, vals)) for vals in zip(*values)] if cols else \
                [{} for _ in range(len(self.items))]
        return dict(self._meta[row])

    def display_attributes(self, n: int = 5) -> list[str]:
        """The ``n`` attributes that tell items apart best, for tables and pictures: most
        distinct values first, leaving out near-unique ones such as names."""
        counts = {a: self.items[a].nunique() for a in self.attributes}
        useful = [a for a in self.attributes if 1 < counts[a] <= max(2, len(self) // 2)]
        return sorted(useful, key=lambda a: -counts[a])[:n]

    def image_path(self, item_id: object) -> Path | str:
        return resolve_image(self.images_root, self.items[IMAGE_PATH].iat[self.row(item_id)])

    def vector(self, item_id: object) -> np.ndarray:
        return np.array(self.embeddings[self.row(item_id)])

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None and self.spec.precision == "int8":
            model = self.path / self.manifest.get("precision", {}).get("model", INT8_MODEL)
            if not model.is_file():
                raise IndexFormatError(f"index {self.path} was embedded with an int8 model, "
                                       f"and its {model.name} is missing; rebuild the index")
            self._embedder = Embedder(self.spec, model)
        if self._embedder is None:
            self._embedder = create_embedder(self.spec.source or self.spec.name)
            if self._embedder.spec != self.spec:
                raise IndexFormatError(
                    f"index {self.path} was built with a different {self.spec.name!r} "
                    f"(weights {self.spec.weights}, input {self.spec.input_size}) than this "
                    f"lookalike provides ({self._embedder.spec.weights}, "
                    f"{self._embedder.spec.input_size}); rebuild the index")
        return self._embedder

    def embed(self, image: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """The embedding of one photo, preprocessed as the index's catalogue was."""
        try:
            pixels = load_model_input(image, self.spec.input_size, max_pixels=max_pixels,
                                      preprocess=self.preprocess or None)
        except ImageError as e:
            name = f"photo {image}" if isinstance(image, (str, os.PathLike)) else "the photo"
            raise ImageError(f"{name}: {e}") from None
        return self.embedder(pixels[None])[0]

    def hits(self, rows: np.ndarray, scores: np.ndarray) -> list[Hit]:
        """Hits for result rows of ``vector_index`` (row -1, an empty slot, is left out)."""
        return [Hit(self._ids[r], float(s), self._metadata(r))
                for r, s in zip(rows, scores) if r >= 0]

    def search_vector(self, vector: np.ndarray, k: int = 10, *, where: Where | None = None,
                      per_product: bool = False, exclude: Sequence[object] = ()) -> list[Hit]:
        """Nearest items to an embedding (cosine similarity, best first)."""
        exclude_rows = [self._row_of[str(e)] for e in exclude if str(e) in self._row_of]
        mask = filter_mask(self.items, where, self.attributes)  # also checks the attributes
        milvus = self.backend is not None  # Milvus filters itself, on its own copy
        rows, scores = top_k(
            self.vector_index, vector, k, mask=mask, exclude_rows=exclude_rows,
            products=self._products if per_product else None,
            embeddings=None if milvus else self.embeddings,
            selector=Filter(self.backend.expression(where), mask.mean())
            if milvus and mask is not None else None,
            exclude_products=[self._products[r] for r in exclude_rows] if per_product else ())
        return self.hits(rows, scores)

    def similar(self, item_id: object, k: int = 10, *, where: Where | None = None,
                per_product: bool = False) -> list[Hit]:
        """Items that look like ``item_id`` (itself excluded; with ``per_product`` its whole
        product excluded and one hit per product)."""
        row = self.row(item_id)
        return self.search_vector(self.embeddings[row], k, where=where, per_product=per_product,
                                  exclude=[item_id])

    def search(self, image: ImageSource, k: int = 10, *, where: Where | None = None,
               per_product: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Hit]:
        """Items that look like an uploaded photo (path, bytes, file object or PIL image)."""
        return self.search_vector(self.embed(image, max_pixels=max_pixels), k, where=where,
                                  per_product=per_product)

    def neighbors(self, out: str | os.PathLike, k: int = 10, **options: Any) -> int:
        """Write the top-k neighbours of every item to a .parquet/.csv/.jsonl file."""
        return write_neighbors(self.vector_index, self.embeddings, self.items[ITEM_ID].to_numpy(),
                               out, k, **options)
