"""Read a catalogue (CSV or Parquet), map its columns, validate it.

Every row keeps its position (``row``) from the file; rows whose image is missing are
reported, never dropped silently and never allowed to shift other rows.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lookalike.errors import CatalogError, ImageError, require_column
from lookalike.ingest.checks import ID_RULE, id_problem, shown
from lookalike.ingest.images import file_digest, is_uri, join_location, read_bytes

ITEM_ID = "item_id"
PRODUCT_ID = "product_id"
IMAGE_PATH = "image_path"
ROW = "row"
PHOTO_DIGEST = "photo_sha1"  # items column of an index: the photo file's digest
DEFAULT_CATEGORY = "articleType"  # the category column the CLI takes where a catalogue has it
DEFAULT_COLOR = "baseColour"  # the colour column the CLI takes where a catalogue has it
RESERVED = (ROW, ITEM_ID, PRODUCT_ID, IMAGE_PATH, PHOTO_DIGEST)


@dataclass(frozen=True)
class Catalog:
    """A validated catalogue.

    ``items`` has the columns ``item_id``, ``product_id``, ``image_path`` (as written in the
    catalogue, relative to ``images_root``) and then the attribute columns under their own names.
    ``missing`` maps the positions of rows whose image file does not exist to a reason.
    """

    source: Path
    images_root: Path | str  # a local folder, or a filesystem URI (s3://bucket/photos)
    items: pd.DataFrame
    attributes: tuple[str, ...]
    columns: dict[str, str | None]
    missing: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    def image_file(self, row: int) -> Path | str:
        return resolve_image(self.images_root, self.items[IMAGE_PATH].iat[row])


def photo_digest(location: str | os.PathLike) -> str | None:
    """SHA-1 of a photo file's bytes (None if it cannot be read): a changed photo, a new digest."""
    try:
        return file_digest(read_bytes(location))
    except ImageError:
        return None


def resolve_image(root: Path | str, rel: str) -> Path | str:
    """A catalogue's image path under its images root (a folder or a URI)."""
    return join_location(root, rel)


PARQUET_SUFFIXES = (".parquet", ".pq")


def _read_table(path: Path, text_columns: list[str]) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if not path.exists():
        raise CatalogError(f"catalogue file not found: {path}")
    if suffix in (".csv", ".tsv", ".txt"):
        sep = "\t" if suffix == ".tsv" else ","
        try:
            header = pd.read_csv(path, sep=sep, nrows=0).columns
            dtypes = {c: "string" for c in text_columns if c in header}
            # ids and paths stay text exactly as written (leading zeros, long numbers)
            return pd.read_csv(path, sep=sep, dtype=dtypes, keep_default_na=False,
                               na_values=[""])
        except pd.errors.EmptyDataError:
            raise CatalogError(f"catalogue {path} is empty (no header, no rows)") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as e:
            raise CatalogError(f"catalogue {path} could not be parsed as CSV: {e}") from None
    if suffix in PARQUET_SUFFIXES:
        try:
            return pd.read_parquet(path)
        except Exception as e:  # noqa: BLE001 (pyarrow raises many kinds)
            raise CatalogError(f"catalogue {path} could not be read as Parquet: {e}") from None
    raise CatalogError(f"catalogue {path}: unsupported file type {suffix!r} "
                       "(use .csv, .tsv or .parquet)")


def _as_text(values: pd.Series) -> pd.Series:
    """Ids as text, exactly as a person reads them (15970, not 15970.0)."""
    if pd.api.types.is_float_dtype(values) and values.dropna().mod(1).eq(0).all():
        values = values.astype("Int64")
    return values.astype("string")


