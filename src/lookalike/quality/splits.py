"""Train / validation / test splits by product, so quality is measured on unseen products.

Each product goes to a split by a seeded hash of its id, never by its position: the assignment
does not depend on the catalogue's row order, all photos of a product land in the same split,
and adding products to a catalogue does not move the existing ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from lookalike.errors import LookalikeError

SPLITS = ("train", "val", "test")


def split_unit(product_ids: Sequence[object], seed: int = 0) -> np.ndarray:
    """A number in [0, 1) per item, the same for every photo of a product."""
    key = f"lookalike{seed:07d}"[-16:]  # pandas wants a 16-character hash key
    h = pd.util.hash_pandas_object(pd.Series(product_ids, dtype="string").fillna(""),
                                   index=False, hash_key=key).to_numpy()
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def assign_splits(product_ids: Sequence[object], *, test: float = 0.2, val: float = 0.1,
                  seed: int = 0) -> np.ndarray:
    """``"train"``, ``"val"`` or ``"test"`` per item: a product lands in test with probability
    ``test``, in val with probability ``val``, otherwise in train."""
    if not (0 <= test < 1 and 0 <= val < 1 and test + val < 1):
        raise LookalikeError(f"split fractions must leave room for training: test={test}, "
                             f"val={val}")
    u = split_unit(product_ids, seed)
    return np.where(u < test, "test", np.where(u < test + val, "val", "train"))


def photo_splits(item_ids: Sequence[object], product_ids: Sequence[object], *,
                 test: float = 0.2, val: float = 0.1, seed: int = 0) -> np.ndarray:
    """Splits by photo (a seeded hash of the item id) that keep every product in training:
    each product's photo with the lowest hash stays in ``"train"``, its others land in test or
    val with those probabilities. Validation then measures recognising known products from
    new photos."""
    out = assign_splits(item_ids, test=test, val=val, seed=seed)
    u = split_unit(item_ids, seed)
    first = pd.Series(u).groupby(pd.Series(product_ids, dtype="string").fillna("").to_numpy()
                                 ).idxmin().to_numpy()
    out[first] = "train"
    return out


QUERY_SPLITS = ("train", "test")


def group_splits(groups: Sequence[object], *, test: float = 0.5, seed: int = 0) -> np.ndarray:
    """``"train"`` or ``"test"`` per outside photo by a seeded hash of its group (e.g. who took
    it): all photos of a group land on the same side."""
    if not 0 < test < 1:
        raise LookalikeError(f"the test share of groups must be between 0 and 1, got {test}")
    return np.where(split_unit(groups, seed) < test, "test", "train")
