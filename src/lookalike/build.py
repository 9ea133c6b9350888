"""Catalogue → embeddings → index folder.

Where and how a build runs is told with option objects, each holding only what applies to it:
the engine (:class:`LocalEngine` or :class:`RayEngine` with its address and actors), the
vector store (:class:`FolderStore` with its vector type, or :class:`MilvusStore` with its URI)
and the precision (:class:`Fp32`, or :class:`Int8` with its calibration).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lookalike.embed.local import EmbedResult, embed_images
from lookalike.embed.ray import embed_on_ray
from lookalike.embedders import DEFAULT_EMBEDDER, Embedder, create_embedder, trained_meta
from lookalike.embedders.quantize import INT8_MODEL, quantize_catalogue
from lookalike.errors import LookalikeError, choose
from lookalike.ingest.catalog import ITEM_ID, PHOTO_DIGEST, Catalog
from lookalike.ingest.decoding import DecoderChoice
from lookalike.ingest.images import DEFAULT_MAX_PIXELS, ImageSource, parse_views
from lookalike.ingest.preprocess import DEFAULT_PREPROCESS, Preprocess
from lookalike.rebuild import check_replace, replay
from lookalike.search.classifier import has_head, head_digest, load_head
from lookalike.search.rerank import Rerank
from lookalike.search.vector_index import KINDS, VECTOR_TYPES
from lookalike.store.folder import now, read_manifest, versions, write_index


@dataclass
class BuildSummary:
    path: Path
    model: str
    items: int
    skipped: list[dict[str, Any]]
    timings: dict[str, float]
    preprocess: dict[str, dict[str, int]] = field(default_factory=dict)
    index: dict[str, Any] = field(default_factory=dict)  # the manifest's vector index entry
    precision: dict[str, Any] = field(default_factory=dict)  # int8: calibration and check
    decoder: DecoderChoice | None = None  # the photo decoder chosen, and on what
    kept_changes: str | None = None  # on_changes="keep": what was replayed, in words

    @property
    def catalog_rows(self) -> int:
        return self.items + len(self.skipped)


@dataclass(frozen=True)
class LocalEngine:
    """Embed on this machine: decoding threads beside ONNX Runtime."""

    workers: int | None = None  # decoding threads; None: one per core, up to 4


@dataclass(frozen=True)
class RayEngine:
    """Embed on a Ray cluster as Ray Data batches; the vectors equal the local engine's."""

    address: str | None = None  # None: a local Ray
    actors: int | None = None  # ONNX Runtime workers per stage; None: one per 2 CPUs


@dataclass(frozen=True)
class FolderStore:
    """The vectors in the index folder (faiss), float32 or float16 (half the size)."""

    vectors: str = "float32"

    def __post_init__(self) -> None:
        choose(self.vectors, VECTOR_TYPES, "vector type")


@dataclass(frozen=True)
class MilvusStore:
    """The vectors and filterable attributes in a new Milvus collection at ``uri`` (a server,
    or a local file for milvus-lite); the folder keeps the manifest and items table."""

    uri: str

    def __post_init__(self) -> None:
        if not self.uri:
            raise LookalikeError("a Milvus store needs a URI: a Milvus server's, or a local "
                                 "file for milvus-lite")


@dataclass(frozen=True)
class Fp32:
    """Embed with the model as it is."""


@dataclass(frozen=True)
class Int8:
    """Embed with a statically quantized copy of the model, calibrated on ``calibration_size``
    of the catalogue's photos (seeded), or on the ``calibration`` photos given; compared with
    fp32 on other photos, it warns below the thresholds, or with ``strict`` refuses."""

    calibration_size: int = 256
    calibration_seed: int = 0
    calibration: Sequence[ImageSource] | None = None
    strict: bool = False


Engine = LocalEngine | RayEngine
Store = FolderStore | MilvusStore
Precision = Fp32 | Int8