def read_catalog(path: str | os.PathLike, images: str | os.PathLike | None = None, *,
                 id_column: str = "id", image_column: str = "image_path",
                 product_column: str | None = None, attributes: list[str] | None = None,
                 category_column: str | None = None, color_column: str | None = None,
                 allow_outside_images: bool = False, id_rule: bool = True) -> Catalog:
    """Read and validate a catalogue; image paths are relative to ``images`` (default: the
    catalogue's folder), which may be a filesystem URI (``s3://bucket/photos``): then photos
    are not looked for here, and one that is missing is reported when it is read.
    ``category_column`` names the attribute that says what kind of item each is (e.g.
    articleType): the category vote re-ranks by it; ``color_column`` its colour (training
    uses both). A local photo path that leads outside ``images`` (``../x.jpg``, an absolute
    path, a link out of it) is a bad row, reported and left out, unless
    ``allow_outside_images``: the server shows catalogue photos to anyone who asks. Ids follow
    the item id rule (lookalike.ingest.checks) unless ``id_rule`` is off (a set of query photos,
    named by their paths, is never served)."""
    path = Path(path)
    text_cols = [c for c in (id_column, image_column, product_column) if c]
    df = _read_table(path, text_cols)
    for column, param in ((id_column, "id_column="), (image_column, "image_column="),
                          (product_column, "product_column=")):
        if column:
            require_column(df.columns, column, f"{param} of {path.name}", CatalogError)
    if attributes is None:
        attributes = [c for c in df.columns if c not in (id_column, image_column, product_column)]
    for a in attributes:
        require_column(df.columns, a, f"attributes= of {path.name}", CatalogError)
    clash = [a for a in attributes if a in RESERVED and a not in (id_column, image_column,
                                                                  product_column)]
    if clash:
        raise CatalogError(f"attribute column(s) {clash} clash with lookalike's own column names "
                           f"{list(RESERVED)}; rename them or leave them out with attributes=")
    if len(df) == 0:
        raise CatalogError(f"catalogue {path} has a header but no rows")

    ids = _checked_ids(_as_text(df[id_column]), path, id_column, id_rule)
    items = pd.DataFrame({ITEM_ID: ids.to_numpy()})
    items[PRODUCT_ID] = (_as_text(df[product_column]).to_numpy() if product_column
                         else items[ITEM_ID].to_numpy())
    items[IMAGE_PATH] = df[image_column].astype("string").to_numpy()
    for a in attributes:
        items[a] = df[a].to_numpy()
    no_product = items[PRODUCT_ID].isna()
    items.loc[no_product, PRODUCT_ID] = items.loc[no_product, ITEM_ID]

    remote = is_uri(images)
    root: Path | str = str(images) if remote else Path(images) if images is not None \
        else path.parent
    if not remote and not Path(root).is_dir():
        raise CatalogError(f"image folder not found: {root} (images=)")
    missing = _missing_photos(items[IMAGE_PATH].tolist(), root, remote, image_column,
                              allow_outside_images)
    if len(missing) == len(items):
        first = next(iter(missing.values()))
        raise CatalogError(f"none of the {len(items)} images of {path.name} can be found "
                           f"under {root} (first: {first}); check images= and image_column=")
    cat = Catalog(source=path, images_root=root if remote else Path(root).resolve(), items=items,
                  attributes=tuple(attributes),
                  columns={"id": id_column, "image": image_column, "product": product_column},
                  missing=missing)
    return with_roles(cat, category=category_column, color=color_column)


def _checked_ids(ids: pd.Series, path: Path, id_column: str, id_rule: bool) -> pd.Series:
    """The item ids, refused when one is empty, breaks the id rule or comes twice; each named
    by its CSV line (header: line 1) or Parquet row."""
    is_parquet = path.suffix.lower() in PARQUET_SUFFIXES
    where = "row" if is_parquet else "line"

    def line(i: int) -> int:
        return int(i) if is_parquet else int(i) + 2

    empty = ids.isna() | (ids.str.strip() == "")
    if empty.any():
        rows = [line(i) for i in empty.to_numpy().nonzero()[0][:10]]
        raise CatalogError(f"{int(empty.sum())} row(s) of {path.name} have no item id "
                           f"(column {id_column!r}) at {where}(s) {rows}")
    bad = [(i, problem) for i, v in enumerate(ids.tolist())
           if id_rule and (problem := id_problem(v))]
    if bad:
        listed = "; ".join(f"{where} {line(i)}: {shown(ids.iat[i])} {problem}"
                           for i, problem in bad[:5])
        raise CatalogError(f"{len(bad)} item id(s) of {path.name} (column {id_column!r}) break "
                           f"the id rule: {listed}. {ID_RULE}")
    dup = ids.duplicated(keep=False)
    if dup.any():
        groups = (pd.Series(range(len(ids)))[dup.to_numpy()]
                  .groupby(ids[dup].to_numpy()).apply(list))
        dups = "; ".join(f"{k!r} at {where}s {[line(i) for i in v]}"
                         for k, v in list(groups.items())[:5])
        raise CatalogError(f"{len(groups)} duplicate item id(s) in {path.name} "
                           f"(column {id_column!r}): {dups}")
    return ids


def _missing_photos(paths: list[Any], root: Path | str, remote: bool, image_column: str,
                    allow_outside: bool) -> dict[int, str]:
    """Rows whose photo cannot be used, with the reason: no path, a local file URI, a file
    that is not there, or a path that leads outside the image folder (unless allowed)."""
    missing: dict[int, str] = {}
    inside = None if remote else Path(root).resolve()
    for i, rel in enumerate(paths):
        if pd.isna(rel) or not str(rel).strip():
            missing[i] = f"no image path (column {image_column!r} is empty)"
        elif is_uri(rel) and str(rel).lower().startswith("file:") and not allow_outside:
            missing[i] = (f"image path {rel!r} is a local file URI; give paths under the image "
                          "folder (or allow it with allow_outside_images=)")
        elif remote or is_uri(rel):
            continue
        elif not Path(resolve_image(root, rel)).is_file():
            missing[i] = f"image file missing: {resolve_image(root, rel)}"
        elif not allow_outside and inside is not None and \
                not Path(resolve_image(root, rel)).resolve().is_relative_to(inside):
            missing[i] = (f"image path {rel!r} leads outside the image folder {inside} "
                          "(allow it with allow_outside_images=)")
    return missing


