import numpy as np
import pandas as pd
import pytest

from lookalike.evaluate import attribute_labels, precision_at_k


def test_precision_at_k_by_hand() -> None:
    labels = np.array(["a", "a", "b", "b", "b"])
    nb = np.array([[1, 2], [2, 3], [3, 0], [4, 2], [0, 1]])
    # item 0: [a✓, b✗] → 1/2 at k=2, 1 at k=1; 1: [b, b] → 0; 2: [b✓, a] → 1/2; 3: [b, b] → 1; 4: 0
    assert precision_at_k(nb, labels, 1) == pytest.approx((1 + 0 + 1 + 1 + 0) / 5)
    assert precision_at_k(nb, labels, 2) == pytest.approx((0.5 + 0 + 0.5 + 1 + 0) / 5)
    with pytest.raises(ValueError, match="at least 3 neighbours"):
        precision_at_k(nb, labels, 3)


def test_attribute_labels_combine_columns() -> None:
    items = pd.DataFrame({"t": ["Shirts", "Shirts"], "c": ["Blue", None], "y": [2011, 2012]})
    assert attribute_labels(items, ["t", "c"]).tolist() == ["Shirts|Blue", "Shirts|"]
    assert attribute_labels(items, ["y"]).tolist() == ["2011", "2012"]
