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

from lookalike.errors import LookalikeError
from lookalike.ingest.catalog import ITEM_ID
from lookalike.quality.gallery import TEXT_LINES, Cell, contact_sheet, describe
from lookalike.quality.metrics import PRODUCT, Evaluation, group_table
from lookalike.quality.runs import IndexQuality
from lookalike.store.folder import now

GOOD, BAD = "#1a9641", "#d7191c"


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


def _ks(metrics: dict[str, float], metric: str, rel: str) -> list[str]:
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
        cols = list(dict.fromkeys(k for n in names for k in _ks(metrics[0], n, rel)))
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


def _primary(result: IndexQuality) -> str:
    return next(iter(result.catalog.hits))


def _ranking_metric(result: IndexQuality, rel: str) -> str:
    """The per-query metric that orders queries from best to worst for ``rel``."""
    return f"mAP@R/{rel}" if rel == PRODUCT else f"mAP@{_k_main(result)}/{rel}"


def _k_main(result: IndexQuality) -> int:
    ks = [int(k) for k in _ks(result.metrics, "precision", _primary(result)) if k.isdigit()] or \
        [int(k) for k in _ks(result.metrics, "recall", _primary(result)) if k.isdigit()]
    return 10 if 10 in ks else max(ks)


def _group_frames(results: Sequence[IndexQuality], attr: str) -> tuple[list[str], list[Any]]:
    """Per-group means of the first relevance's main metrics, one frame per index."""
    rel, k = _primary(results[0]), _k_main(results[0])
    cols = [f"{'recall' if rel == PRODUCT else 'precision'}@{k}/{rel}",
            _ranking_metric(results[0], rel)]
    parts = []
    for res in results:
        items = res.index.items
        if attr not in items.columns:
            raise LookalikeError(f"--by {attr}: no such attribute (the index has: "
                                 f"{', '.join(res.index.attributes)})")
        groups = items[attr].to_numpy()[res.catalog.query_rows]
        parts.append(group_table(res.catalog.per_query, groups, cols))
    return cols, parts


def group_tables(results: Sequence[IndexQuality], by: Sequence[str]) -> list[Table]:
    """Per value of each ``by`` attribute: queries, then the first relevance's precision@k and
    mAP@k for every index, largest groups first."""
    tables = []
    for attr in by:
        cols, parts = _group_frames(results, attr)
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
    k = _k_main(results[0])
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


# --------------------------------------------------------------------------- renderers

def render_text(tables: Sequence[Table]) -> str:
    out = []
    for t in tables:
        widths = [max(len(x[i]) for x in [t.header, *t.rows]) for i in range(len(t.header))]
        out.append(f"{t.title}" + (f"  ({t.note})" if t.note else ""))
        for line in [t.header, *t.rows]:
            out.append("  " + "  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())
        out.append("")
    return "\n".join(out)


def _md_table(t: Table) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = [f"### {t.title}", ""] + ([t.note, ""] if t.note else [])
    lines.append("| " + " | ".join(map(esc, t.header)) + " |")
    lines.append("|" + "|".join("---" for _ in t.header) + "|")
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in t.rows]
    return "\n".join(lines) + "\n"


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for r in t.rows)
    note = f"<p class=note>{html.escape(t.note)}</p>" if t.note else ""
    return f"<h3>{html.escape(t.title)}</h3>{note}<table><tr>{head}</tr>{body}</table>"


# --------------------------------------------------------------------------- plots

