"""The ``lookalike`` command: a thin layer over the Python API."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import click
import numpy as np
from click.core import ParameterSource
from tqdm import tqdm

from lookalike.api import Hit, Index
from lookalike.build import DEFAULT_RERANK, build_index, default_preprocess
from lookalike.embed.ray import ENGINES
from lookalike.embedders import (
    DEFAULT_EMBEDDER,
    create_embedder,
    is_trained_model,
    list_embedders,
    trained_meta,
)
from lookalike.embedders.quantize import PRECISIONS, quantize_catalogue
from lookalike.errors import LookalikeError
from lookalike.ingest.catalog import DEFAULT_CATEGORY, DEFAULT_COLOR, read_catalog, with_roles
from lookalike.ingest.images import DECODERS, DEFAULT_MAX_PIXELS, FITS, VIEWS
from lookalike.ingest.preprocess import DEFAULT_PREPROCESS, STEPS, Preprocess
from lookalike.search.rerank import Rerank
from lookalike.search.topk import parse_where
from lookalike.search.vector_index import KINDS, VECTOR_TYPES
from lookalike.store.folder import read_manifest
from lookalike.store.journal import history
from lookalike.store.milvus import BACKENDS


class _Group(click.Group):
    """Turns lookalike's errors into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LookalikeError as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=_Group)
@click.version_option(package_name="lookalike")
def cli() -> None:
    """Find visually similar products in a shop's catalogue."""


def refuse_unused(ctx: click.Context, names: Sequence[str], unless: str) -> None:
    """Refuse the options among ``names`` given on the command line: they have no effect
    ``unless`` holds (e.g. "with --engine ray"), and silently ignoring them misleads."""
    flags = {p.name: p.opts[0] for p in ctx.command.params}
    given = [flags[n] for n in names if ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE]
    if given:
        raise click.UsageError(f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} "
                               f"{unless}")


def _index_arg(f: Any) -> Any:
    return click.argument("index", type=click.Path(file_okay=False), envvar="LOOKALIKE_INDEX")(f)


def _query_options(f: Any) -> Any:
    f = click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1),
                     help="How many results.")(f)
    f = click.option("--where", "where", multiple=True, metavar="ATTR=VALUE",
                     help="Only items with this attribute value (repeat; same attribute = OR).")(f)
    f = click.option("--per-product", is_flag=True,
                     help="One hit per product (its best photo); the query's product excluded.")(f)
    f = click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")(f)
    f = click.option("--rerank", default=None, metavar="WAYS", callback=_parse_rerank,
                     help=RERANK_HELP + " [default: the index's own, lookalike info]")(f)
    return f


OUTSIDE_HELP = ("Accept photo paths that lead outside the image folder (../x.jpg, absolute "
                "paths, links out of it); by default such rows are skipped and reported, since "
                "the server shows catalogue photos to anyone who asks.")
RERANK_HELP = ("Re-ranking: none, vote[=N] (the category most of the N nearest items have "
               "comes first), classify (the category the model's classifier names comes "
               "first), expand[=N] (α-query expansion with the N nearest), comma-separated.")


def _parsed(parse: Any) -> Any:
    """A click callback: ``parse(value)`` for a given value (None stays None), its
    LookalikeError a usage error."""
    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            return parse(value)
        except LookalikeError as e:
            raise click.BadParameter(str(e)) from None
    return callback


_parse_rerank = _parsed(Rerank.parse)


def _print_hits(hits: Sequence[Hit], as_json: bool, columns: Sequence[str]) -> None:
    if as_json:
        for rank, h in enumerate(hits, start=1):
            click.echo(json.dumps({"rank": rank, "item_id": h.item_id, "score": round(h.score, 6),
                                   "metadata": h.metadata}, default=str))
        return
    if not hits:
        click.echo("no matching items")
        return
    header = ["rank", "item_id", "score", *columns]
    rows = [[str(r), h.item_id, f"{h.score:.4f}", *(str(h.metadata.get(c, "")) for c in columns)]
            for r, h in enumerate(hits, start=1)]
    widths = [min(40, max(len(x[i]) for x in [header, *rows])) for i in range(len(header))]
    for line in [header, *rows]:
        click.echo("  ".join(v[:w].ljust(w) for v, w in zip(line, widths)).rstrip())


