"""`lookalike evaluate` end to end on the small catalogue: inputs, comparisons, JSON, report."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from lookalike import LookalikeError
from lookalike.cli import cli
from lookalike.quality.inputs import read_label_mapping, read_query_set, read_triplets
from lookalike.quality.report import write_report
from lookalike.quality.runs import default_relevances, evaluate_indexes

from ..conftest import MODELS


def test_mapping_formats_agree(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("attribute: type\nlabels:\n  top: [Shirts, Tops]\n"
                                     "  shoe: Shoes\n")
    (tmp_path / "m.json").write_text(json.dumps({"attribute": "type", "labels": {
        "top": ["Shirts", "Tops"], "shoe": ["Shoes"]}}))
    (tmp_path / "m.csv").write_text("label,type\ntop,Shirts\ntop,Tops\nshoe,Shoes\n")
    maps = [read_label_mapping(tmp_path / f"m.{s}") for s in ("yaml", "json", "csv")]
    assert all(m.attribute == "type" for m in maps)
    assert all(m.labels == {"top": ("Shirts", "Tops"), "shoe": ("Shoes",)} for m in maps)
    assert maps[0].name == "query:type"


@pytest.mark.parametrize("name, text, message", [
    ("m.csv", "label,type,colour\na,b,c\n", "expected a header 'label,<attribute>'"),
    ("m.yaml", "labels: {a: [b]}\n", "expected keys 'attribute'"),
    ("m.yaml", "attribute: type\nlabels: {a: []}\n", "label 'a' needs a value"),
    ("m.yaml", "attribute: type\nlabels: {}\n", "maps no labels"),
    ("m.json", "{not json", "could not be parsed"),
    ("m.txt", "x", "use a .yaml, .yml, .json or .csv file"),
])
def test_mapping_errors(tmp_path: Path, name: str, text: str, message: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(LookalikeError, match=message):
        read_label_mapping(tmp_path / name)


@pytest.mark.model
def test_query_set_and_triplet_errors(two_indexes: dict[str, Path], tmp_path: Path) -> None:
    qs = read_query_set(two_indexes["queries"])
    assert len(qs) == 5 and qs.missing == {}
    (tmp_path / "photos").symlink_to(two_indexes["root"] / "photos")
    (tmp_path / "q.csv").write_text("image_path,label\nphotos/P1-0.jpg,\nphotos/P1-1.png,top\n")
    with pytest.raises(LookalikeError, match=r"rows without a label \(column 'label'\) at line"):
        read_query_set(tmp_path / "q.csv")
    ids = pd.Series(["a", "b", "c"])
    (tmp_path / "t.csv").write_text("query_id,positive_id,negative_id\na,b,c\na,zz,c\n")
    with pytest.raises(LookalikeError, match=r"1 positive_id value\(s\) are not items of the "
                                             r"index: 'zz' \(row 1\)"):
        read_triplets(tmp_path / "t.csv", ids)
    (tmp_path / "t2.csv").write_text("query,positive_id,negative_id\na,b,c\n")
    with pytest.raises(LookalikeError, match=r"column 'query_id' \(triplet file t2.csv\) not found; "
                                             r"the columns are: query, positive_id"):
        read_triplets(tmp_path / "t2.csv", ids)


@pytest.mark.model
def test_compare_two_indexes_on_the_same_queries(two_indexes: dict[str, Path]) -> None:
    results = evaluate_indexes(
        [two_indexes[m] for m in MODELS], relevances=[["type"], ["type", "colour"]], ks=[1, 3],
        query_set=read_query_set(two_indexes["queries"]),
        mapping=read_label_mapping(two_indexes["mapping"]),
        triplets=two_indexes["triplets"])
    assert [r.label for r in results] == list(MODELS)
    a, b = (r.metrics for r in results)
    assert a.keys() == b.keys()
    for key in ("precision@1/type", "recall@3/type+colour", "mAP@3/type", "recall@1/product",
                "mAP@R/product", "accuracy@1/query:type", "precision@3/query:type",
                "accuracy/triplets", "accuracy/triplets:in_class", "count/triplets"):
        assert key in a, key
    # 30 catalogue rows, 6 of them bad photos: 24 items, every one with another of its type
    assert len(results[0].index) == 24
    assert a["queries/type"] == 24 and a["count/triplets"] == 3
    # same queries in both: identical query ids, row for row
    ids = [r.index.items["item_id"].to_numpy()[r.catalog.query_rows].tolist() for r in results]
    assert ids[0] == ids[1]
    # the three views of a product are near-identical pictures: easy for both
    assert a["recall@1/product"] > 0.9 and b["recall@1/product"] > 0.9
    # the "bag" label is not in the mapping and the empty photo cannot be read: 3 queries count
    q = results[0].queries
    assert a["queries/query:type"] == 3 and list(q.skipped) == ["photos/empty.jpg"]
    assert sorted(set(q.labels)) == ["bag", "footwear", "top"]


@pytest.mark.model
def test_sample_is_seeded_and_shared(two_indexes: dict[str, Path]) -> None:
    def rows(seed: int) -> list[list[str]]:
        res = evaluate_indexes([two_indexes[m] for m in MODELS], relevances=[["type"]], ks=[1],
                               sample=5, seed=seed)
        return [r.index.items["item_id"].to_numpy()[r.catalog.query_rows].tolist() for r in res]

    first = rows(1)
    assert len(first[0]) == 5 and first[0] == first[1] and rows(1) == first
    assert rows(2) != first


@pytest.mark.model
def test_unknown_relevance_attribute(two_indexes: dict[str, Path]) -> None:
    with pytest.raises(LookalikeError, match="column 'size' .*not found"):
        evaluate_indexes([two_indexes["mobilenet-v2"]], relevances=[["size"]])


@pytest.mark.model
def test_cli_json_is_flat_and_comparison_shows_differences(two_indexes: dict[str, Path]) -> None:
    run = CliRunner().invoke
    r = run(cli, ["evaluate", str(two_indexes["mobilenet-v2"]), "-r", "type", "-r", "type+colour",
                  "-k", "1,5", "--json"])
    assert r.exit_code == 0, r.output
    flat = json.loads(r.output)
    assert all(not isinstance(v, dict) for v in flat.values())
    assert {"precision@5/type", "mAP@1/type+colour", "recall@5/product"} <= flat.keys()
    r = run(cli, ["evaluate", *(str(two_indexes[m]) for m in MODELS), "-r", "type", "-k", "1,5",
                  "--by", "gender"])
    assert r.exit_code == 0, r.output
    assert "mobilenet-v2" in r.output and "color-histogram" in r.output
    assert "by gender" in r.output
    line = next(x for x in r.output.splitlines() if "precision" in x and "color-histogram" in x)
    assert "(+" in line or "(-" in line  # the second index shows its difference to the first
    r = run(cli, ["evaluate", str(two_indexes["mobilenet-v2"]), "-k", "0"])
    assert r.exit_code == 2 and "k values must be positive" in r.output
    r = run(cli, ["evaluate", str(two_indexes["mobilenet-v2"]),
                  "--queries", str(two_indexes["queries"])])
    assert r.exit_code == 2 and "--queries and --mapping go together" in r.output


@pytest.mark.model
def test_default_relevances_skip_near_unique_columns(two_indexes: dict[str, Path]) -> None:
    res = evaluate_indexes([two_indexes["mobilenet-v2"]], ks=[1])
    keys = res[0].metrics.keys()
    assert "precision@1/type" in keys and "precision@1/gender" in keys
    # most values first (type and colour have 3, gender 2), ties in catalogue order
    assert list(res[0].catalog.hits) == ["type", "colour", "gender", "product"]
    assert not any("/file" in k for k in keys)


@pytest.mark.model
def test_report_files(two_indexes: dict[str, Path], tmp_path: Path) -> None:
    results = evaluate_indexes(
        [two_indexes[m] for m in MODELS], relevances=[["type"], ["colour"]], ks=[1, 3],
        query_set=read_query_set(two_indexes["queries"]),
        mapping=read_label_mapping(two_indexes["mapping"]),
        triplets=two_indexes["triplets"], exclude_product=True)
    page = write_report(results, tmp_path / "report", by=["gender"], gallery_queries=2)
    md = (tmp_path / "report" / "report.md").read_text()
    html = page.read_text()
    for needle in ("### type", "### product", "### query:type", "### triplets", "by gender"):
        assert needle in md, needle
    linked = [line.split("](", 1)[1].rstrip(")\n") for line in md.splitlines()
              if line.startswith("![")]
    assert len(linked) >= 2 + 2 * 2 * len(MODELS)  # plots + best/worst (catalogue, photos)
    for rel in linked:
        assert (tmp_path / "report" / rel).stat().st_size > 1000, rel
        assert f'src="{rel}"' in html


@pytest.mark.model
def test_report_opens_with_plain_words(two_indexes: dict[str, Path], tmp_path: Path) -> None:
    from lookalike.quality.report import headline, mislabelled, recall_cap

    res = evaluate_indexes([two_indexes["mobilenet-v2"]], relevances=[["type"], ["type", "colour"]],
                           ks=[1, 3], query_set=read_query_set(two_indexes["queries"]),
                           mapping=read_label_mapping(two_indexes["mapping"]))[0]
    words = headline(res)
    p = res.metrics["precision@3/type"]
    assert words[0].startswith(f"{round(p * 3)} of the top 3 similar items share the item's type; ")
    assert "also share its colour" in words[0] and "better than a random pick" in words[0]
    # chance: a random other item shares the type; the tiny catalogue's 24 items, 3 types
    assert any(w.startswith("Another photo of the same product") for w in words)
    assert words[-1].startswith("Outside photos:")
    assert recall_cap(res).startswith("recall@3 for type can reach at most")
    write_report([res], tmp_path / "r", gallery_queries=2)
    md = (tmp_path / "r" / "report.md").read_text()
    assert md.splitlines()[2] == f"**{words[0]}**"
    # a query whose neighbours are mostly of another type: possibly mislabelled
    ev = res.catalog
    tops = ev.ranking("type")[0][:, :3]
    types = res.index.items["type"].astype(str).to_numpy()
    for q in range(len(ev.query_rows)):
        own, top = types[ev.query_rows[q]], types[tops[q][tops[q] >= 0]]
        values, counts = np.unique(top, return_counts=True)
        want = values[counts.argmax()] if values[counts.argmax()] != own and \
            counts.max() >= 0.6 * len(top) else None
        assert mislabelled(res, q, "type", 3) == want


def test_default_relevances_leave_out_what_is_not_seen() -> None:
    items = pd.DataFrame({"type": list("aabbcc"), "colour": list("xyxyxy"),
                          "season": list("ssttss"), "year": [2011, 2011, 2012, 2012, 2011, 2012],
                          "gender": list("mmmwww")})
    attrs = list(items.columns)
    assert default_relevances(items, attrs) == [["type"], ["colour"], ["gender"]]
    assert default_relevances(items, attrs, "type", "colour") == \
        [["type"], ["type", "colour"], ["colour"], ["gender"]]


@pytest.mark.model
def test_query_photos_split_by_who_took_them(two_indexes: dict[str, Path], tmp_path: Path) -> None:
    from lookalike.quality.splits import group_splits

    senders = [f"s{i}" for i in range(40) for _ in range(3)]
    side = group_splits(senders, test=0.5)
    by_sender = pd.Series(side).groupby(senders).nunique()
    assert (by_sender == 1).all() and set(side) == {"train", "test"}  # a person on one side
    q = pd.read_csv(two_indexes["queries"])
    q["sender_id"] = ["a", "b", "c", "d", "e"]
    q.to_csv(tmp_path / "q.csv", index=False)
    images = two_indexes["queries"].parent
    sides = {s: read_query_set(tmp_path / "q.csv", images=images, group_column="sender_id",
                               split=s) for s in ("train", "test")}
    got = sorted(p for s in sides.values() for p in s.items["image_path"])
    assert got == sorted(q["image_path"]) and all(len(s) for s in sides.values())
    assert set(sides["train"].items["sender_id"]).isdisjoint(sides["test"].items["sender_id"])
    r = CliRunner().invoke(cli, ["evaluate", str(two_indexes["mobilenet-v2"]), "-r", "type",
                                 "-k", "1", "--queries", str(tmp_path / "q.csv"),
                                 "--query-images", str(images), "--mapping",
                                 str(two_indexes["mapping"]), "--query-group-column",
                                 "sender_id", "--query-split", "test", "--json"])
    assert r.exit_code == 0, r.output
    test = sides["test"].items
    counted = (test["label"].isin(["top", "footwear"])  # mapped, and a photo that reads
               & (test["image_path"] != "photos/empty.jpg")).sum()
    assert json.loads(r.stdout)["queries/query:type"] == counted
    with pytest.raises(LookalikeError, match="needs the group column"):
        read_query_set(tmp_path / "q.csv", images=images, split="test")
