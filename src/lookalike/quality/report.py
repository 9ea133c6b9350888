"""Evaluation results as tables (terminal, Markdown, HTML), plots, and the GOOD/BAD gallery.

One set of tables feeds all three renderings; ``write_report`` adds plots (PNG, matplotlib)
and contact sheets of the best and worst queries, chosen by the metric, each query beside its
top k with relevant results framed green and the others red.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.ingest.catalog import ITEM_ID
from lookalike.quality.gallery import TEXT_LINES, Cell, contact_sheet, describe
from lookalike.quality.metrics import PRODUCT, Evaluation
from lookalike.quality.plots import plot_groups, plot_precision
from lookalike.quality.runs import IndexQuality
from lookalike.quality.tables import (
    Table,
    group_tables,
    html_table,
    label_tables,
    main_k,
    md_table,
    metric_tables,
    primary,
    ranking_metric,
)
from lookalike.store.folder import now

GOOD, BAD = "#1a9641", "#d7191c"


# --------------------------------------------------------------------------- renderers


# --------------------------------------------------------------------------- plots


# --------------------------------------------------------------------------- plain words

def _of_ten(p: float, k: int) -> str:
    return f"{round(p * k):d} of the top {k}"


def headline(result: IndexQuality) -> list[str]:
    """What a shop owner reads first: the main numbers in words, against a random ranking."""
    m, k = result.metrics, main_k(result)
    rels = [r for r in result.catalog.hits if r != PRODUCT]
    out = []
    if rels:
        main = rels[0]
        p = m.get(f"precision@{k}/{main}", float("nan"))
        r = result.catalog.n_relevant[main].astype(float)
        counted = ~np.isnan(result.catalog.per_query[f"precision@{k}/{main}"].to_numpy(float))
        chance = float(np.mean(r[counted]) / max(result.gallery - 1, 1)) if counted.any() \
            else float("nan")
        line = f"{_of_ten(p, k)} similar items share the item's {main}"
        finer = next((x for x in rels if x.startswith(main + "+")), None)
        if finer is not None:
            extra = finer.split("+", 1)[1].replace("+", " and ")
            line += (f"; {round(m[f'precision@{k}/{finer}'] * k):d} of {k} also share its "
                     f"{extra}")
        if chance > 0:
            line += f"; {p / chance:.0f}× better than a random pick ({chance:.3f})"
        out.append(line + ".")
    if PRODUCT in result.catalog.hits:
        rec = m.get(f"recall@{k}/{PRODUCT}")
        if rec is not None and not math.isnan(rec):
            out.append(f"Another photo of the same product is in the top {k} for "
                       f"{rec:.0%} of the photos.")
    if result.queries is not None:
        name = result.queries.mapping.name
        p = m.get(f"precision@{k}/{name}", float("nan"))
        acc = m.get(f"accuracy@1/{name}", float("nan"))
        out.append(f"Outside photos: {_of_ten(p, k)} results are a kind the photo's label maps "
                   f"to, and the first result is right for {acc:.0%} of the photos.")
    return out


def recall_cap(result: IndexQuality) -> str:
    """Why recall@k of an attribute is small: at most k / (items sharing the value)."""
    rels = [r for r in result.catalog.hits if r != PRODUCT]
    if not rels:
        return ""
    k, r = main_k(result), result.catalog.n_relevant[rels[0]]
    r = r[r > 0]
    if not len(r):
        return ""
    cap = float(np.mean(np.minimum(1.0, k / r)))
    return (f"recall@{k} for {rels[0]} can reach at most {cap:.3f} on average: a query's value "
            f"is shared by {np.median(r):,.0f} items (median), of which the top {k} can hold "
            f"only {k}; read precision for attributes, recall for products.")


def mislabelled(result: IndexQuality, position: int, column: str, k: int) -> str | None:
    """The value most of a catalogue query's top ``k`` have, when it is not the query's own
    and at least 6 in 10 agree: its label is possibly wrong."""
    ev, ix = result.catalog, result.index
    rows = ev.ranking(column)[0][position, :k]
    rows = rows[rows >= 0]
    if not len(rows) or column not in ix.items.columns:
        return None
    values = ix.items[column].astype("string").to_numpy()
    own = values[int(ev.query_rows[position])]
    top, count = np.unique(values[rows].astype(str), return_counts=True)
    best = top[np.argmax(count)]
    if best != own and count.max() >= 0.6 * len(rows):
        return best
    return None


# --------------------------------------------------------------------------- gallery

def _pick(values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the ``n`` best and ``n`` worst counted values (stable, NaN left out)."""
    counted = np.nonzero(~np.isnan(values))[0]
    order = counted[np.argsort(-values[counted], kind="stable")]
    best = order[:n]
    worst = order[::-1][:n] if len(order) > n else order[len(best):][::-1]
    return best, worst


