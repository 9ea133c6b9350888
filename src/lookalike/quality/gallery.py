"""Contact sheets: each query beside its top-k, with ids, scores and metadata (PNG or HTML)."""

from __future__ import annotations

import base64
import html
import io
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from lookalike.api import Hit, Index
from lookalike.errors import ImageError, LookalikeError
from lookalike.ingest.images import load_image
from lookalike.ingest.preprocess import Preprocess

THUMB = 160
TEXT_LINES = 4
LINE_H = 14


@dataclass
class GalleryRow:
    title: str
    image: Path
    metadata: dict[str, Any]
    hits: list[Hit]


def gallery_rows(index: Index, item_ids: Sequence[object] = (), images: Sequence[str] = (),
                 k: int = 8, **query: Any) -> list[GalleryRow]:
    """Run the queries: catalogue items by id, and/or photos by path."""
    rows = [GalleryRow(f"query {i}", index.image_path(i), index.metadata(i),
                       index.similar(i, k, **query)) for i in item_ids]
    rows += [GalleryRow(f"photo {Path(p).name}", Path(p), {}, index.search(p, k, **query))
             for p in images]
    if not rows:
        raise LookalikeError("give at least one item id or photo for the gallery")
    return rows


def _thumb(path: Path | Image.Image) -> Image.Image:
    try:
        img = load_image(path, draft_size=THUMB).copy()
    except ImageError as e:
        img = Image.new("RGB", (THUMB, THUMB), (235, 235, 235))
        ImageDraw.Draw(img).text((6, THUMB // 2), f"unreadable:\n{e}"[:60], fill=(150, 0, 0))
    img.thumbnail((THUMB, THUMB))
    cell = Image.new("RGB", (THUMB, THUMB), "white")
    cell.paste(img, ((THUMB - img.width) // 2, (THUMB - img.height) // 2))
    return cell


def describe(meta: dict[str, Any], columns: Sequence[str]) -> list[str]:
    """The values of ``columns`` in ``meta`` as caption lines, empty ones left out."""
    return [str(meta[c]) for c in columns if meta.get(c) not in (None, "")]


@dataclass
class Cell:
    """One picture of a contact sheet: the photo, caption lines, and its frame colour."""

    image: Path | Image.Image
    lines: list[str]
    frame: str = "#999"


def contact_sheet(rows: Sequence[Sequence[Cell]]) -> Image.Image:
    """Rows of thumbnails with captions; the first cell of a row stands a little apart."""
    k = max((len(r) for r in rows), default=1)
    pad, text_h = 8, TEXT_LINES * LINE_H + 4
    cell_w, cell_h = THUMB + pad, THUMB + text_h + pad
    sheet = Image.new("RGB", (pad + cell_w * k + pad, pad + cell_h * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=11)
    for r, row in enumerate(rows):
        for col, cell in enumerate(row):
            x, y = pad + col * cell_w + (pad if col else 0), pad + r * cell_h
            sheet.paste(_thumb(cell.image), (x, y))
            draw.rectangle([x - 2, y - 2, x + THUMB + 1, y + THUMB + 1], outline=cell.frame,
                           width=3)
            for j, line in enumerate(cell.lines[:TEXT_LINES]):
                draw.text((x, y + THUMB + 4 + j * LINE_H), line[:26], fill="black", font=font)
    return sheet


def render_png(index: Index, rows: list[GalleryRow], out: Path) -> None:
    shown = index.display_attributes(TEXT_LINES - 1)
    sheet = [[Cell(row.image, [row.title] + describe(row.metadata, shown), "#d22")]
             + [Cell(index.image_path(h.item_id),
                     [f"#{c} {h.item_id}  {h.score:.3f}"] + describe(h.metadata, shown))
                for c, h in enumerate(row.hits, start=1)]
             for row in rows]
    contact_sheet(sheet).save(out)


def preview_preprocess(photos: Sequence[str | os.PathLike], pre: Preprocess,
                       out: str | os.PathLike) -> Path:
    """A PNG with one row per photo: the photo, each step of ``pre`` alone, then all of them
    together, each captioned with what the step did or why it did nothing."""
    if not photos:
        raise LookalikeError("give at least one photo to preview")
    if not pre:
        raise LookalikeError("name the steps to preview, e.g. face,crop,background")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise LookalikeError(f"preview output {out}: use a .png file name")
    variants = [replace(pre, steps=(s,)) for s in pre.steps]
    if len(pre.steps) > 1:
        variants.append(pre)
    sheet = []
    for photo in photos:
        try:
            img = load_image(photo)
        except ImageError as e:
            raise type(e)(f"photo {photo}: {e}") from None
        row = [Cell(img, [Path(photo).name[:26], f"{img.width}x{img.height}"], "#d22")]
        for v in variants:
            done = v.apply(img)
            lines = [str(v)] + [textwrap.shorten(f"{s}: {done.notes[s]}", 26, placeholder="…")
                                for s in v.steps]
            row.append(Cell(done.image, lines, "#2a2" if any(done.done.values()) else "#999"))
        sheet.append(row)
    out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(sheet).save(out)
    return out


def _data_uri(path: Path) -> str:
    buf = io.BytesIO()
    _thumb(path).save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def render_html(index: Index, rows: list[GalleryRow], out: Path) -> None:
    def figure(path: Path, caption: str, meta: dict[str, Any], cls: str) -> str:
        details = "<br>".join(html.escape(f"{k}: {v}") for k, v in meta.items()
                              if v not in (None, ""))
        return (f'<figure class="{cls}"><img src="{_data_uri(path)}" alt="{html.escape(caption)}">'
                f"<figcaption><b>{html.escape(caption)}</b><br>{details}</figcaption></figure>")

    parts = []
    for row in rows:
        cells = [figure(row.image, row.title, row.metadata, "query")]
        cells += [figure(index.image_path(h.item_id), f"#{i} {h.item_id} · {h.score:.3f}",
                         h.metadata, "hit") for i, h in enumerate(row.hits, start=1)]
        parts.append(f'<section>{"".join(cells)}</section>')
    out.write_text(f"""<!doctype html><html><head><meta charset="utf-8">
<title>lookalike gallery — {html.escape(str(index.path.name))}</title>
<style>body{{font:12px sans-serif;margin:12px}} section{{display:flex;gap:8px;margin-bottom:16px;
overflow-x:auto}} figure{{margin:0;width:{THUMB}px;flex:none}} img{{width:{THUMB}px;
height:{THUMB}px;object-fit:contain;border:2px solid #999}} .query img{{border-color:#d22}}
figcaption{{word-wrap:break-word}}</style></head><body>
<h1>lookalike gallery</h1><p>index {html.escape(str(index.path))} · model {index.model}</p>
{"".join(parts)}</body></html>""")


def write_gallery(index: Index, out: str | os.PathLike, item_ids: Sequence[object] = (),
                  images: Sequence[str] = (), k: int = 8, **query: Any) -> Path:
    """Write a contact sheet to ``out`` (.png or .html)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".png", ".html", ".htm"):
        raise LookalikeError(f"gallery output {out}: use a .png or .html file name")
    rows = gallery_rows(index, item_ids, images, k, **query)
    out.parent.mkdir(parents=True, exist_ok=True)
    (render_png if suffix == ".png" else render_html)(index, rows, out)
    return out
