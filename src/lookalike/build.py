"""Catalogue → embeddings → index folder."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lookalike.embed.local import embed_images
from lookalike.embed.ray import ENGINES, embed_on_ray
from lookalike.embedders import DEFAULT_EMBEDDER, Embedder, create_embedder, trained_meta
from lookalike.embedders.quantize import INT8_MODEL, PRECISIONS, quantize_catalogue
from lookalike.errors import LookalikeError
from lookalike.ingest.catalog import ITEM_ID, PHOTO_DIGEST, Catalog
from lookalike.ingest.decoding import DecoderChoice
from lookalike.ingest.images import DEFAULT_MAX_PIXELS, ImageSource, parse_views
from lookalike.ingest.preprocess import DEFAULT_PREPROCESS, Preprocess
from lookalike.rebuild import check_replace, replay
from lookalike.search.classifier import has_head, head_digest, load_head
from lookalike.search.rerank import Rerank
from lookalike.search.vector_index import KINDS, VECTOR_TYPES
from lookalike.store.folder import now, read_manifest, versions, write_index
from lookalike.store.milvus import BACKENDS


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


def build_index(
    catalog: Catalog,
    out: str | os.PathLike,
    *,
    model: str | Embedder = DEFAULT_EMBEDDER,
    batch_size: int = 32,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = False,
    preprocess: Preprocess | str | None = None,
    index: str = "exact",
    index_params: dict[str, int] | None = None,
    engine: str = "local",
    address: str | None = None,
    actors: int | None = None,
    backend: str = "faiss",
    milvus_uri: str | None = None,
    vectors: str = "float32",
    precision: str = "fp32",
    calibration_size: int = 256,
    calibration_seed: int = 0,
    calibration: Sequence[ImageSource] | None = None,
    strict: bool = False,
    decoder: str | None = None,
    rerank: Rerank | str | None = None,
    views: Sequence[str] | str | None = None,
    on_changes: str = "refuse",
) -> BuildSummary:
    """Embed every photo of ``catalog`` and write the index folder ``out`` atomically.

    Photos that cannot be read are skipped and listed (item id, catalogue row, reason) in the
    manifest; every other item keeps its own vector. ``preprocess`` (a :class:`Preprocess` or
    ``"face,crop,background"``) runs on every photo first, and is recorded in the manifest so
    that query photos get the same treatment; ``None`` means the steps a trained model was
    trained with, or :data:`DEFAULT_PREPROCESS`. ``index`` is the vector index: ``exact``
    (faiss flat), or ``hnsw`` / ``ivf`` / ``ivfpq`` (approximate: tuned to recall@10 ≥ 0.98 against
    exact search on a sample, the recall recorded in the manifest); ``index_params``
    overrides their parameters. ``engine="ray"`` embeds on the Ray cluster at ``address``
    (or a local one) with ``actors`` ONNX Runtime workers; the vectors equal the local ones.
    ``backend="milvus"`` stores the vectors and attributes in a new collection at
    ``milvus_uri`` (a Milvus server, or a local file for milvus-lite) that then serves the
    searches; the folder keeps the manifest and the items table. ``vectors="float16"`` stores
    the vectors (``embeddings.npy`` and the exact or HNSW index) at half the size; its recall
    against float32 exact search is measured and recorded like an approximate index's.
    ``precision="int8"`` embeds with a statically quantized copy of the model, calibrated on
    ``calibration_size`` of the catalogue's photos (seeded; or the ``calibration`` photos
    given) and kept in the folder for queries; it is compared with fp32 on other photos, and
    below the thresholds the build warns, or with ``strict`` refuses. ``decoder``
    (``pillow`` or ``opencv``) decodes the photos; by default the faster of the two on the
    catalogue's first photos, if their pixels match (the choice is recorded). ``rerank``
    (a :class:`Rerank` or ``"vote,expand"``) is what searches of the index run unless told
    otherwise; by default :data:`CLASSIFY_RERANK` where the model has a category classifier of
    the catalogue's category column, else :data:`DEFAULT_RERANK` where it has a category
    column, else none. ``views`` (``"flip,zoom"``: images.VIEWS) are the extra views a query
    photo is embedded from, averaged (test-time augmentation); default none. ``out`` may be an
    index already: one with changes since its build (items added or removed) is replaced only
    with ``on_changes="force"`` (they are dropped) or ``"keep"`` (they are replayed onto the
    new build, lookalike.rebuild); by default the build refuses, before any photo is embedded.
    """
    if index not in KINDS:
        raise LookalikeError(f"unknown index type {index!r}; choose one of {', '.join(KINDS)}")
    if engine not in ENGINES:
        raise LookalikeError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if backend not in BACKENDS:
        raise LookalikeError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if vectors not in VECTOR_TYPES:
        raise LookalikeError(f"unknown vector type {vectors!r}; choose one of "
                             f"{', '.join(VECTOR_TYPES)}")
    if vectors == "float16" and backend == "milvus":
        raise LookalikeError("--vectors float16 is for the faiss backend; a Milvus "
                             "collection stores float32 vectors")
    if (backend == "milvus") != bool(milvus_uri):
        raise LookalikeError("--backend milvus needs --milvus-uri (a Milvus server URI or a "
                             "local file for milvus-lite), and --milvus-uri needs it")
    pending = check_replace(out, on_changes)
    embedder = create_embedder(model) if isinstance(model, str) else model
    category = catalog.columns.get("category")
    head = classifier_for(embedder, category)
    if rerank is None:
        rerank = CLASSIFY_RERANK if head else DEFAULT_RERANK if category else Rerank()
    elif not isinstance(rerank, Rerank):
        rerank = Rerank.parse(rerank)
    if rerank.categorises and not category:
        raise LookalikeError("ranking a category first (vote or classify) needs a category "
                             "column (--category-column)")
    if rerank.classify and not head:
        raise LookalikeError(f"--rerank classify needs a model with a category classifier of "
                             f"{category!r} (lookalike train fits one); {embedder.name} has none")
    try:
        views = parse_views(views)
    except ValueError as e:
        raise LookalikeError(str(e)) from None
    if preprocess is None:
        pre = default_preprocess(embedder)
    else:
        pre = preprocess if isinstance(preprocess, Preprocess) else Preprocess.parse(preprocess)
    paths = [catalog.image_file(i) if i not in catalog.missing else None
             for i in range(len(catalog))]
    quant: dict[str, Any] = {}
    if precision not in PRECISIONS:
        raise LookalikeError(f"unknown precision {precision!r}; choose one of "
                             f"{', '.join(PRECISIONS)}")
    if precision == "int8":
        embedder, quant = _int8(embedder, paths, pre, calibration_size, calibration_seed,
                                calibration, strict)
    if engine == "ray":
        result = embed_on_ray(embedder, paths, address=address, batch_size=batch_size,
                              actors=actors, max_pixels=max_pixels, skip=catalog.missing,
                              preprocess=pre, progress=progress, decoder=decoder)
    else:
        result = embed_images(embedder, paths, batch_size=batch_size, workers=workers,
                              max_pixels=max_pixels, progress=progress, skip=catalog.missing,
                              preprocess=pre, decoder=decoder)
    if len(result.rows) == 0:
        first = next(iter(result.skipped.items()), (None, "no rows"))
        raise LookalikeError(f"no photo of {catalog.source.name} could be read; "
                             f"first problem: row {first[0]}: {first[1]}")
    items = catalog.items.iloc[result.rows].reset_index(drop=True)
    items.insert(0, "row", result.rows)
    items[PHOTO_DIGEST] = result.digests
    ids = catalog.items[ITEM_ID]
    skipped = [{"item_id": str(ids.iat[r]), "row": int(r), "reason": reason}
               for r, reason in sorted(result.skipped.items())]
    spec = embedder.spec
    manifest = {
        "created": now(),
        "embedder": spec.to_dict(),
        "preprocessing": spec.preprocessing(),
        "preprocess": {**pre.to_dict(),
                       "outcomes": {s: dict(c.most_common()) for s, c in result.preprocess.items()}},
        "versions": versions(),
        "counts": {"catalog_rows": len(catalog), "items": len(items), "skipped": len(skipped)},
        "catalog": {"source": str(catalog.source.resolve()),
                    "images_root": str(catalog.images_root),
                    "columns": catalog.columns, "attributes": list(catalog.attributes),
                    "has_products": catalog.columns.get("product") is not None},
        "skipped": skipped,
        "engine": {"name": engine, **({"address": address or "local"} if engine == "ray" else {})},
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
        "decoder": result.decoder.to_dict() if result.decoder else {"name": decoder},
        "search": {"rerank": rerank.to_dict(), "views": list(views),
                   **({"classifier": head} if head else {})},
    }
    if quant:
        manifest["precision"] = quant
    params = {**(index_params or {}), **({"fp16": 1} if vectors == "float16" else {})}
    path = write_index(out, manifest, items, result.embeddings, index, params or None,
                       milvus_uri=milvus_uri,
                       extra_files={INT8_MODEL: embedder.onnx_path} if quant else None)
    kept = replay(path, pending) if pending is not None else None
    return BuildSummary(path, spec.name, len(items), skipped, result.timings,
                        manifest["preprocess"]["outcomes"], read_manifest(path)["index"], quant,
                        result.decoder, kept)


def _int8(fp32: Embedder, paths: list[Any], pre: Preprocess, size: int, seed: int,
          given: Sequence[ImageSource] | None, strict: bool) -> tuple[Embedder, dict[str, Any]]:
    """The int8 model for a build, with its calibration and check; warns or (strict) refuses
    when it strays from fp32."""
    int8, info = quantize_catalogue(fp32, paths, preprocess=pre, size=size, seed=seed,
                                    given=given)
    if "warning" in info:
        if strict:
            raise LookalikeError(f"{info['warning']}; refused (--strict). Calibrate on more "
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
