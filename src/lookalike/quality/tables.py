"""Evaluation results as tables: one set of tables (overall metrics, per-group breakdowns,
per-label precision) that the terminal, Markdown and HTML renderings share.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lookalike.errors import LookalikeError
from lookalike.quality.metrics import PRODUCT, group_table
from lookalike.quality.runs import IndexQuality


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


def _fmt(v: float) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _with_delta(v: float, base: float) -> str:
    if any(x is None or math.isnan(x) for x in (v, base)):
        return _fmt(v)
    return f"{v:.3f} ({v - base:+.3f})"


def ks_of(metrics: dict[str, float], metric: str, rel: str) -> list[str]:
    ks = [key.split("/", 1)[0].split("@", 1)[1] for key in metrics
          if key.startswith(metric + "@") and key.endswith("/" + rel)]
    return sorted(ks, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0))


def relevances(result: IndexQuality) -> list[str]:
    rels = list(result.catalog.hits)
    if result.queries is not None:
        rels.append(result.queries.mapping.name)
    return rels


def metric_tables(results: Sequence[IndexQuality]) -> list[Table]:
    """One table per relevance: a row per (metric, index), a column per k; with several
    indexes, every index after the first shows its difference to the first."""
    metrics = [r.metrics for r in results]
    tables = []
    for rel in relevances(results[0]):
        names = ["precision", "recall", "mAP"]
        if rel == PRODUCT:
            names = ["recall", "mAP"]
        elif rel.startswith("query:"):
            names = ["accuracy", "precision", "mAP"]
        cols = list(dict.fromkeys(k for n in names for k in ks_of(metrics[0], n, rel)))
        rows = []
        for name in names:
            for i, (res, m) in enumerate(zip(results, metrics)):
                cells = []
                for k in cols:
                    key = f"{name}@{k}/{rel}"
                    if key not in m:
                        cells.append("")
                    else:
                        cells.append(_fmt(m[key]) if i == 0 else _with_delta(m[key],
                                                                               metrics[0][key]))
                rows.append([f"{name}", res.label, *cells])
        n = metrics[0].get(f"queries/{rel}", 0)
        what = ("same product (In-shop protocol: recall@k = at least one other photo of the "
                "product in the top k)" if rel == PRODUCT else
                f"query photos, relevance through {results[0].queries.mapping.source.name}"
                if rel.startswith("query:") and results[0].queries else f"same {rel}")
        tables.append(Table(f"{rel}", ["metric", "index", *[f"@{k}" for k in cols]], rows,
                            f"{what}; {n} queries with at least one relevant item"))
    if any(r.triplets is not None for r in results):
        keys = list(dict.fromkeys(k for m in metrics for k in m if k.endswith("triplets")
                                  or "/triplets:" in k))
        rows = [[k, *[_fmt(m.get(k, float("nan"))) if not k.startswith("count")
                      else str(m.get(k, "")) for m in metrics]] for k in keys]
        tables.append(Table("triplets", ["metric", *[r.label for r in results]], rows,
                            "share of triplets whose positive is closer to the query than the "
                            "negative (ties count as misses)"))
    return tables


def primary(result: IndexQuality) -> str:
    return next(iter(result.catalog.hits))


def ranking_metric(result: IndexQuality, rel: str) -> str:
    """The per-query metric that orders queries from best to worst for ``rel``."""
    return f"mAP@R/{rel}" if rel == PRODUCT else f"mAP@{main_k(result)}/{rel}"


def main_k(result: IndexQuality) -> int:
    ks = [int(k) for k in ks_of(result.metrics, "precision", primary(result)) if k.isdigit()] or \
        [int(k) for k in ks_of(result.metrics, "recall", primary(result)) if k.isdigit()]
    return 10 if 10 in ks else max(ks)


def group_frames(results: Sequence[IndexQuality], attr: str) -> tuple[list[str], list[Any]]:
    """Per-group means of the first relevance's main metrics, one frame per index."""
    rel, k = primary(results[0]), main_k(results[0])
    cols = [f"{'recall' if rel == PRODUCT else 'precision'}@{k}/{rel}",
            ranking_metric(results[0], rel)]
    parts = []
    for res in results:
        items = res.index.items
        if attr not in items.columns:
            raise LookalikeError(f"no attribute {attr!r} to break the results down by (by=); "
                                 f"the index has: {', '.join(res.index.attributes)}")
        groups = items[attr].to_numpy()[res.catalog.query_rows]
        parts.append(group_table(res.catalog.per_query, groups, cols))
    return cols, parts


def group_tables(results: Sequence[IndexQuality], by: Sequence[str]) -> list[Table]:
    """Per value of each ``by`` attribute: queries, then the first relevance's precision@k and
    mAP@k for every index, largest groups first."""
    tables = []
    for attr in by:
        cols, parts = group_frames(results, attr)
        base = parts[0]
        header = [attr, "queries"] + [f"{c.split('/')[0]} {r.label}" for r in results
                                      for c in cols]
        rows = [[str(g), str(int(base.at[g, "queries"]))]
                + [_fmt(p.at[g, c]) if g in p.index else "" for p in parts for c in cols]
                for g in base.index]
        tables.append(Table(f"by {attr}", header, rows,
                            f"relevance: same {cols[0].split('/', 1)[1]}"))
    return tables


def label_tables(results: Sequence[IndexQuality]) -> list[Table]:
    """Query photos per label: how many, top-1 accuracy and precision@k for every index."""
    if results[0].queries is None:
        return []
    k = main_k(results[0])
    name = results[0].queries.mapping.name
    cols = [f"accuracy@1/{name}", f"precision@{k}/{name}"]
    parts = [group_table(r.queries.evaluation.per_query, r.queries.labels, cols)
             for r in results if r.queries is not None]
    mapping = results[0].queries.mapping
    header = ["label", "maps to", "queries"] + [f"{c.split('/')[0]} {r.label}"
                                                for r in results for c in cols]
    rows = [[str(g), ", ".join(mapping.labels.get(str(g), ("(not mapped)",))),
             str(int(parts[0].at[g, "queries"]))]
            + [_fmt(p.at[g, c]) if g in p.index else "" for p in parts for c in cols]
            for g in parts[0].index]
    return [Table(f"query photos by label ({name})", header, rows)]


def render_text(tables: Sequence[Table]) -> str:
    out = []
    for t in tables:
        widths = [max(len(x[i]) for x in [t.header, *t.rows]) for i in range(len(t.header))]
        out.append(f"{t.title}" + (f"  ({t.note})" if t.note else ""))
        for line in [t.header, *t.rows]:
            out.append("  " + "  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())
        out.append("")
    return "\n".join(out)


def md_table(t: Table) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = [f"### {t.title}", ""] + ([t.note, ""] if t.note else [])
    lines.append("| " + " | ".join(map(esc, t.header)) + " |")
    lines.append("|" + "|".join("---" for _ in t.header) + "|")
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in t.rows]
    return "\n".join(lines) + "\n"


def html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for r in t.rows)
    note = f"<p class=note>{html.escape(t.note)}</p>" if t.note else ""
    return f"<h3>{html.escape(t.title)}</h3>{note}<table><tr>{head}</tr>{body}</table>"