def _strip_rows(result: IndexQuality, ev: Evaluation, rel: str, score_col: str,
                positions: np.ndarray, show_k: int, shown: list[str],
                query_set: bool) -> list[list[Cell]]:
    ix = result.index
    hits = ev.hits[rel]
    rows, scores = ev.ranking(rel)
    ids = ix.items[ITEM_ID].astype(str).to_numpy()
    sheet = []
    for p in positions:
        value = ev.per_query[score_col].iat[p]
        if query_set:
            q = result.queries
            first = Cell(q.paths[p], [f"photo {q.paths[p].name}"[:26], f"label {q.labels[p]}",
                                      f"{score_col.split('/')[0]} {value:.2f}"], "#333")
        else:
            row = int(ev.query_rows[p])
            other = mislabelled(result, p, rel, show_k) if "+" not in rel and rel != PRODUCT \
                else None
            own = describe(ix.metadata(ids[row]), shown)
            lines = [f"query {ids[row]}", *own[:1], "possibly mislabelled:",
                     f"most are {other}"] if other else \
                [f"query {ids[row]}", *own[:2], f"{score_col.split('/')[0]} {value:.2f}"]
            first = Cell(ix.image_path(ids[row]), lines, "#333")
        cells = [first]
        for rank, (nb, s) in enumerate(zip(rows[p, :show_k], scores[p, :show_k]), 1):
            if nb < 0:
                break
            cells.append(Cell(ix.image_path(ids[nb]),
                              [f"#{rank} {ids[nb]}  {s:.3f}"]
                              + describe(ix.metadata(ids[nb]), shown)[:TEXT_LINES - 1],
                              GOOD if hits[p, rank - 1] else BAD))
        sheet.append(cells)
    return sheet


def _gallery_images(result: IndexQuality, out_dir: Path, n: int, show_k: int,
                    shown: list[str]) -> list[tuple[str, Path]]:
    made = []
    runs = [(False, result.catalog)]
    if result.queries is not None:
        runs.append((True, result.queries.evaluation))
    for query_set, ev in runs:
        rel = result.queries.mapping.name if query_set else primary(result)
        col = ranking_metric(result, rel)
        best, worst = _pick(ev.per_query[col].to_numpy(dtype=float), n)
        for kind, pos in (("best", best), ("worst", worst)):
            if len(pos) == 0:
                continue
            name = f"{_slug(result.label)}-{'photos' if query_set else 'catalogue'}-{kind}.jpg"
            sheet = _strip_rows(result, ev, rel, col, pos, show_k, shown, query_set)
            contact_sheet(sheet).save(out_dir / name, quality=85)
            what = "query photos" if query_set else "catalogue queries"
            made.append((f"{result.label}: {kind} {len(pos)} {what} by {col}", out_dir / name))
    return made


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in s).strip("-") or "index"


# --------------------------------------------------------------------------- the report

@dataclass
class _Contents:
    """What both renderings of a report show."""

    words: list[str]  # the headline, in plain words
    info: list[str]  # where the numbers come from
    legend: str
    tables: list[Table]
    breakdowns: list[Table]
    images: list[tuple[str, Path]]  # plots: caption, file
    gallery: list[tuple[str, Path]]  # best and worst queries: caption, file


