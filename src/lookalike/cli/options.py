"""Options, parsers and printing that several commands share."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

import click
from click.core import ParameterSource

from lookalike.api import Hit, Index
from lookalike.embedders import (
    is_trained_model,
    trained_meta,
)
from lookalike.errors import LookalikeError
from lookalike.ingest.preprocess import Preprocess
from lookalike.search.rerank import Rerank


def refuse_unused(ctx: click.Context, names: Sequence[str], unless: str) -> None:
    """Refuse the options among ``names`` given on the command line: they have no effect
    ``unless`` holds (e.g. "with --engine ray"), and silently ignoring them misleads."""
    flags = {p.name: p.opts[0] for p in ctx.command.params}
    given = [flags[n] for n in names if ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE]
    if given:
        raise click.UsageError(f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} "
                               f"{unless}")


def index_arg(f: Any) -> Any:
    return click.argument("index", type=click.Path(file_okay=False), envvar="LOOKALIKE_INDEX")(f)


def query_options(per_product: str) -> Any:
    """The options of a query (``similar``, ``search``); ``per_product`` tells what
    ``--per-product`` does for this kind of query."""
    return lambda f: _query_options(f, per_product)


def _query_options(f: Any, per_product: str) -> Any:
    f = click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1),
                     help="How many results.")(f)
    f = click.option("--where", "where", multiple=True, metavar="ATTR=VALUE",
                     help="Only items with this attribute value (repeat; same attribute = OR).")(f)
    f = click.option("--per-product", is_flag=True, help=per_product)(f)
    f = click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")(f)
    f = click.option("--rerank", default=None, metavar="WAYS", callback=parse_rerank,
                     help=RERANK_HELP + " [default: the index's own, lookalike info]")(f)
    return f


OUTSIDE_HELP = ("Accept photo paths that lead outside the image folder (../x.jpg, absolute "
                "paths, links out of it); by default such rows are skipped and reported, since "
                "the server shows catalogue photos to anyone who asks.")


RERANK_HELP = ("Re-ranking: none, vote[=N] (the category most of the N nearest items have "
               "comes first), classify (the category the model's classifier names comes "
               "first), expand[=N] (α-query expansion with the N nearest), comma-separated.")


def parsed(parse: Any) -> Any:
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


parse_rerank = parsed(Rerank.parse)


def print_hits(hits: Sequence[Hit], as_json: bool, columns: Sequence[str]) -> None:
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


def describe_index(manifest: dict[str, Any]) -> str:
    info, backend = manifest["index"], manifest.get("backend")
    where = (f" in Milvus collection {backend['collection']} at {backend['uri']} "
             f"({backend['index_type']})" if backend else "")
    if "recall@10" not in info:
        return f"index {info['type']} (exact){where}"
    params = ", ".join(f"{k}={v}" for k, v in info["params"].items())
    return (f"index {info['type']}{where} ({params}): recall@10 {info['recall@10']:.4f} "
            f"against exact search on {info['recall_queries']} items")


COLUMN_OPTIONS = {"id": "id_column", "image": "image_column", "product": "product_column",
                   "category": "category_column", "color": "color_column"}


def columns(model: str, given: dict[str, str | None]) -> dict[str, str | None]:
    """The catalogue's column roles: as given, except that with a trained model every option
    left at its default takes the column the model's training catalogue had."""
    if not is_trained_model(model):
        return given
    recorded = (trained_meta(model).get("catalog") or {}).get("columns") or {}
    ctx = click.get_current_context()
    out = dict(given)
    for role, param in COLUMN_OPTIONS.items():
        if ctx.get_parameter_source(param) == ParameterSource.DEFAULT and recorded.get(role):
            out[role] = recorded[role]
    if out != given:
        click.echo("columns as the model's training catalogue had them: "
                   + ", ".join(f"{r} {c!r}" for r, c in out.items() if c), err=True)
    return out


parse_preprocess = parsed(Preprocess.parse)


def finish_compaction(ix: Index, index: str) -> None:
    """The journal passed the auto-compaction threshold: say so while it is folded in."""
    if ix.compacting:
        click.echo(f"index {index}: folding the journal in (auto-compaction)...", err=True)
        ix.wait_for_compaction()


def split_options(f: Any) -> Any:
    f = click.option("--test-fraction", default=0.2, show_default=True, type=float,
                     help="Share of products in the test split.")(f)
    f = click.option("--val-fraction", default=0.1, show_default=True, type=float,
                     help="Share of products in the validation split.")(f)
    f = click.option("--split-seed", default=0, show_default=True, type=int,
                     help="Seed of the product hash that assigns splits.")(f)
    return f


def parse_ks(value: str) -> list[int]:
    try:
        ks = sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError:
        raise click.BadParameter(f"{value!r}: give a comma-separated list such as 1,5,10,20",
                                 param_hint="-k") from None
    if not ks or ks[0] < 1:
        raise click.BadParameter(f"{value!r}: k values must be positive", param_hint="-k")
    return ks


def json_value(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


def describe_precision(p: dict[str, Any]) -> str:
    """One line on an int8 index's model: its calibration and its check against fp32."""
    c = p["check"]
    return (f"int8 model calibrated on {p['calibration']['photos']} photos; against fp32 on "
            f"{c['photos']}: mean cosine {c['mean_cosine']:.4f} (min {c['min_cosine']:.4f}), "
            f"top-10 agreement {c['top10_agreement']:.4f}")


#: library wordings that are one flag on the command line
_SPELLED = {'on_changes="keep"': "--keep-changes", 'on_changes="force"': "--force"}


def as_flags(message: str, command: click.Command | None) -> str:
    """A library message with the parameters it names (``id_column=``) as ``command``'s flags
    (``--id-column``); parameters the command does not have stay as they are."""
    if command is None:
        return message
    flags = {}
    for p in command.params:
        if isinstance(p, click.Option):
            for name in (p.name, *(o.lstrip("-").replace("-", "_") for o in p.opts)):
                flags[name] = p.opts[0]
    for said, flag in _SPELLED.items():
        message = message.replace(said, flag)
    return re.sub(r"\b([a-z][a-z0-9_]*)=(?![\w'\"])",
                  lambda m: flags.get(m[1], m[0]), message)
