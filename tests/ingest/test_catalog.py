from pathlib import Path

import pandas as pd
import pytest

from lookalike import CatalogError, read_catalog


def _csv(tmp_path: Path, text: str) -> Path:
    (tmp_path / "a.jpg").write_bytes(b"x")
    p = tmp_path / "cat.csv"
    p.write_text(text)
    return p


def test_reads_columns_and_keeps_every_row(tiny_catalog: Path) -> None:
    cat = read_catalog(tiny_catalog, id_column="sku", image_column="file",
                       product_column="product")
    assert len(cat) == 30
    assert cat.attributes == ("type", "colour", "gender")
    assert list(cat.items.columns[:3]) == ["item_id", "product_id", "image_path"]
    assert cat.items["item_id"].iloc[0] == "P1-0"
    assert (cat.items["product_id"] == "P1").sum() == 9  # several photos per product
    assert list(cat.missing) == [29]
    assert "image file missing" in cat.missing[29] and "does-not-exist.jpg" in cat.missing[29]


def test_missing_column_lists_columns_found(tiny_catalog: Path) -> None:
    with pytest.raises(CatalogError) as e:
        read_catalog(tiny_catalog)  # default id column "id" does not exist
    msg = str(e.value)
    # a library error names the parameter, not a command-line flag (the CLI maps it)
    assert "'id'" in msg and "id_column=" in msg and "--" not in msg
    assert "the columns are: sku, product, type, colour, gender, file" in msg


def test_missing_attribute_and_product_columns(tiny_catalog: Path) -> None:
    with pytest.raises(CatalogError, match="'size' .*attributes=.*the columns are"):
        read_catalog(tiny_catalog, id_column="sku", image_column="file", attributes=["size"])
    with pytest.raises(CatalogError, match="'style' .*product_column="):
        read_catalog(tiny_catalog, id_column="sku", image_column="file", product_column="style")


def test_duplicate_ids_are_named_with_lines(tmp_path: Path) -> None:
    p = _csv(tmp_path, "id,image_path\n7,a.jpg\n8,a.jpg\n7,a.jpg\n")
    with pytest.raises(CatalogError, match=r"1 duplicate item id\(s\).*'7' at lines \[2, 4\]"):
        read_catalog(p)


def test_empty_catalogue(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="header but no rows"):
        read_catalog(_csv(tmp_path, "id,image_path\n"))
    with pytest.raises(CatalogError, match="is empty"):
        read_catalog(_csv(tmp_path, ""))


def test_empty_id_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"no item id .* line\(s\) \[3\]"):
        read_catalog(_csv(tmp_path, "id,image_path\n1,a.jpg\n,a.jpg\n"))


def test_all_images_missing_is_an_error(tmp_path: Path) -> None:
    p = _csv(tmp_path, "id,image_path\n1,nope.jpg\n2,gone.jpg\n")
    with pytest.raises(CatalogError, match="none of the 2 images.*check images="):
        read_catalog(p)


def test_empty_image_path_is_reported(tmp_path: Path) -> None:
    cat = read_catalog(_csv(tmp_path, "id,image_path\n1,a.jpg\n2,\n"))
    assert cat.missing == {1: "no image path (column 'image_path' is empty)"}


def test_ids_stay_text_as_written(tmp_path: Path) -> None:
    cat = read_catalog(_csv(tmp_path, "id,image_path,year\n007,a.jpg,2011\n12345678901234567890,a.jpg,2012\n"))
    assert cat.items["item_id"].tolist() == ["007", "12345678901234567890"]
    assert cat.items["year"].tolist() == [2011, 2012]


def test_parquet_and_images_folder(tiny_catalog: Path, tmp_path: Path) -> None:
    df = pd.read_csv(tiny_catalog)
    df["sku_num"] = range(len(df))
    pq = tmp_path / "elsewhere" / "cat.parquet"
    pq.parent.mkdir()
    df.to_parquet(pq)
    cat = read_catalog(pq, tiny_catalog.parent, id_column="sku_num",
                       image_column="file", attributes=["type", "colour"])
    assert cat.items["item_id"].tolist()[:3] == ["0", "1", "2"]
    assert cat.attributes == ("type", "colour")
    assert len(cat.missing) == 1
    with pytest.raises(CatalogError, match="image folder not found"):
        read_catalog(pq, tmp_path / "nowhere", id_column="sku_num", image_column="file")


def test_unsupported_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="not found"):
        read_catalog(tmp_path / "nope.csv")
    (tmp_path / "cat.xlsx").write_text("x")
    with pytest.raises(CatalogError, match="unsupported file type"):
        read_catalog(tmp_path / "cat.xlsx")


@pytest.mark.parametrize("suffix", [".parquet", ".pq"])
def test_parquet_positions_are_rows_not_csv_lines(tmp_path: Path, suffix: str) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    p = tmp_path / f"cat{suffix}"
    pd.DataFrame({"id": ["7", "8", "7"], "image_path": ["a.jpg"] * 3}).to_parquet(p)
    with pytest.raises(CatalogError, match=r"'7' at rows \[0, 2\]"):
        read_catalog(p)
