"""Commands that ask an index: similar, search, neighbors, gallery, info, embedders."""

from __future__ import annotations

import json
import time

import click

from lookalike.api import Index
from lookalike.cli.options import (
    describe_index,
    describe_precision,
    index_arg,
    print_hits,
    query_options,
)
from lookalike.embedders import (
    DEFAULT_EMBEDDER,
    list_embedders,
)
from lookalike.ingest.preprocess import Preprocess
from lookalike.progress import progress_bar
from lookalike.search.neighbors import output_format
from lookalike.search.rerank import Rerank
from lookalike.search.topk import parse_where
from lookalike.store.journal import history


@click.command()
@index_arg
@click.argument("item_id")
@query_options("One hit per product (its best photo), leaving out the other photos of "
               "ITEM_ID's own product.")
def similar(index: str, item_id: str, k: int, where: tuple[str, ...], per_product: bool,
            as_json: bool, rerank: Rerank | None) -> None:
    """Items that look like ITEM_ID (the item itself excluded)."""
    ix = Index.open(index)
    hits = ix.similar(item_id, k, where=parse_where(where), per_product=per_product,
                      rerank=rerank)
    print_hits(hits, as_json, ix.display_attributes())


@click.command()
@index_arg
@click.option("--image", "image", required=True, type=click.Path(dir_okay=False, exists=True),
              help="A photo, e.g. from a phone camera.")
@query_options("One hit per product: its photo that looks most like the query photo.")
def search(index: str, image: str, k: int, where: tuple[str, ...], per_product: bool,
           as_json: bool, rerank: Rerank | None) -> None:
    """Catalogue items that look like a photo."""
    ix = Index.open(index)
    hits = ix.search(image, k, where=parse_where(where), per_product=per_product,
                     rerank=rerank)
    print_hits(hits, as_json, ix.display_attributes())


@click.command()
@index_arg
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="Output file: .parquet, .csv or .jsonl.")
@click.option("--block-size", default=2048, show_default=True, type=click.IntRange(1),
              help="Queries per block (memory: block × k, never N × N).")
@click.option("--quiet", "-q", is_flag=True)
def neighbors(index: str, k: int, out: str, block_size: int, quiet: bool) -> None:
    """Top-k neighbours of every item, one row per pair: item_id, rank, neighbor_id, score."""
    output_format(out)  # before any work
    ix = Index.open(index)
    t0 = time.perf_counter()
    with progress_bar(len(ix), unit="item", desc="neighbors", show=not quiet) as bar:
        n = ix.neighbors(out, k, block_size=block_size, on_block=bar.update)
    click.echo(f"{out}: {n} rows, top-{min(k, len(ix) - 1)} of {len(ix)} items "
               f"in {time.perf_counter() - t0:.1f} s")


@click.command()
@index_arg
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


@click.command()
@index_arg
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
    click.echo(describe_index(m))
    if m.get("precision"):
        click.echo(describe_precision(m["precision"]))
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


@click.command()
def embedders() -> None:
    """List the available embedders."""
    from lookalike.embedders import get_spec

    for name in list_embedders():
        s = get_spec(name)
        mark = " (default)" if name == DEFAULT_EMBEDDER else ""
        click.echo(f"{name}{mark}: {s.dim} dims, input {s.input_size}px, weights {s.weights}")