def build_index(catalog: Catalog, out: str | os.PathLike, *,
                model: str | Embedder = DEFAULT_EMBEDDER, engine: Engine = LocalEngine(),
                store: Store = FolderStore(), precision: Precision = Fp32(),
                index: str = "exact", index_params: dict[str, int] | None = None,
                batch_size: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS,
                preprocess: Preprocess | str | None = None, decoder: str | None = None,
                rerank: Rerank | str | None = None, views: Sequence[str] | str | None = None,
                on_changes: str = "refuse", progress: bool = False) -> BuildSummary:
    """Embed every photo of ``catalog`` and write the index folder ``out`` atomically.

    Photos that cannot be read are skipped and listed (item id, catalogue row, reason) in the
    manifest; every other item keeps its own vector. ``engine``, ``store`` and ``precision``
    say where the photos are embedded, where the vectors go and with which copy of the model
    (the classes above). ``preprocess`` (a :class:`Preprocess` or ``"face,crop,background"``)
    runs on every photo first, and is recorded in the manifest so that query photos get the
    same treatment; ``None`` means the steps a trained model was trained with, or
    :data:`DEFAULT_PREPROCESS`. ``index`` is the vector index: ``exact`` (faiss flat), or
    ``hnsw`` / ``ivf`` / ``ivfpq`` (approximate: tuned to recall@10 ≥ 0.98 against exact search
    on a sample, the recall recorded in the manifest); ``index_params`` overrides their
    parameters. float16 vectors have their recall against float32 exact search measured and
    recorded the same way. ``decoder`` (``pillow`` or ``opencv``) decodes the photos; by
    default the faster of the two on the catalogue's first photos, if their pixels match (the
    choice is recorded). ``rerank`` (a :class:`Rerank` or ``"vote,expand"``) is what searches
    of the index run unless told otherwise; by default :data:`CLASSIFY_RERANK` where the model
    has a category classifier of the catalogue's category column, else :data:`DEFAULT_RERANK`
    where it has a category column, else none. ``views`` (``"flip,zoom"``: images.VIEWS) are
    the extra views a query photo is embedded from, averaged (test-time augmentation); default
    none. ``out`` may be an index already: one with changes since its build (items added or
    removed) is replaced only with ``on_changes="force"`` (they are dropped) or ``"keep"``
    (they are replayed onto the new build, lookalike.rebuild); by default the build refuses,
    before any photo is embedded.
    """
    choose(index, KINDS, "index type")
    _check_options(engine, store, precision)
    pending = check_replace(out, on_changes)
    embedder = create_embedder(model) if isinstance(model, str) else model
    category = catalog.columns.get("category")
    head = classifier_for(embedder, category)
    rerank = _rerank(rerank, embedder, category, head)
    try:
        views = parse_views(views)
    except ValueError as e:
        raise LookalikeError(str(e)) from None
    pre = default_preprocess(embedder) if preprocess is None else \
        preprocess if isinstance(preprocess, Preprocess) else Preprocess.parse(preprocess)
    paths = [catalog.image_file(i) if i not in catalog.missing else None
             for i in range(len(catalog))]
    quant: dict[str, Any] = {}
    if isinstance(precision, Int8):
        embedder, quant = _int8(embedder, paths, pre, precision)
    result = _embed(embedder, paths, catalog, engine, pre, batch_size, max_pixels, decoder,
                    progress)
    manifest = _manifest(catalog, embedder, pre, result, engine, decoder, rerank, views, head,
                         quant)
    path = _write(out, catalog, result, manifest, store, index, index_params,
                  {INT8_MODEL: embedder.onnx_path} if quant else None)
    kept = replay(path, pending) if pending is not None else None
    return BuildSummary(path, embedder.spec.name, len(result.rows), manifest["skipped"],
                        result.timings, manifest["preprocess"]["outcomes"],
                        read_manifest(path)["index"], quant, result.decoder, kept)


def _write(out: str | os.PathLike, catalog: Catalog, result: EmbedResult,
           manifest: dict[str, Any], store: Store, index: str,
           index_params: dict[str, int] | None, extra: dict[str, Path] | None) -> Path:
    """The index folder: the embedded items (their catalogue rows and photo digests), their
    vectors in the store asked for, the manifest."""
    items = catalog.items.iloc[result.rows].reset_index(drop=True)
    items.insert(0, "row", result.rows)
    items[PHOTO_DIGEST] = result.digests
    fp16 = isinstance(store, FolderStore) and store.vectors == "float16"
    params = {**(index_params or {}), **({"fp16": 1} if fp16 else {})}
    return write_index(out, manifest, items, result.embeddings, index, params or None,
                       milvus_uri=store.uri if isinstance(store, MilvusStore) else None,
                       extra_files=extra)


def _check_options(engine: Engine, store: Store, precision: Precision) -> None:
    for value, kinds, what in ((engine, (LocalEngine, RayEngine), "engine"),
                               (store, (FolderStore, MilvusStore), "store"),
                               (precision, (Fp32, Int8), "precision")):
        if not isinstance(value, kinds):
            raise LookalikeError(f"{what} must be one of {', '.join(k.__name__ for k in kinds)}, "
                                 f"not {value!r}")