def write_report(results: Sequence[IndexQuality], out_dir: str | os.PathLike, *,
                 by: Sequence[str] = (), gallery_queries: int = 6,
                 settings: dict[str, Any] | None = None) -> Path:
    """Write ``report.md`` and ``report.html`` (plus ``plots/`` and ``gallery/``) to
    ``out_dir``; returns the HTML file."""
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    (out / "gallery").mkdir(exist_ok=True)
    by = list(by) or _default_by(results[0])
    images: list[tuple[str, Path]] = [
        ("precision@k against k", plot_precision(results, out / "plots" / "precision_at_k.png"))]
    for attr in by:
        images.append((f"by {attr}",
                       plot_groups(results, attr, out / "plots" / f"by-{_slug(attr)}.png")))
    shown = results[0].index.display_attributes(TEXT_LINES - 1)
    show_k = min(main_k(results[0]), 10)
    gallery = [g for r in results
               for g in _gallery_images(r, out / "gallery", gallery_queries, show_k, shown)]
    info = [f"written {now()}"]
    for r in results:
        info.append(f"{r.label}: {r.index.path} ({len(r.index)} items, model {r.index.model})")
        info += [f"{r.label}: {note}" for note in r.notes]
        if r.queries is not None and r.queries.skipped:
            info.append(f"{r.label}: {len(r.queries.skipped)} query photo(s) could not be read")
    info += [f"{k}: {v}" for k, v in (settings or {}).items()]
    legend = ("Metrics: precision@k = share of the top k that is relevant; recall@k = share of all "
              "relevant items found in the top k (for product: at least one found); mAP@k = mean "
              "average precision over the top k; differences are to the first index. "
              + recall_cap(results[0]))
    words = [f"{r.label}: {line}" if len(results) > 1 else line
             for r in results for line in headline(r)]
    c = _Contents(words, info, legend, metric_tables(results),
                  group_tables(results, by) + label_tables(results), images, gallery)
    (out / "report.md").write_text(_markdown(c, out))
    page = out / "report.html"
    page.write_text(_html(c, out))
    return page


def _markdown(c: _Contents, out: Path) -> str:
    md = ["# lookalike evaluation report", "", *[f"**{line}**\n" for line in c.words],
          *[f"- {line}" for line in c.info], "", c.legend, "", "## Metrics", ""]
    md += [md_table(t) for t in c.tables]
    md += ["## Plots", ""] + [f"![{cap}]({p.relative_to(out).as_posix()})\n"
                              for cap, p in c.images]
    if c.breakdowns:
        md += ["## Breakdowns", ""] + [md_table(t) for t in c.breakdowns]
    md += ["## Best and worst queries", "",
           "Each row: the query, then its top results; green frame = relevant, red = not.", ""]
    md += [f"### {cap}\n\n![{cap}]({p.relative_to(out).as_posix()})\n" for cap, p in c.gallery]
    return "\n".join(md)


def _html(c: _Contents, out: Path) -> str:
    def figure(caption: str, path: Path) -> str:
        rel = html.escape(path.relative_to(out).as_posix())
        return (f'<figure><img src="{rel}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    body = ["<h1>lookalike evaluation report</h1>",
            *[f"<p><strong>{html.escape(line)}</strong></p>" for line in c.words], "<ul>",
            *[f"<li>{html.escape(line)}</li>" for line in c.info], "</ul>",
            f"<p>{html.escape(c.legend)}</p><h2>Metrics</h2>",
            *[html_table(t) for t in c.tables], "<h2>Plots</h2>",
            *[figure(cap, p) for cap, p in c.images]]
    if c.breakdowns:
        body += ["<h2>Breakdowns</h2>", *[html_table(t) for t in c.breakdowns]]
    body += [("<h2>Best and worst queries</h2><p>Each row: the query, then its top results; "
              f'<span style="color:{GOOD}">green frame</span> = relevant, '
              f'<span style="color:{BAD}">red</span> = not.</p>'),
             *[figure(cap, p) for cap, p in c.gallery]]
    return f"""<!doctype html><html><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lookalike evaluation report</title><style>
body{{font:14px system-ui,sans-serif;margin:16px;max-width:1400px}}
table{{border-collapse:collapse;margin:6px 0 18px}} td,th{{border:1px solid #ccc;padding:3px 8px;
text-align:right}} td:first-child,th:first-child,td:nth-child(2){{text-align:left}}
.note{{color:#555;margin:2px 0}} figure{{margin:12px 0}} img{{max-width:100%}}
figcaption{{color:#333;font-weight:600}}</style></head><body>
{"".join(body)}</body></html>"""


def _default_by(result: IndexQuality) -> list[str]:
    rel = primary(result)
    return [] if rel == PRODUCT else [rel.split("+")[0]]