def _describe_index(manifest: dict[str, Any]) -> str:
    info, backend = manifest["index"], manifest.get("backend")
    where = (f" in Milvus collection {backend['collection']} at {backend['uri']} "
             f"({backend['index_type']})" if backend else "")
    if "recall@10" not in info:
        return f"index {info['type']} (exact){where}"
    params = ", ".join(f"{k}={v}" for k, v in info["params"].items())
    return (f"index {info['type']}{where} ({params}): recall@10 {info['recall@10']:.4f} "
            f"against exact search on {info['recall_queries']} items")


_COLUMN_OPTIONS = {"id": "id_column", "image": "image_column", "product": "product_column",
                   "category": "category_column", "color": "color_column"}


def _columns(model: str, given: dict[str, str | None]) -> dict[str, str | None]:
    """The catalogue's column roles: as given, except that with a trained model every option
    left at its default takes the column the model's training catalogue had."""
    if not is_trained_model(model):
        return given
    recorded = (trained_meta(model).get("catalog") or {}).get("columns") or {}
    ctx = click.get_current_context()
    out = dict(given)
    for role, param in _COLUMN_OPTIONS.items():
        if ctx.get_parameter_source(param) == ParameterSource.DEFAULT and recorded.get(role):
            out[role] = recorded[role]
    if out != given:
        click.echo("columns as the model's training catalogue had them: "
                   + ", ".join(f"{r} {c!r}" for r, c in out.items() if c), err=True)
    return out


_parse_preprocess = _parsed(Preprocess.parse)