def with_roles(cat: Catalog, **roles: str | None) -> Catalog:
    """``cat`` with these role columns (``category``, ``color``: one of its attributes, or
    None) recorded in its column mapping."""
    for role, column in roles.items():
        if column is not None and column not in cat.attributes:
            raise CatalogError(f"{role} column {column!r} (--{role}-column) is not an "
                               f"attribute of {cat.source.name}; attributes: "
                               f"{', '.join(cat.attributes) or '(none)'}")
    return replace(cat, columns={**cat.columns, **roles})


def label_codes(items: pd.DataFrame, attributes: Sequence[str]) -> np.ndarray:
    """One integer per item for the combination of ``attributes`` (-1 where any is missing)."""
    missing = np.zeros(len(items), bool)
    parts = []
    for a in attributes:
        require_column(items.columns, a, "an attribute")
        s = items[a].astype("string")
        missing |= (s.isna() | (s.str.strip() == "")).to_numpy()
        parts.append(s.fillna(""))
    joined = parts[0] if len(parts) == 1 else pd.Series(
        ["\x1f".join(t) for t in zip(*(p.tolist() for p in parts))])
    codes = pd.factorize(joined.to_numpy(dtype=object))[0].astype(np.int64)
    codes[missing] = -1
    return codes


def _distinct(column: pd.Series) -> int:
    """How many distinct values ``column`` has; a list or an object (only a journal written
    before values were checked can hold one: lookalike.ingest.checks) counts by its text."""
    return int(_hashable(column).nunique())


def telling_attributes(items: pd.DataFrame, attributes: Sequence[str], n: int = 5) -> list[str]:
    """The ``n`` attributes that tell items apart best: most distinct values first, leaving
    out near-unique ones such as names."""
    counts = {a: _distinct(items[a]) for a in attributes}
    useful = [a for a in attributes if 1 < counts[a] <= max(2, len(items) // 2)]
    return sorted(useful, key=lambda a: -counts[a])[:n]


#: words in a column's name that say it is not about how an item looks (seasons, years, dates)
NON_VISUAL = ("season", "year", "date", "time", "price")
#: a filter with at most this many values is read at a glance (a few genders, not 40 colours)
FEW_VALUES = 12


def visual_attributes(items: pd.DataFrame, attributes: Sequence[str]) -> list[str]:
    """The categorical attributes that say how an item looks: at least 2 values, at least half
    of the items share their value with another item (names and ids, nearly unique, are left
    out), not numeric and not named like a season, year, date, time or price."""
    out = []
    for a in attributes:
        if pd.api.types.is_numeric_dtype(items[a]) or \
                any(w in str(a).lower() for w in NON_VISUAL):
            continue
        s = _hashable(items[a])
        counts = s.map(s.value_counts())
        if s.nunique() >= 2 and (counts >= 2).mean() >= 0.5:
            out.append(a)
    return out


def _hashable(s: pd.Series) -> pd.Series:
    """``s``, or its values as text where some cannot be counted (a list or an object, which
    only a journal written before values were checked can hold)."""
    try:
        s.nunique()
    except TypeError:
        return s.where(s.isna(), s.astype(str))
    return s


def filter_attributes(items: pd.DataFrame, attributes: Sequence[str],
                      roles: Sequence[str | None] = (), n: int = 4,
                      max_values: int = 100) -> list[str]:
    """The attributes a shopper filters by, most useful first: the roles given (category,
    colour) where they qualify; then the other visual attributes that the roles do not imply
    already (a subCategory each articleType has one of adds nothing), those with a few values
    (up to :data:`FEW_VALUES`) first, the ones that split the items most evenly (entropy)
    first: gender before usage. None with more than ``max_values`` values."""
    visual = [a for a in visual_attributes(items, attributes)
              if _distinct(items[a]) <= max_values]
    first = [r for r in roles if r in visual]

    def implied(a: str) -> bool:
        return any(_hashable(items[a]).groupby(_hashable(items[r]).to_numpy(), observed=True)
                   .nunique().max() <= 1 for r in first)

    def spread(a: str) -> float:
        share = _hashable(items[a]).astype(str).value_counts(normalize=True).to_numpy()
        return float(-(share * np.log2(share)).sum())

    rest = sorted((a for a in visual if a not in first and not implied(a)),
                  key=lambda a: (_distinct(items[a]) > FEW_VALUES, -spread(a)))
    return [*first, *rest][:n]