def _plot_precision(results: Sequence[IndexQuality], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rels = relevances(results[0])
    cols = min(3, len(rels))
    rows = math.ceil(len(rels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, rel in zip(axes.ravel(), rels):
        metric = "recall" if rel == PRODUCT else "precision"
        for res in results:
            m = res.metrics
            ks = [int(k) for k in _ks(m, metric, rel) if k.isdigit()]
            ax.plot(ks, [m[f"{metric}@{k}/{rel}"] for k in ks], marker="o", label=res.label)
        ax.set_title(rel, fontsize=10)
        ax.set_xlabel("k")
        ax.set_ylabel(f"{metric}@k")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(rels):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _plot_groups(results: Sequence[IndexQuality], attr: str, out: Path, top: int = 25) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols, parts = _group_frames(results, attr)
    groups = list(parts[0].index[:top])[::-1]
    n = len(results)
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(groups) * max(1.0, n / 2) + 1.4))
    height = 0.8 / n
    y = np.arange(len(groups))
    for i, (res, part) in enumerate(zip(results, parts)):
        vals = part[cols[0]].reindex(groups).fillna(0).to_numpy()
        ax.barh(y + i * height - 0.4 + height / 2, vals, height, label=res.label)
    sizes = parts[0]["queries"]
    ax.set_yticks(y, [f"{g} ({int(sizes[g])})" for g in groups], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel(cols[0].replace("/", " — same "))
    ax.set_title(f"by {attr} (largest {len(groups)} groups; queries in brackets)", fontsize=9)
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# --------------------------------------------------------------------------- plain words

def _of_ten(p: float, k: int) -> str:
    return f"{round(p * k):d} of the top {k}"


def headline(result: IndexQuality) -> list[str]:
    """What a shop owner reads first: the main numbers in words, against a random ranking."""
    m, k = result.metrics, _k_main(result)
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
    k, r = _k_main(result), result.catalog.n_relevant[rels[0]]
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
        rel = result.queries.mapping.name if query_set else _primary(result)
        col = _ranking_metric(result, rel)
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

def write_report(results: Sequence[IndexQuality], out_dir: str | os.PathLike, *,
                 by: Sequence[str] = (), gallery_queries: int = 6,
                 settings: dict[str, Any] | None = None) -> Path:
    """Write ``report.md`` and ``report.html`` (plus ``plots/`` and ``gallery/``) to
    ``out_dir``; returns the HTML file."""
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    (out / "gallery").mkdir(exist_ok=True)
    by = list(by) or _default_by(results[0])
    tables = metric_tables(results)
    groups = group_tables(results, by)
    labels = label_tables(results)
    plot = _plot_precision(results, out / "plots" / "precision_at_k.png")
    images: list[tuple[str, Path]] = [("precision@k against k", plot)]
    for attr in by:
        images.append((f"by {attr}",
                       _plot_groups(results, attr, out / "plots" / f"by-{_slug(attr)}.png")))
    shown = results[0].index.display_attributes(TEXT_LINES - 1)
    show_k = min(_k_main(results[0]), 10)
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

    md = ["# lookalike evaluation report", "", *[f"**{line}**\n" for line in words],
          *[f"- {line}" for line in info], "", legend, "", "## Metrics", ""]
    md += [_md_table(t) for t in tables]
    md += ["## Plots", ""] + [f"![{c}]({p.relative_to(out).as_posix()})\n" for c, p in images]
    if groups or labels:
        md += ["## Breakdowns", ""] + [_md_table(t) for t in groups + labels]
    md += ["## Best and worst queries", "",
           "Each row: the query, then its top results; green frame = relevant, red = not.", ""]
    md += [f"### {c}\n\n![{c}]({p.relative_to(out).as_posix()})\n" for c, p in gallery]
    (out / "report.md").write_text("\n".join(md))

    def figure(caption: str, path: Path) -> str:
        rel = html.escape(path.relative_to(out).as_posix())
        return (f'<figure><img src="{rel}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    body = ["<h1>lookalike evaluation report</h1>",
            *[f"<p><strong>{html.escape(line)}</strong></p>" for line in words], "<ul>",
            *[f"<li>{html.escape(line)}</li>" for line in info], "</ul>",
            f"<p>{html.escape(legend)}</p><h2>Metrics</h2>",
            *[_html_table(t) for t in tables], "<h2>Plots</h2>",
            *[figure(c, p) for c, p in images]]
    if groups or labels:
        body += ["<h2>Breakdowns</h2>", *[_html_table(t) for t in groups + labels]]
    body += [("<h2>Best and worst queries</h2><p>Each row: the query, then its top results; "
              f'<span style="color:{GOOD}">green frame</span> = relevant, '
              f'<span style="color:{BAD}">red</span> = not.</p>'),
             *[figure(c, p) for c, p in gallery]]
    page = out / "report.html"
    page.write_text(f"""<!doctype html><html><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lookalike evaluation report</title><style>
body{{font:14px system-ui,sans-serif;margin:16px;max-width:1400px}}
table{{border-collapse:collapse;margin:6px 0 18px}} td,th{{border:1px solid #ccc;padding:3px 8px;
text-align:right}} td:first-child,th:first-child,td:nth-child(2){{text-align:left}}
.note{{color:#555;margin:2px 0}} figure{{margin:12px 0}} img{{max-width:100%}}
figcaption{{color:#333;font-weight:600}}</style></head><body>
{"".join(body)}</body></html>""")
    return page


def _default_by(result: IndexQuality) -> list[str]:
    rel = _primary(result)
    return [] if rel == PRODUCT else [rel.split("+")[0]]