@cli.command()
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
@click.option("--rerank", default=None, metavar="WAYS", callback=_parse_rerank,
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
@click.option("--preprocess", "-p", default=None, metavar="STEPS", callback=_parse_preprocess,
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
          rerank: Rerank | None, views: str, batch_size: int, workers: int | None, max_pixels: int, preprocess: Preprocess | None,
          index_kind: str, vectors: str, precision: str, calibration_size: int,
          calibration_seed: int, strict: bool, engine: str, address: str | None,
          actors: int | None, backend: str, milvus_uri: str | None, decoder: str,
          allow_outside_images: bool, force: bool, keep_changes: bool, quiet: bool) -> None:
    """Embed every photo of CATALOG (CSV or Parquet) and write an index folder."""
    cols = _columns(model, {"id": id_column, "image": image_column, "product": product_column,
                            "category": category_column, "color": color_column})
    cat = read_catalog(catalog, images, id_column=cols["id"], image_column=cols["image"],
                       product_column=cols["product"],
                       attributes=[a.strip() for a in attributes.split(",") if a.strip()]
                       if attributes is not None else None, category_column=cols["category"],
                       color_column=cols["color"], allow_outside_images=allow_outside_images)
    if force and keep_changes:
        raise click.UsageError("--force drops an index's changes, --keep-changes keeps them: "
                               "choose one")
    for role, default, what in (("category", DEFAULT_CATEGORY, "no category vote"),
                                ("color", DEFAULT_COLOR, "training leaves colour out")):
        if cols[role] is None:  # the default role, where the catalogue has it
            if default in cat.attributes:
                cat = with_roles(cat, **{role: default})
            else:
                click.echo(f"note: no {default!r} attribute, so {what} (name the {role} column "
                           f"with --{role}-column)", err=True)
    if fit is not None:
        preprocess = dataclasses.replace(preprocess or default_preprocess(create_embedder(model)),
                                         fit=fit)
    elif preprocess is not None:
        preprocess = dataclasses.replace(preprocess, fit=DEFAULT_PREPROCESS.fit)
    if address and engine != "ray":
        raise click.BadParameter("--address is for --engine ray", param_hint="--address")
    s = build_index(cat, out, model=model, batch_size=batch_size, workers=workers,
                    max_pixels=max_pixels, progress=not quiet,
                    preprocess=preprocess, index=index_kind, engine=engine, address=address,
                    actors=actors, backend=backend, vectors=vectors, precision=precision,
                    calibration_size=calibration_size, calibration_seed=calibration_seed,
                    strict=strict, decoder=None if decoder == "auto" else decoder,
                    rerank=rerank, views=views,
                    milvus_uri=milvus_uri if backend == "milvus" else None,
                    on_changes="force" if force else "keep" if keep_changes else "refuse")
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
    click.echo(_describe_index(read_manifest(s.path)))
    if s.precision:
        click.echo(_describe_precision(s.precision))
        if "warning" in s.precision:
            click.echo(f"warning: {s.precision['warning']}", err=True)
    for step, seen in s.preprocess.items():
        click.echo(f"preprocess {step}: " + "; ".join(f"{n} {note}" for note, n in seen.items()))
    for sk in s.skipped[:20]:
        click.echo(f"  skipped {sk['item_id']} (row {sk['row']}): {sk['reason']}", err=True)
    if len(s.skipped) > 20:
        click.echo(f"  … and {len(s.skipped) - 20} more (all listed in manifest.json)", err=True)


@cli.command()
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
@click.option("--preprocess", "-p", default=None, metavar="STEPS", callback=_parse_preprocess,
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


@cli.command()
@_index_arg
def compact(index: str) -> None:
    """Fold INDEX's change journal into a fresh copy of the folder (same items and vectors,
    approximate index rebuilt and its recall measured again); the change log is kept. Safe
    while a server or other writers use INDEX: what they change meanwhile is carried over."""
    n = Index.open(index, auto_compact=False).compact()
    click.echo(f"index {index}: {n} change(s) folded in" if n else
               f"index {index}: no changes to fold in")


@cli.command()
@_index_arg
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
    _finish_compaction(ix, index)


@cli.command()
@_index_arg
@click.argument("item_ids", nargs=-1, required=True)
def remove(index: str, item_ids: tuple[str, ...]) -> None:
    """Remove ITEM_IDS from INDEX (all or none)."""
    ix = Index.open(index)
    s = ix.delete(item_ids)
    click.echo(f"index {index}: {len(s.removed)} removed (change {s.change})")
    _finish_compaction(ix, index)


def _finish_compaction(ix: Index, index: str) -> None:
    """The journal passed the auto-compaction threshold: say so while it is folded in."""
    if ix.compacting:
        click.echo(f"index {index}: folding the journal in (auto-compaction)...", err=True)
        ix.wait_for_compaction()


@cli.command("preview-preprocess")
@click.argument("photos", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@click.option("--preprocess", "-p", default=",".join(STEPS), show_default=True, metavar="STEPS",
              callback=_parse_preprocess, help="Steps to show, each alone and then all together.")
def preview_preprocess_cmd(photos: tuple[str, ...], out: str, preprocess: Preprocess) -> None:
    """Before/after pictures of the preprocessing steps on PHOTOS."""
    from lookalike.quality.gallery import preview_preprocess

    path = preview_preprocess(photos, preprocess, out)
    click.echo(f"preview {path}: {len(photos)} photo(s)")


@cli.command()
@_index_arg
@click.argument("item_id")
@_query_options
def similar(index: str, item_id: str, k: int, where: tuple[str, ...], per_product: bool,
            as_json: bool, rerank: Rerank | None) -> None:
    """Items that look like ITEM_ID (the item itself excluded)."""
    ix = Index.open(index)
    hits = ix.similar(item_id, k, where=parse_where(where), per_product=per_product,
                      rerank=rerank)
    _print_hits(hits, as_json, ix.display_attributes())


@cli.command()
@_index_arg
@click.option("--image", "image", required=True, type=click.Path(dir_okay=False, exists=True),
              help="A photo, e.g. from a phone camera.")
@_query_options
def search(index: str, image: str, k: int, where: tuple[str, ...], per_product: bool,
           as_json: bool, rerank: Rerank | None) -> None:
    """Catalogue items that look like a photo."""
    ix = Index.open(index)
    hits = ix.search(image, k, where=parse_where(where), per_product=per_product,
                     rerank=rerank)
    _print_hits(hits, as_json, ix.display_attributes())


@cli.command()
@_index_arg
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="Output file: .parquet, .csv or .jsonl.")
@click.option("--block-size", default=2048, show_default=True, type=click.IntRange(1),
              help="Queries per block (memory: block × k, never N × N).")
@click.option("--quiet", "-q", is_flag=True)
def neighbors(index: str, k: int, out: str, block_size: int, quiet: bool) -> None:
    """Top-k neighbours of every item, one row per pair: item_id, rank, neighbor_id, score."""
    ix = Index.open(index)
    t0 = time.perf_counter()
    with tqdm(total=len(ix), unit="item", disable=quiet, desc="neighbors") as bar:
        n = ix.neighbors(out, k, block_size=block_size, on_block=bar.update)
    click.echo(f"{out}: {n} rows, top-{min(k, len(ix) - 1)} of {len(ix)} items "
               f"in {time.perf_counter() - t0:.1f} s")


@cli.command()
@_index_arg
@click.argument("item_ids", nargs=-1)
@click.option("--image", "images", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="A photo to query with (repeatable).")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="out.png (contact sheet) or out.html (self-contained page).")
@click.option("-k", "k", default=8, show_default=True, type=click.IntRange(1))
@click.option("--where", "where", multiple=True, metavar="ATTR=VALUE")
@click.option("--per-product", is_flag=True)
def gallery(index: str, item_ids: tuple[str, ...], images: tuple[str, ...], out: str, k: int,
            where: tuple[str, ...], per_product: bool) -> None:
    """Each query (ITEM_IDS and/or --image photos) beside its top-k, as a picture."""
    from lookalike.quality.gallery import write_gallery

    ix = Index.open(index)
    path = write_gallery(ix, out, item_ids, images, k, where=parse_where(where),
                         per_product=per_product)
    click.echo(f"gallery written to {path}")


def _split_options(f: Any) -> Any:
    f = click.option("--test-fraction", default=0.2, show_default=True, type=float,
                     help="Share of products in the test split.")(f)
    f = click.option("--val-fraction", default=0.1, show_default=True, type=float,
                     help="Share of products in the validation split.")(f)
    f = click.option("--split-seed", default=0, show_default=True, type=int,
                     help="Seed of the product hash that assigns splits.")(f)
    return f


def _parse_ks(value: str) -> list[int]:
    try:
        ks = sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError:
        raise click.BadParameter(f"{value!r}: give a comma-separated list such as 1,5,10,20",
                                 param_hint="-k") from None
    if not ks or ks[0] < 1:
        raise click.BadParameter(f"{value!r}: k values must be positive", param_hint="-k")
    return ks


def _json_value(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


@cli.command()
@click.argument("indexes", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--relevance", "-r", "relevances", multiple=True, metavar="ATTR[+ATTR…]",
              help="Relevance: same value of these attributes (repeat) [default: each "
                   "categorical attribute].")
@click.option("-k", "ks", default="1,5,10,20", show_default=True, help="Cut-offs, comma-separated.")
@click.option("--sample", type=click.IntRange(1), help="Query with a seeded sample of the items "
              "[default: every item]; the whole catalogue stays the gallery.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--exclude-product", is_flag=True,
              help="Attribute relevance also leaves out the query's other product photos.")
@click.option("--by", "by", multiple=True, metavar="ATTR",
              help="Break the first relevance down per value of ATTR (repeat).")
@click.option("--queries", type=click.Path(dir_okay=False, exists=True),
              help="A table of outside photos (image path, label) to query the index with.")
@click.option("--mapping", type=click.Path(dir_okay=False, exists=True),
              help="YAML/JSON/CSV: query label → catalogue attribute values that count.")
@click.option("--query-images", type=click.Path(file_okay=False),
              help="Folder the query image paths are relative to [default: the table's folder].")
@click.option("--query-image-column", default="image_path", show_default=True)
@click.option("--query-label-column", default="label", show_default=True)
@click.option("--query-group-column", default=None, metavar="COLUMN",
              help="Who took each query photo (e.g. sender_id): with --query-split, only one "
                   "side of a split by group, as lookalike train splits them.")
@click.option("--query-split", type=click.Choice(["train", "test"]), default=None)
@click.option("--query-test-fraction", default=0.5, show_default=True, type=float,
              help="Share of the groups on the test side.")
@click.option("--triplets", type=click.Path(dir_okay=False, exists=True),
              help="Triplet file (query_id, positive_id, negative_id): triplet accuracy.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False),
              help="Write report.md, report.html, plots and the best/worst gallery here.")
@click.option("--gallery-queries", default=6, show_default=True, type=click.IntRange(1),
              help="Best and worst queries shown in the report.")
@click.option("--json", "as_json", is_flag=True,
              help='One flat JSON object of "<metric>@<k>/<relevance>" keys (one per index '
                   "when comparing).")
@click.option("--split", type=click.Choice(["train", "val", "test"]),
              help="Only this split of products, as queries and as the gallery (the split "
                   "lookalike train used with the same fractions and seed).")
@_split_options
@click.option("--rerank", default=None, metavar="WAYS", callback=_parse_rerank,
              help=RERANK_HELP + " [default: each index's own, as its searches]")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def evaluate(indexes: tuple[str, ...], relevances: tuple[str, ...], ks: str, sample: int | None,
             seed: int, exclude_product: bool, by: tuple[str, ...], queries: str | None,
             mapping: str | None, query_images: str | None, query_image_column: str,
             query_label_column: str, query_group_column: str | None, query_split: str | None,
             query_test_fraction: float, triplets: str | None, report_dir: str | None,
             gallery_queries: int, as_json: bool, split: str | None, test_fraction: float,
             val_fraction: float, split_seed: int, rerank: Rerank | None, quiet: bool) -> None:
    """Retrieval quality of INDEXES (one, or several to compare on the same queries)."""
    from lookalike.quality.report import (
        group_tables,
        headline,
        label_tables,
        metric_tables,
        render_text,
        write_report,
    )
    from lookalike.quality.runs import evaluate_indexes, read_label_mapping, read_query_set

    k_list = _parse_ks(ks)
    if (queries is None) != (mapping is None):
        raise click.UsageError("--queries and --mapping go together")
    t0 = time.perf_counter()
    results = evaluate_indexes(
        indexes, relevances=[r.split("+") for r in relevances] or None, ks=k_list, sample=sample,
        seed=seed, exclude_product=exclude_product,
        query_set=read_query_set(queries, images=query_images, image_column=query_image_column,
                                 label_column=query_label_column,
                                 group_column=query_group_column, split=query_split,
                                 test_fraction=query_test_fraction) if queries else None,
        query_label_column=query_label_column,
        mapping=read_label_mapping(mapping) if mapping else None, triplets=triplets,
        split=split, split_options={"test": test_fraction, "val": val_fraction,
                                    "seed": split_seed},
        rerank=rerank, progress=not quiet and not as_json)
    elapsed = time.perf_counter() - t0
    if as_json:
        flat = [{k: _json_value(v) for k, v in r.metrics.items()} for r in results]
        click.echo(json.dumps(flat[0] if len(flat) == 1 else
                              {r.label: f for r, f in zip(results, flat)}))
    else:
        n = len(results[0].catalog.query_rows)
        click.echo(f"{n} catalogue queries on {len(results)} index(es) in {elapsed:.1f} s")
        for r in results:
            click.echo(f"  {r.label}: {r.index.path} ({len(r.index)} items)")
            for note in r.notes:
                click.echo(f"    note: {note}")
        click.echo()
        for r in results:
            for line in headline(r):
                click.echo(f"{r.label}: {line}" if len(results) > 1 else line)
        click.echo()
        click.echo(render_text(metric_tables(results) + group_tables(results, by)
                               + label_tables(results)))
    if report_dir:
        page = write_report(results, report_dir, by=by, gallery_queries=gallery_queries,
                            settings={"k": ",".join(map(str, k_list)),
                                      "queries": f"sample of {sample}, seed {seed}" if sample
                                      else "every item", "exclude product": exclude_product,
                                      **({"split": f"{split} (test {test_fraction}, val "
                                                   f"{val_fraction}, seed {split_seed})"}
                                         if split else {})})
        click.echo(f"report written to {page} and {page.with_suffix('.md')}",
                   err=as_json)


@cli.command()
@_index_arg
@click.option("-n", "n", default=100_000, show_default=True, type=click.IntRange(1),
              help="Triplets to draw (rows that cannot be formed are skipped and counted).")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Parquet file.")
@click.option("--category", default=None,
              help="Category column [default: the index's, else articleType where it exists].")
@click.option("--color", default=None, help="Colour column [default: baseColour where it exists].")
@click.option("--product", default="product_id", show_default=True,
              help="Product column (photos of one product share it).")
@click.option("--p-same-product", default=0.9, show_default=True, type=float,
              help="Probability that the positive is the query's product (else same category "
                   "and colour).")
@click.option("--p-in-class", default=0.3, show_default=True, type=float,
              help="Probability that the negative shares the query's category (else another "
                   "category).")
@click.option("--split", type=click.Choice(["train", "val", "test"]),
              help="Only items of this split of products.")
@_split_options
@click.option("--seed", default=0, show_default=True, type=int)
def triplets(index: str, n: int, out: str, category: str | None, color: str | None, product: str,
             p_same_product: float, p_in_class: float, split: str | None,
             test_fraction: float, val_fraction: float, split_seed: int, seed: int) -> None:
    """Sample (query, positive, negative) triplets from INDEX's metadata into a Parquet file."""
    from lookalike.training.splits import assign_splits
    from lookalike.training.triplets import (
        NEGATIVE_TYPES,
        POSITIVE_TYPES,
        roles,
        sample_triplets,
        write_triplets,
    )

    ix = Index.open(index)
    category, color = roles(list(ix.items.columns), (ix.category, ix.color), category, color,
                            lambda s: click.echo(s, err=True))
    rows = None
    if split:
        if product not in ix.items.columns:
            raise LookalikeError(f"column {product!r} (--product) not found")
        labels = assign_splits(ix.items[product].to_numpy(), test=test_fraction,
                               val=val_fraction, seed=split_seed)
        rows = np.flatnonzero(labels == split)
    t0 = time.perf_counter()
    ts = sample_triplets(ix.items, n, category=category, color=color, product=product,
                         p_same_product=p_same_product, p_in_class=p_in_class, rows=rows,
                         seed=seed)
    path = write_triplets(ts, ix.items["item_id"].to_numpy(), out)
    click.echo(f"{path}: {len(ts)} triplets of {n} drawn in {time.perf_counter() - t0:.1f} s")
    for codes, names in ((ts.positive_type, POSITIVE_TYPES), (ts.negative_type, NEGATIVE_TYPES)):
        counts = np.bincount(codes, minlength=len(names))
        click.echo("  " + ", ".join(f"{name} {c}" for name, c in zip(names, counts)))
    for reason, count in ts.skipped.items():
        if count:
            click.echo(f"  skipped {count}: {reason}", err=True)


@cli.command()
@_index_arg
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Model folder to write (model.onnx, model.json, checkpoint.pt, curve).")
@click.option("--category", default=None,
              help="Category column [default: the index's category column, else articleType "
                   "where it exists; without one, training uses products alone].")
@click.option("--color", default=None,
              help="Colour column [default: baseColour where it exists, else none].")
@click.option("--product", default="product_id", show_default=True)
@click.option("--split-by", type=click.Choice(["product", "photo"]), default="product",
              show_default=True,
              help="product: validate on products never trained on; photo: every product "
                   "trains, held-out photos of known products validate.")
@click.option("--queries", type=click.Path(dir_okay=False, exists=True),
              help="Outside photos with labels (e.g. customers' photos) as more anchors: "
                   "positives are catalogue items their label maps to (--mapping), negatives "
                   "the others. Split by --query-group-column: the test share of groups is "
                   "never read (measure on it with lookalike evaluate --query-split test).")
@click.option("--mapping", type=click.Path(dir_okay=False, exists=True),
              help="YAML/JSON/CSV: outside label → catalogue values that count.")
@click.option("--query-images", type=click.Path(file_okay=False))
@click.option("--query-label-column", default="label", show_default=True)
@click.option("--query-group-column", default=None, metavar="COLUMN",
              help="Who took each outside photo, e.g. sender_id.")
@click.option("--query-test-fraction", default=0.5, show_default=True, type=float)
@click.option("--query-share", default=0.25, show_default=True, type=float,
              help="Share of each epoch's triplets anchored on outside photos.")
@click.option("--camera", default="", metavar="STEPS",
              help="Camera-like views of the catalogue photos as queries: any of background, "
                   "scale, rotate, perspective, light (comma-separated) [default: none].")
@click.option("--camera-share", default=0.5, show_default=True, type=float,
              help="Share of the queries shown as a camera-like view.")
@click.option("--classifier-only", is_flag=True,
              help="Keep INDEX's embedding and fit only the category classifier that "
                   "--rerank classify uses (seconds; with --queries, the lever that helps "
                   "camera photos most: docs/quality.md).")
@click.option("--require-better", is_flag=True,
              help="Exit with status 1 when the model is not better than the pretrained "
                   "backbone on validation (with --classifier-only: than the category vote); "
                   "the model is still written.")
@click.option("--dim", default=512, show_default=True, type=click.IntRange(2),
              help="Embedding size.")
@click.option("--gap", default=0.2, show_default=True, type=float,
              help="g in max(0, g + D(q,p) - D(q,n)), D = squared distance.")
@click.option("--aux-weight", default=1.0, show_default=True, type=float,
              help="Weight of the category/colour classification term (0: triplet loss only).")
@click.option("--keep", multiple=True, metavar="ATTR",
              help="Another column the embedding must keep telling apart (repeat), e.g. gender: "
                   "adds its classification to the objective.")
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--epochs", default=8, show_default=True, type=click.IntRange(1))
@click.option("--triplets-per-epoch", default=None, type=click.IntRange(1),
              help="[default: 25 per training item, between 2,000 and 50,000]")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(2))
@click.option("--p-same-product", type=float, default=None,
              help="[default: 0.9 if most products have several photos, else 0]")
@click.option("--p-in-class", default=0.5, show_default=True, type=float)
@click.option("--patience", default=2, show_default=True, type=click.IntRange(1),
              help="Stop after this many epochs without a better validation score.")
@click.option("--finetune-stages", default=0, show_default=True, type=click.IntRange(0),
              help="Also train the backbone's last N stages (0: frozen backbone).")
@click.option("--backbone-lr-scale", default=0.1, show_default=True, type=float,
              help="Learning rate of the tuned stages, relative to --lr.")
@_split_options
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--resume", is_flag=True, help="Continue the training checkpointed in --out.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def train(index: str, out: str, quiet: bool, resume: bool, require_better: bool,
          **options: Any) -> None:
    """Train a Deep Ranking model on INDEX's products (frozen backbone = INDEX's model).
    Roles (category, colour) come from what INDEX has; --test-fraction 0 trains on
    everything, the way to make the model you deploy."""
    from lookalike.training.config import TrainConfig
    from lookalike.training.loop import train as run_training

    if resume:  # the checkpoint's index and options
        refuse_unused(click.get_current_context(), list(options),
                      "to a new training; --resume continues with the options it started with")
    options["keep"] = tuple(options["keep"])
    options["camera"] = tuple(c.strip() for c in options["camera"].split(",") if c.strip())
    if (options["queries"] is None) != (options["mapping"] is None):
        raise click.UsageError("--queries and --mapping go together")
    s = run_training(index, out, None if resume else TrainConfig(**options), resume=resume,
                     progress=not quiet, log=click.echo)
    baseline = "the category vote" if options["classifier_only"] else "the pretrained backbone"
    click.echo(f"model written to {s.out}: "
               + (f"best epoch {s.best_epoch} of {s.epochs_run}, " if s.epochs_run else "")
               + f"{s.timings['total_s']:.0f} s in all")
    if s.better:
        click.echo(f"it beats {baseline} on validation; use it with "
                   f"lookalike build CATALOG --model {s.out} --out INDEX")
    else:
        click.echo(f"it does NOT beat {baseline} on validation: keep the index "
                   "you have (or train with other settings)", err=True)
        if require_better:
            sys.exit(1)


@cli.command()
@_index_arg
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--max-upload-bytes", default=10 * 1024 * 1024, show_default=True,
              type=click.IntRange(1), help="Larger uploads are refused with 413.")
