"""Commands that make or change an index: build, quantize, add, remove, compact, and the
preprocessing preview."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from lookalike.api import Index
from lookalike.build import (
    DEFAULT_RERANK,
    BuildSummary,
    Engine,
    FolderStore,
    Fp32,
    Int8,
    LocalEngine,
    MilvusStore,
    Precision,
    RayEngine,
    Store,
    build_index,
    default_preprocess,
)
from lookalike.cli.options import (
    OUTSIDE_HELP,
    RERANK_HELP,
    as_flags,
    columns,
    describe_index,
    describe_precision,
    finish_compaction,
    index_arg,
    parse_preprocess,
    parse_rerank,
    refuse_unused,
)
from lookalike.embed.ray import ENGINES
from lookalike.embedders import (
    DEFAULT_EMBEDDER,
    create_embedder,
    list_embedders,
)
from lookalike.embedders.quantize import PRECISIONS, quantize_catalogue
from lookalike.ingest.catalog import (
    DEFAULT_CATEGORY,
    DEFAULT_COLOR,
    Catalog,
    read_catalog,
    with_roles,
)
from lookalike.ingest.images import DECODERS, DEFAULT_MAX_PIXELS, FITS, VIEWS
from lookalike.ingest.preprocess import DEFAULT_PREPROCESS, STEPS, Preprocess
from lookalike.search.rerank import Rerank
from lookalike.search.vector_index import KINDS, VECTOR_TYPES
from lookalike.store.folder import read_manifest
from lookalike.store.milvus import BACKENDS


@click.command()
@click.argument("catalog", type=click.Path(dir_okay=False))
@click.option("--images", type=click.Path(file_okay=False),
              help="Folder or filesystem URI (s3://…, gs://…, file://…) the image paths are "
                   "relative to [default: the catalogue's folder].")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Index folder to write (replaced atomically if it is an index).")
@click.option("--model", "-m", default=DEFAULT_EMBEDDER, show_default=True,
              help=f"Embedder: {', '.join(list_embedders())}, or a trained model folder "
                   "(lookalike train --out).")
@click.option("--id-column", default="id", show_default=True, envvar="LOOKALIKE_ID_COLUMN")
@click.option("--image-column", default="image_path", show_default=True,
              envvar="LOOKALIKE_IMAGE_COLUMN")
@click.option("--product-column", default=None, envvar="LOOKALIKE_PRODUCT_COLUMN",
              help="Column grouping several photos of a product.")
@click.option("--attributes", default=None, metavar="A,B,C",
              help="Metadata columns to keep [default: every other column].")
@click.option("--category-column", default=None, metavar="COLUMN",
              envvar="LOOKALIKE_CATEGORY_COLUMN",
              help=f"What kind of item each is (the category vote re-ranks by it, training "
                   f"uses it) [default: {DEFAULT_CATEGORY} where the catalogue has it].")
@click.option("--color-column", default=None, metavar="COLUMN", envvar="LOOKALIKE_COLOR_COLUMN",
              help=f"Each item's colour (training uses it) [default: {DEFAULT_COLOR} where the "
                   "catalogue has it]. With a trained --model, every column option left out "
                   "is taken from the catalogue it was trained on.")
@click.option("--fit", type=click.Choice(FITS), default=None,
              help=f"How photos become square: squash, crop (centre of the short side) or pad "
                   f"(border colour); recorded, and search photos get the same [default: "
                   f"{DEFAULT_PREPROCESS.fit}; for a trained model, its training fit].")
@click.option("--rerank", default=None, metavar="WAYS", callback=parse_rerank,
              help=RERANK_HELP + " What searches run unless told otherwise [default: "
                   f"classify with a trained model that has a category classifier, "
                   f"{DEFAULT_RERANK} with a category column, else none].")
@click.option("--views", default="none", show_default=True, metavar="VIEWS",
              help=f"Test-time augmentation: query photos are also embedded from these views "
                   f"({', '.join(VIEWS)}, comma-separated) and the embeddings averaged.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--workers", default=None, type=click.IntRange(1), help="Decoding threads.")
@click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True, type=click.IntRange(1),
              help="Skip photos with more pixels than this (decompression bombs).")
@click.option("--preprocess", "-p", default=None, metavar="STEPS", callback=parse_preprocess,
              help=f"Garment focus before embedding: any of {', '.join(STEPS)} (comma-separated) "
                   "or 'none'; recorded in the index, and search photos get the same. "
                   f"[default: {DEFAULT_PREPROCESS}; for a trained model, its training steps]")
@click.option("--index", "index_kind", type=click.Choice(KINDS), default="exact", show_default=True,
              help="Vector index: exact (faiss flat), or approximate hnsw / ivf / ivfpq, tuned to "
                   "recall@10 >= 0.98 against exact search (the measured recall is recorded).")
@click.option("--vectors", type=click.Choice(VECTOR_TYPES), default="float32", show_default=True,
              help="How the folder stores the vectors: float16 halves embeddings.npy and the "
                   "exact/HNSW index (its recall against float32 is measured and recorded).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="int8: embed with a statically quantized copy of the model (about twice as "
                   "fast), calibrated on the catalogue's photos and checked against fp32.")
@click.option("--calibration-size", default=256, show_default=True, type=click.IntRange(1),
              help="Photos of the catalogue the int8 model is calibrated on.")
@click.option("--calibration-seed", default=0, show_default=True, type=int)
@click.option("--strict", is_flag=True,
              help="Refuse an int8 model whose vectors stray from fp32 beyond the thresholds "
                   "(default: warn).")
@click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True,
              help="Where photos are embedded: this process (decoding threads + ONNX Runtime), "
                   "or Ray Data batches on a Ray cluster.")
@click.option("--address", default=None, metavar="ADDRESS",
              help="Ray cluster for --engine ray (ray://HOST:10001, HOST:6379 or 'auto') "
                   "[default: a local Ray instance on this machine's cores].")
@click.option("--actors", default=None, type=click.IntRange(1),
              help="Ray workers per stage (decoding, inference) [default: one per 2 CPUs of the "
                   "cluster].")
@click.option("--backend", type=click.Choice(BACKENDS), default="faiss", show_default=True,
              help="Where the vectors live: faiss files in the index folder, or a Milvus "
                   "collection (with the filterable attributes) that serves the searches.")
@click.option("--milvus-uri", default=None, metavar="URI", envvar="LOOKALIKE_MILVUS_URI",
              help="Milvus for --backend milvus: a server or cluster (http://HOST:19530; "
                   "token from $MILVUS_TOKEN) or a local file path, run with milvus-lite.")
@click.option("--decoder", type=click.Choice(["auto", *DECODERS]), default="auto",
              show_default=True,
              help="Photo decoder: auto times Pillow and OpenCV on the catalogue's first photos "
                   "and takes the faster, OpenCV only if its pixels match Pillow's.")
@click.option("--allow-outside-images", is_flag=True, help=OUTSIDE_HELP)
@click.option("--force", is_flag=True,
              help="Replace an --out index that has changes since its build (items added or "
                   "removed, e.g. through the server), dropping them.")
@click.option("--keep-changes", is_flag=True,
              help="Replace an --out index that has changes since its build, replaying them "
                   "onto the new build (added items embedded again from their photos).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def build(catalog: str, images: str | None, out: str, model: str, id_column: str,
          image_column: str, product_column: str | None, attributes: str | None,
          category_column: str | None, color_column: str | None, fit: str | None,
          rerank: Rerank | None, views: str, batch_size: int, workers: int | None,
          max_pixels: int, preprocess: Preprocess | None,
          index_kind: str, vectors: str, precision: str, calibration_size: int,
          calibration_seed: int, strict: bool, engine: str, address: str | None,
          actors: int | None, backend: str, milvus_uri: str | None, decoder: str,
          allow_outside_images: bool, force: bool, keep_changes: bool, quiet: bool) -> None:
    """Embed every photo of CATALOG (CSV or Parquet) and write an index folder."""
    if force and keep_changes:
        raise click.UsageError("--force drops an index's changes, --keep-changes keeps them: "
                               "choose one")
    ctx = click.get_current_context()
    engine_, store, precision_ = _build_options(ctx, ctx.params)
    cols = columns(model, {"id": id_column, "image": image_column, "product": product_column,
                           "category": category_column, "color": color_column})
    cat = read_catalog(catalog, images, id_column=cols["id"], image_column=cols["image"],
                       product_column=cols["product"],
                       attributes=[a.strip() for a in attributes.split(",") if a.strip()]
                       if attributes is not None else None, category_column=cols["category"],
                       color_column=cols["color"], allow_outside_images=allow_outside_images)
    cat = _default_roles(cat, cols)
    if fit is not None:
        preprocess = dataclasses.replace(preprocess or default_preprocess(create_embedder(model)),
                                         fit=fit)
    elif preprocess is not None:
        preprocess = dataclasses.replace(preprocess, fit=DEFAULT_PREPROCESS.fit)
    s = build_index(cat, out, model=model, engine=engine_, store=store, precision=precision_,
                    index=index_kind, batch_size=batch_size, max_pixels=max_pixels,
                    preprocess=preprocess, decoder=None if decoder == "auto" else decoder,
                    rerank=rerank, views=views, progress=not quiet,
                    on_changes="force" if force else "keep" if keep_changes else "refuse")
    _report_build(s, engine)


def _build_options(ctx: click.Context, p: dict[str, Any]) -> tuple[Engine, Store, Precision]:
    """The engine, store and precision of ``build``'s flags; a flag given for a mode that
    is off is refused, not ignored."""
    if p["engine"] == "ray":
        refuse_unused(ctx, ["workers"], "with --engine local")
        engine: Engine = RayEngine(p["address"], p["actors"])
    else:
        refuse_unused(ctx, ["address", "actors"], "with --engine ray")
        engine = LocalEngine(p["workers"])
    if p["backend"] == "milvus":
        refuse_unused(ctx, ["vectors"], "with --backend faiss")
        if not p["milvus_uri"]:
            raise click.UsageError("--backend milvus needs --milvus-uri (a Milvus server URI or "
                                   "a local file for milvus-lite)")
        store: Store = MilvusStore(p["milvus_uri"])
    else:
        refuse_unused(ctx, ["milvus_uri"], "with --backend milvus")
        store = FolderStore(p["vectors"])
    if p["precision"] == "int8":
        precision: Precision = Int8(p["calibration_size"], p["calibration_seed"],
                                    strict=p["strict"])
    else:
        refuse_unused(ctx, ["calibration_size", "calibration_seed", "strict"],
                      "with --precision int8")
        precision = Fp32()
    return engine, store, precision


def _default_roles(cat: Catalog, cols: dict[str, str | None]) -> Catalog:
    """The category and colour roles, where not named, taken by the default columns where the
    catalogue has them."""
    for role, default, what in (("category", DEFAULT_CATEGORY, "no category vote"),
                                ("color", DEFAULT_COLOR, "training leaves colour out")):
        if cols[role] is None:
            if default in cat.attributes:
                cat = with_roles(cat, **{role: default})
            else:
                click.echo(f"note: no {default!r} attribute, so {what} (name the {role} column "
                           f"with --{role}-column)", err=True)
    return cat


def _report_build(s: BuildSummary, engine: str) -> None:
    t = s.timings
    click.echo(f"index {s.path}: {s.items} items embedded with {s.model}, "
               f"{len(s.skipped)} skipped, of {s.catalog_rows} catalogue rows")
    if s.kept_changes:
        click.echo(s.kept_changes)
    if engine == "ray":
        click.echo(f"time {t['total_s']:.1f} s ({t['images_per_s']:.0f} images/s on Ray, "
                   f"{t['actors']:.0f} workers per stage; summed over workers: inference "
                   f"{t['infer_s']:.1f} s, decoding {t['decode_s']:.1f} s)")
    else:
        click.echo(f"time {t['total_s']:.1f} s ({t['images_per_s']:.0f} images/s; inference "
                   f"{t['infer_s']:.1f} s, decoding {t['decode_s']:.1f} s in background "
                   f"threads, waiting for decoding {t['wait_for_decode_s']:.1f} s)")
    if s.decoder:
        click.echo(str(s.decoder))
    click.echo(describe_index(read_manifest(s.path)))
    if s.precision:
        click.echo(describe_precision(s.precision))
        if "warning" in s.precision:
            click.echo(f"warning: {s.precision['warning']}", err=True)
    for step, seen in s.preprocess.items():
        click.echo(f"preprocess {step}: " + "; ".join(f"{n} {note}" for note, n in seen.items()))
    for sk in s.skipped[:20]:
        reason = as_flags(sk["reason"], click.get_current_context().command)
        click.echo(f"  skipped {sk['item_id']} (row {sk['row']}): {reason}", err=True)
    if len(s.skipped) > 20:
        click.echo(f"  … and {len(s.skipped) - 20} more (all listed in manifest.json)", err=True)


@click.command()
@click.argument("catalog", type=click.Path(dir_okay=False))
@click.option("--images", type=click.Path(file_okay=False),
              help="Folder or URI the image paths are relative to [default: the catalogue's "
                   "folder].")
@click.option("--model", "-m", default=DEFAULT_EMBEDDER, show_default=True,
              help="Embedder name or trained model folder to quantize.")
@click.option("--id-column", default="id", show_default=True)
@click.option("--image-column", default="image_path", show_default=True)
@click.option("--calibration-size", default=256, show_default=True, type=click.IntRange(1))
@click.option("--calibration-seed", default=0, show_default=True, type=int)
@click.option("--preprocess", "-p", default=None, metavar="STEPS", callback=parse_preprocess,
              help="Garment-focus steps the photos go through (as in build).")
def quantize(catalog: str, images: str | None, model: str, id_column: str, image_column: str,
             calibration_size: int, calibration_seed: int, preprocess: Preprocess | None
             ) -> None:
    """Make the int8 model of MODEL, calibrated on CATALOG's photos, and compare it with fp32
    (cached: a later build --precision int8 with the same calibration reuses it)."""
    cat = read_catalog(catalog, images, id_column=id_column, image_column=image_column,
                       attributes=[])
    fp32 = create_embedder(model)
    pre = preprocess if preprocess is not None else default_preprocess(fp32)
    paths = [cat.image_file(i) if i not in cat.missing else None for i in range(len(cat))]
    int8, info = quantize_catalogue(fp32, paths, preprocess=pre, size=calibration_size,
                                    seed=calibration_seed)
    c = info["check"]
    click.echo(f"int8 model of {fp32.name}: {int8.onnx_path}")
    click.echo(f"calibrated on {info['calibration']['photos']} photos; against fp32 on "
               f"{c['photos']}: mean cosine {c['mean_cosine']:.4f} (min {c['min_cosine']:.4f}), "
               f"top-10 agreement {c['top10_agreement']:.4f}")
    if "warning" in info:
        click.echo(f"warning: {info['warning']}", err=True)


@click.command()
@index_arg
def compact(index: str) -> None:
    """Fold INDEX's change journal into a fresh copy of the folder (same items and vectors,
    approximate index rebuilt and its recall measured again); the change log is kept. Safe
    while a server or other writers use INDEX: what they change meanwhile is carried over."""
    n = Index.open(index, auto_compact=False).compact()
    click.echo(f"index {index}: {n} change(s) folded in" if n else
               f"index {index}: no changes to fold in")


@click.command()
@index_arg
@click.argument("delta", type=click.Path(dir_okay=False, exists=True))
@click.option("--images", type=click.Path(file_okay=False),
              help="Folder the delta's image paths are relative to [default: its folder].")
@click.option("--allow-outside-images", is_flag=True, help=OUTSIDE_HELP)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def add(index: str, delta: str, images: str | None, allow_outside_images: bool,
        quiet: bool) -> None:
    """Add the new items of DELTA (a catalogue with the index's columns) to INDEX, and
    re-embed those whose photo or metadata changed; one atomic change."""
    ix = Index.open(index)
    s = ix.add(delta, images=images, progress=not quiet,
               allow_outside_images=allow_outside_images)
    click.echo(f"index {index}: {len(s.added)} added, {len(s.replaced)} replaced, "
               f"{len(s.unchanged)} unchanged, {len(s.skipped)} skipped"
               + (f" (change {s.change})" if s.change else " (nothing changed)"))
    for item_id, reason in list(s.skipped.items())[:20]:
        click.echo(f"  skipped {item_id}: {reason}", err=True)
    finish_compaction(ix, index)


@click.command()
@index_arg
@click.argument("item_ids", nargs=-1, required=True)
def remove(index: str, item_ids: tuple[str, ...]) -> None:
    """Remove ITEM_IDS from INDEX (all or none)."""
    ix = Index.open(index)
    s = ix.delete(item_ids)
    click.echo(f"index {index}: {len(s.removed)} removed (change {s.change})")
    finish_compaction(ix, index)


@click.command("preview-preprocess")
@click.argument("photos", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@click.option("--preprocess", "-p", default=",".join(STEPS), show_default=True, metavar="STEPS",
              callback=parse_preprocess, help="Steps to show, each alone and then all together.")
def preview_preprocess_cmd(photos: tuple[str, ...], out: str, preprocess: Preprocess) -> None:
    """Before/after pictures of the preprocessing steps on PHOTOS."""
    from lookalike.quality.gallery import preview_preprocess

    path = preview_preprocess(photos, preprocess, out)
    click.echo(f"preview {path}: {len(photos)} photo(s)")