def _rerank(rerank: Rerank | str | None, embedder: Embedder, category: str | None,
            head: str | None) -> Rerank:
    """The index's own re-ranking: as given, or the default for its model and catalogue."""
    if rerank is None:
        return CLASSIFY_RERANK if head else DEFAULT_RERANK if category else Rerank()
    rerank = rerank if isinstance(rerank, Rerank) else Rerank.parse(rerank)
    if rerank.categorises and not category:
        raise LookalikeError("ranking a category first (vote or classify) needs the "
                             "catalogue's category column")
    if rerank.classify and not head:
        raise LookalikeError(f"re-ranking by classify needs a model with a category classifier "
                             f"of {category!r} (lookalike train fits one); {embedder.name} has "
                             "none")
    return rerank


def _embed(embedder: Embedder, paths: list[Any], catalog: Catalog, engine: Engine,
           pre: Preprocess, batch_size: int, max_pixels: int, decoder: str | None,
           progress: bool) -> EmbedResult:
    """Every readable photo's vector, on the engine asked for."""
    if isinstance(engine, RayEngine):
        result = embed_on_ray(embedder, paths, address=engine.address, batch_size=batch_size,
                              actors=engine.actors, max_pixels=max_pixels, skip=catalog.missing,
                              preprocess=pre, progress=progress, decoder=decoder)
    else:
        result = embed_images(embedder, paths, batch_size=batch_size, workers=engine.workers,
                              max_pixels=max_pixels, progress=progress, skip=catalog.missing,
                              preprocess=pre, decoder=decoder)
    if len(result.rows) == 0:
        first = next(iter(result.skipped.items()), (None, "no rows"))
        raise LookalikeError(f"no photo of {catalog.source.name} could be read; "
                             f"first problem: row {first[0]}: {first[1]}")
    return result


def _manifest(catalog: Catalog, embedder: Embedder, pre: Preprocess, result: EmbedResult,
              engine: Engine, decoder: str | None, rerank: Rerank, views: Sequence[str],
              head: str | None, quant: dict[str, Any]) -> dict[str, Any]:
    """What the index folder records about its build."""
    ids = catalog.items[ITEM_ID]
    skipped = [{"item_id": str(ids.iat[r]), "row": int(r), "reason": reason}
               for r, reason in sorted(result.skipped.items())]
    spec = embedder.spec
    ray = isinstance(engine, RayEngine)
    return {
        "created": now(),
        "embedder": spec.to_dict(),
        "preprocessing": spec.preprocessing(),
        "preprocess": {**pre.to_dict(),
                       "outcomes": {s: dict(c.most_common()) for s, c in result.preprocess.items()}},
        "versions": versions(),
        "counts": {"catalog_rows": len(catalog), "items": len(result.rows),
                   "skipped": len(skipped)},
        "catalog": {"source": str(catalog.source.resolve()),
                    "images_root": str(catalog.images_root),
                    "columns": catalog.columns, "attributes": list(catalog.attributes),
                    "has_products": catalog.columns.get("product") is not None},
        "skipped": skipped,
        "engine": {"name": "ray" if ray else "local",
                   **({"address": engine.address or "local"} if ray else {})},
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
        "decoder": result.decoder.to_dict() if result.decoder else {"name": decoder},
        "search": {"rerank": rerank.to_dict(), "views": list(views),
                   **({"classifier": head} if head else {})},
        **({"precision": quant} if quant else {}),
    }


def _int8(fp32: Embedder, paths: list[Any], pre: Preprocess, options: Int8
          ) -> tuple[Embedder, dict[str, Any]]:
    """The int8 model for a build, with its calibration and check; warns or (strict) refuses
    when it strays from fp32."""
    int8, info = quantize_catalogue(fp32, paths, preprocess=pre, size=options.calibration_size,
                                    seed=options.calibration_seed, given=options.calibration)
    if "warning" in info:
        if options.strict:
            raise LookalikeError(f"{info['warning']}; refused (strict). Calibrate on more "
                                 "or more typical photos, or build in fp32")
        warnings.warn(info["warning"], stacklevel=3)
    return int8, info


#: what searches of a new index run where its catalogue has a category column (measured:
#: docs/quality.md) ...
DEFAULT_RERANK = Rerank(vote=10)
#: ... and where its model comes with a category classifier of that column
CLASSIFY_RERANK = Rerank(classify=True)


def classifier_for(embedder: Embedder, category: str | None) -> str | None:
    """The digest of the embedder's category classifier when it has one for ``category``."""
    folder = embedder.spec.source
    if not category or not has_head(folder):
        return None
    return head_digest(folder) if load_head(folder).column == category else None


def default_preprocess(embedder: Embedder) -> Preprocess:
    """The steps a trained model's photos went through in training, else the default."""
    if embedder.spec.source:
        return Preprocess.from_dict(trained_meta(embedder.spec.source).get("preprocess"))
    return DEFAULT_PREPROCESS