@click.option("--max-pixels", default=40_000_000, show_default=True, type=click.IntRange(1),
              help="Uploaded photos with more pixels are refused with 413.")
@click.option("--max-decode-pixels", default=40_000_000, show_default=True,
              type=click.IntRange(1),
              help="Pixels of uploaded photos decoded at once; more wait their turn (memory "
                   "stays bounded under a burst of large photos).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1),
              help="Server processes sharing the port. Each maps the same vectors from disk "
                   "and follows the index folder's journal, so a change made through any of "
                   "them is served by all within a second.")
def serve(index: str, host: str, port: int, max_upload_bytes: int, max_pixels: int,
          max_decode_pixels: int, workers: int) -> None:
    """Serve INDEX over HTTP (API docs at /docs); --port 0 takes a free port and prints it.
    Items that other processes add or remove are served within a second."""
    import os
    import socket

    import uvicorn

    from lookalike.server import create_app
    from lookalike.server.app import SERVE_ENV

    options = {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels,
               "max_decode_pixels": max_decode_pixels}
    if workers == 1:
        app = create_app(index, **options)
    else:  # each worker makes its own app; a folder that cannot be served fails here, once
        Index.open(index)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    click.echo(f"serving {index} at http://{host}:{port}/ (API docs: http://{host}:{port}/docs)"
               + (f" with {workers} worker processes" if workers > 1 else ""))
    sys.stdout.flush()
    if workers == 1:
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
        return
    from uvicorn.supervisors import Multiprocess

    os.environ[SERVE_ENV] = json.dumps({"index": str(index), **options})
    config = uvicorn.Config("lookalike.server.app:app_from_environment", factory=True,
                            workers=workers, log_level="warning")
    Multiprocess(config, sockets=[sock]).run()


