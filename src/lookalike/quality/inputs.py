"""What quality is measured with, besides the index: outside query photos with labels, the
mapping from their labels to catalogue values, and triplet files.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lookalike.errors import LookalikeError, require_column
from lookalike.ingest.catalog import (
    PARQUET_SUFFIXES,
    Catalog,
    read_catalog,
)
from lookalike.quality.splits import group_splits

TRIPLET_COLUMNS = ("query_id", "positive_id", "negative_id")


TRIPLET_TYPES = ("positive_type", "negative_type")


@dataclass(frozen=True)
class LabelMapping:
    """Which catalogue items count as a match for a query photo with a given label:
    items whose ``attribute`` is one of ``labels[label]``."""

    source: Path
    attribute: str
    labels: dict[str, tuple[str, ...]]

    @property
    def name(self) -> str:
        return f"query:{self.attribute}"

    def masks(self, items: pd.DataFrame) -> dict[str, np.ndarray]:
        if self.attribute not in items.columns:
            raise LookalikeError(f"label mapping {self.source.name}: the index has no attribute "
                                 f"{self.attribute!r}")
        values = items[self.attribute].astype("string")
        return {lab: values.isin(vals).fillna(False).to_numpy(bool)
                for lab, vals in self.labels.items()}

    def unknown_values(self, items: pd.DataFrame) -> list[str]:
        """Mapped values that no catalogue item has (typos, or absent from this catalogue)."""
        present = set(items[self.attribute].dropna().astype(str))
        return sorted({v for vals in self.labels.values() for v in vals} - present)


def read_label_mapping(path: str | os.PathLike) -> LabelMapping:
    """Read a mapping from query labels to catalogue attribute values.

    YAML or JSON: ``{"attribute": "articleType", "labels": {"Pants": ["Trousers", "Jeans"]}}``
    (a single value may be written without the list). CSV: a header ``label,<attribute>`` and one
    row per (label, value) pair; a label may have several rows.
    """
    path = Path(path)
    if not path.is_file():
        raise LookalikeError(f"label mapping not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        df = pd.read_csv(path, dtype="string", keep_default_na=False)
        if len(df.columns) != 2 or df.columns[0] != "label":
            raise LookalikeError(f"label mapping {path.name}: expected a header 'label,<attribute>'"
                                 f", got {','.join(df.columns)}")
        attribute = str(df.columns[1])
        labels: dict[str, list[str]] = {}
        for lab, val in zip(df["label"], df[attribute]):
            labels.setdefault(str(lab), []).append(str(val))
    elif suffix in (".yaml", ".yml", ".json"):
        try:
            if suffix == ".json":
                data = json.loads(path.read_text())
            else:
                import yaml

                data = yaml.safe_load(path.read_text())
        except Exception as e:  # noqa: BLE001 (yaml and json raise different kinds)
            raise LookalikeError(f"label mapping {path.name} could not be parsed: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("attribute"), str) \
                or not isinstance(data.get("labels"), dict):
            raise LookalikeError(f"label mapping {path.name}: expected keys 'attribute' (a column "
                                 "name) and 'labels' (label → list of values)")
        attribute = data["attribute"]
        labels = {}
        for lab, vals in data["labels"].items():
            vals = [vals] if isinstance(vals, (str, int, float)) else vals
            if not isinstance(vals, list) or not vals:
                raise LookalikeError(f"label mapping {path.name}: label {lab!r} needs a value or "
                                     "a non-empty list of values")
            labels[str(lab)] = [str(v) for v in vals]
    else:
        raise LookalikeError(f"label mapping {path.name}: use a .yaml, .yml, .json or .csv file")
    if not labels:
        raise LookalikeError(f"label mapping {path.name} maps no labels")
    return LabelMapping(path, attribute, {k: tuple(v) for k, v in labels.items()})


def read_query_set(path: str | os.PathLike, *, images: str | os.PathLike | None = None,
                   image_column: str = "image_path", label_column: str = "label",
                   group_column: str | None = None, split: str | None = None,
                   test_fraction: float = 0.5, seed: int = 0) -> Catalog:
    """A table of query photos with a label each (e.g. street-photos/photos.csv). The image
    path is the query's id; rows whose photo is missing are reported in ``missing``.

    With ``group_column`` (e.g. ``sender_id``: who took the photo) and ``split`` (``train`` or
    ``test``), only the photos of that split of groups: a group lands in test with probability
    ``test_fraction`` by a seeded hash of its value (:func:`lookalike.quality.splits.group_splits`,
    as ``lookalike train --queries`` splits them), so that no person's photos are both trained
    on and measured."""
    if split is not None and group_column is None:
        raise LookalikeError("a query split needs the group column (query_split= with "
                             "query_group_column=)")
    cat = read_catalog(path, images, id_column=image_column, image_column=image_column,
                       attributes=[label_column] + ([group_column] if group_column else []),
                       allow_outside_images=True, id_rule=False)  # photos to query with
    if cat.items[label_column].isna().any():
        rows = (cat.items[label_column].isna().to_numpy().nonzero()[0][:10] + 2).tolist()
        raise LookalikeError(f"query set {Path(path).name}: rows without a label "
                             f"(column {label_column!r}) at line(s) {rows}")
    if split is None:
        return cat
    keep = np.flatnonzero(group_splits(cat.items[group_column].to_numpy(), test=test_fraction,
                                       seed=seed) == split)
    if not len(keep):
        raise LookalikeError(f"query set {Path(path).name}: no photo falls in the {split!r} "
                             f"split of {group_column!r}")
    position = {int(r): i for i, r in enumerate(keep)}
    return dataclasses.replace(
        cat, items=cat.items.iloc[keep].reset_index(drop=True),
        missing={position[r]: why for r, why in cat.missing.items() if r in position})


def read_triplets(path: str | os.PathLike, item_ids: pd.Series) -> pd.DataFrame:
    """A triplet file (.parquet or .csv with ``query_id, positive_id, negative_id`` and
    optionally ``positive_type, negative_type``), with the ids turned into index rows."""
    path = Path(path)
    if not path.is_file():
        raise LookalikeError(f"triplet file not found: {path}")
    if path.suffix.lower() in PARQUET_SUFFIXES:
        df = pd.read_parquet(path)
    elif path.suffix.lower() == ".csv":
        df = pd.read_csv(path, dtype="string", keep_default_na=False)
    else:
        raise LookalikeError(f"triplet file {path.name}: use .parquet or .csv")
    for col in TRIPLET_COLUMNS:
        require_column(df.columns, col, f"triplet file {path.name}")
    lookup = pd.Index(item_ids.astype(str))
    out = pd.DataFrame(index=df.index)
    for col in TRIPLET_COLUMNS:
        ids = df[col].astype("string").fillna("")
        rows = lookup.get_indexer(ids.to_numpy(dtype=str))
        bad = np.nonzero(rows < 0)[0]
        if len(bad):
            shown = ", ".join(f"{ids.iat[i]!r} (row {i})" for i in bad[:5])
            raise LookalikeError(f"triplet file {path.name}: {len(bad)} {col} value(s) are not "
                                 f"items of the index: {shown}")
        out[col.replace("_id", "_row")] = rows
    for col in TRIPLET_TYPES:
        if col in df.columns:
            out[col] = df[col].astype("string").to_numpy()
    if len(out) == 0:
        raise LookalikeError(f"triplet file {path.name} has no rows")
    return out
