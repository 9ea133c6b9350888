"""Commands that measure quality: evaluate, and triplets sampled for it and for training."""

from __future__ import annotations

import json
import time

import click
import numpy as np

from lookalike.api import Index
from lookalike.cli.options import (
    RERANK_HELP,
    index_arg,
    json_value,
    parse_ks,
    parse_rerank,
    split_options,
)
from lookalike.errors import LookalikeError
from lookalike.search.rerank import Rerank


@click.command()
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
@split_options
@click.option("--rerank", default=None, metavar="WAYS", callback=parse_rerank,
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
    from lookalike.quality.inputs import read_label_mapping, read_query_set
    from lookalike.quality.report import headline, write_report
    from lookalike.quality.runs import evaluate_indexes
    from lookalike.quality.tables import group_tables, label_tables, metric_tables, render_text

    k_list = parse_ks(ks)
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
        flat = [{k: json_value(v) for k, v in r.metrics.items()} for r in results]
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


@click.command()
@index_arg
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
@split_options
@click.option("--seed", default=0, show_default=True, type=int)
def triplets(index: str, n: int, out: str, category: str | None, color: str | None, product: str,
             p_same_product: float, p_in_class: float, split: str | None,
             test_fraction: float, val_fraction: float, split_seed: int, seed: int) -> None:
    """Sample (query, positive, negative) triplets from INDEX's metadata into a Parquet file."""
    from lookalike.quality.splits import assign_splits
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