@cli.command()
@_index_arg
@click.option("--json", "as_json", is_flag=True)
def info(index: str, as_json: bool) -> None:
    """What an index folder holds (model, counts, skipped items)."""
    m = Index.open(index).manifest
    if as_json:
        click.echo(json.dumps(m, indent=2))
        return
    c = m["counts"]
    changes = m.get("journal", {}).get("changes", 0)
    click.echo(f"{index}: {c['items']} items now"
               + (f" ({c['built']} at the last build or compaction, then {changes} change(s))"
                  if changes else "")
               + f"; the build skipped {c['skipped']} of {c['catalog_rows']} catalogue rows")
    click.echo(f"model {m['embedder']['name']} ({m['embedder']['dim']} dims, "
               f"input {m['embedder']['input_size']}px), built {m['created']}")
    click.echo(_describe_index(m))
    if m.get("precision"):
        click.echo(_describe_precision(m["precision"]))
        if "warning" in m["precision"]:
            click.echo(f"warning: {m['precision']['warning']}")
    if m.get("decoder", {}).get("reason"):
        click.echo(f"photos decoded with {m['decoder']['name']} ({m['decoder']['reason']})")
    click.echo(f"preprocess: {Preprocess.from_dict(m.get('preprocess'))} (search photos get the same)")
    category = m["catalog"].get("columns", {}).get("category")
    click.echo(f"category column: {category or '(none)'}; searches re-rank: "
               f"{Rerank.from_dict(m.get('search', {}).get('rerank'))}; query views: "
               f"{','.join(m.get('search', {}).get('views', [])) or 'none'}")
    click.echo(f"attributes: {', '.join(m['catalog']['attributes'])}")
    for n, change in enumerate(history(index, m.get("history", [])), start=1):
        counts = ", ".join(f"{v} {k}" for k, v in change.get("counts", {}).items())
        click.echo(f"change {n}: {change['op']} {counts or '1 item'} "
                   f"{change.get('time', '')}".rstrip())
    for s in m["skipped"][:20]:
        click.echo(f"  skipped {s['item_id']} (row {s['row']}): {s['reason']}")


def _describe_precision(p: dict[str, Any]) -> str:
    """One line on an int8 index's model: its calibration and its check against fp32."""
    c = p["check"]
    return (f"int8 model calibrated on {p['calibration']['photos']} photos; against fp32 on "
            f"{c['photos']}: mean cosine {c['mean_cosine']:.4f} (min {c['min_cosine']:.4f}), "
            f"top-10 agreement {c['top10_agreement']:.4f}")


@cli.command()
def embedders() -> None:
    """List the available embedders."""
    from lookalike.embedders import get_spec

    for name in list_embedders():
        s = get_spec(name)
        mark = " (default)" if name == DEFAULT_EMBEDDER else ""
        click.echo(f"{name}{mark}: {s.dim} dims, input {s.input_size}px, weights {s.weights}")


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=list(argv) if argv is not None else None, prog_name="lookalike")


if __name__ == "__main__":
    sys.exit(main())
