"""Re-ranking (category vote, α-query expansion) and the photo's fit to a square: the pure
functions, the index's searches against the exact evaluation ranking, the CLI and the server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

from lookalike import Index
from lookalike.cli import cli
from lookalike.errors import LookalikeError
from lookalike.ingest.catalog import label_codes
from lookalike.ingest.images import fit_square, load_model_input
from lookalike.ingest.preprocess import Preprocess
from lookalike.search.exact import rank
from lookalike.search.rerank import Rerank, expand_queries, reranked, vote
from lookalike.server.app import create_app

from ..conftest import build_tiny


def test_parse_and_describe() -> None:
    assert not Rerank.parse("none") and not Rerank.parse(None) and not Rerank.parse("")
    assert Rerank.parse("vote") == Rerank(vote=10)
    assert Rerank.parse("vote=5, expand=2") == Rerank(vote=5, expand=2)
    assert str(Rerank(vote=5, expand=2)) == "vote=5,expand=2" and str(Rerank()) == "none"
    assert Rerank.from_dict(Rerank(3, 1, 2.0).to_dict()) == Rerank(3, 1, 2.0)
    assert Rerank.from_dict(None) == Rerank()  # an index built before re-ranking
    assert Rerank.parse("classify,expand=2") == Rerank(expand=2, classify=True)
    assert str(Rerank(classify=True)) == "classify" and Rerank(classify=True).categorises
    assert Rerank.from_dict(Rerank(classify=True).to_dict()) == Rerank(classify=True)
    for bad in ("votes", "vote=x", "vote=-1", "vote,classify", "classify=3"):
        with pytest.raises(LookalikeError):
            Rerank.parse(bad)


def test_vote_weighs_by_similarity() -> None:
    cats = np.array([[0, 1, 1], [2, 2, -1], [-1, -1, -1]])
    scores = np.array([[0.9, 0.5, 0.5], [0.1, 0.2, 0.9], [0.5, 0.5, 0.5]], np.float32)
    assert vote(cats, scores).tolist() == [1, 2, -1]  # 1.0 beats 0.9; unknown votes nothing
    # negative similarities still elect their majority
    assert vote(np.array([[3, 4, 4]]), np.array([[-0.1, -0.2, -0.3]])).tolist() == [4]


def test_expansion_is_a_weighted_unit_sum() -> None:
    q = np.array([[1.0, 0.0]], np.float32)
    nb = np.array([[[0.0, 1.0], [0.6, 0.8]]], np.float32)
    out = expand_queries(q, nb, np.array([[0.5, -np.inf]], np.float32), alpha=1.0)
    want = np.array([1.0, 0.5]) / np.hypot(1.0, 0.5)  # the missing neighbour weighs nothing
    assert np.allclose(out[0], want) and np.isclose(np.linalg.norm(out), 1.0)


def test_reranked_ranking_puts_the_voted_category_first() -> None:
    rng = np.random.default_rng(0)
    g = rng.normal(size=(200, 16)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    cats = rng.integers(0, 4, 200)
    q = g[:20] + 0.1 * rng.normal(size=(20, 16)).astype(np.float32)
    plain_rows, _ = rank(q, g, 5)
    rows, scores = reranked(Rerank(vote=5), cats)(q, g, 30)
    for i in range(20):
        won = vote(cats[plain_rows[i]][None], (q[i] @ g[plain_rows[i]].T)[None])[0]
        same = cats[rows[i]] == won
        assert same[: same.sum()].all()  # the voted category first, then the rest
        assert np.allclose(scores[i], q[i] @ g[rows[i]].T, atol=1e-5)  # plain similarities
        for part in (rows[i][same], rows[i][~same]):  # each part in similarity order
            s = q[i] @ g[part].T
            assert (np.diff(s) <= 1e-6).all()
    with pytest.raises(LookalikeError, match="category"):
        reranked(Rerank(vote=5), None)


@pytest.fixture
def tiny_index(tiny_catalog: Path, tmp_path: Path) -> Path:
    out = tmp_path / "ix"
    r = build_tiny(tiny_catalog, out, "--product-column", "product", "--category-column", "type",
                   "--fit", "pad")
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.parametrize("how", ["vote=4", "expand=2", "vote=3,expand=1"])
def test_index_search_equals_the_evaluation_ranking(tiny_index: Path, how: str) -> None:
    """What a shopper gets from search and what evaluate measures are the same lists."""
    ix = Index.open(tiny_index)
    g = np.asarray(ix.embeddings, np.float32)
    ranker = reranked(Rerank.parse(how), label_codes(ix.items, ["type"]))
    ids = ix.items["item_id"].tolist()
    for row in range(0, len(ids), 3):
        want, _ = ranker(g[row:row + 1], g, 8, self_rows=np.array([row]))
        got = [h.item_id for h in ix.similar(ids[row], 8, rerank=how)]
        assert got == [ids[r] for r in want[0]], (ids[row], how)


def test_vote_with_filters_and_one_hit_per_product(tiny_index: Path) -> None:
    ix = Index.open(tiny_index)
    assert ix.rerank == Rerank(vote=10)  # the build's default with a category column
    hits = ix.similar("P1-0", 5, rerank="vote=3", where={"gender": "Women"}, per_product=True)
    assert len({ix.metadata(h.item_id)["gender"] for h in hits}) == 1
    products = [ix.items.set_index("item_id").loc[h.item_id, "product_id"] for h in hits]
    assert len(products) == len(set(products)) and "P1" not in products
    # a filter on the category itself leaves nothing to vote on: plain search
    assert ix.similar("P1-0", 4, where={"type": "Shoes"}) == \
        ix.similar("P1-0", 4, where={"type": "Shoes"}, rerank="none")


def test_build_records_fit_category_and_rerank(tiny_catalog: Path, tiny_index: Path,
                                               tmp_path: Path) -> None:
    ix = Index.open(tiny_index)
    assert ix.preprocess.fit == "pad" and ix.category == "type"
    info = CliRunner().invoke(cli, ["info", str(tiny_index)]).output
    assert "fit pad" in info and "category column: type; searches re-rank: vote=10" in info
    # no category column: a note, no vote; a vote asked for anyway is refused
    r = build_tiny(tiny_catalog, tmp_path / "plain")
    assert r.exit_code == 0 and "no category vote" in r.output
    plain = Index.open(tmp_path / "plain")
    assert plain.category is None and not plain.rerank and plain.preprocess.fit == "crop"
    with pytest.raises(LookalikeError, match="no category column"):
        plain.similar("P1-0", 3, rerank="vote")
    r = build_tiny(tiny_catalog, tmp_path / "bad", "--rerank", "vote")
    assert r.exit_code != 0 and "category" in r.output
    r = build_tiny(tiny_catalog, tmp_path / "bad", "--category-column", "nope")
    assert r.exit_code != 0 and "nope" in r.output


def test_server_takes_rerank(tiny_index: Path) -> None:
    with TestClient(create_app(tiny_index)) as c:
        assert c.get("/health").json()["rerank"] == "vote=10"
        ix = Index.open(tiny_index)
        for how in ("none", "vote=3", "expand=1"):
            got = c.get("/items/P3-0/similar", params={"k": 5, "rerank": how}).json()
            assert [h["item_id"] for h in got["results"]] == \
                [h.item_id for h in ix.similar("P3-0", 5, rerank=how)]
        assert c.get("/items/P3-0/similar", params={"rerank": "bogus"}).status_code == 422


def test_fit_square() -> None:
    a = np.zeros((200, 300, 3), np.uint8)
    a[:, :50] = (10, 20, 30)  # the left border's colour
    a[:, 250:] = (10, 20, 30)
    a[:, 100:200] = 200
    img = Image.fromarray(a)
    crop = np.asarray(fit_square(img, "crop"))
    assert crop.shape == (200, 200, 3) and np.array_equal(crop, a[:, 50:250])
    pad = np.asarray(fit_square(img.transpose(Image.TRANSPOSE), "pad"))
    assert pad.shape == (300, 300, 3)
    assert (pad[:50] == (10, 20, 30)).all() and (pad[250:] == (10, 20, 30)).all()
    assert fit_square(img, "squash") is img
    with pytest.raises(ValueError):
        fit_square(img, "stretch")


def test_fit_is_the_same_on_both_decoders(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 255, (120, 90, 3), np.uint8))
    img.save(tmp_path / "a.jpg", quality=95)
    data = (tmp_path / "a.jpg").read_bytes()
    for fit in ("crop", "pad"):
        pillow = load_model_input(data, 32, fit=fit)
        opencv = load_model_input(data, 32, fit=fit, decoder="opencv")
        assert np.abs(pillow.astype(int) - opencv.astype(int)).max() <= 1
        via_steps = load_model_input(data, 32, preprocess=Preprocess(fit=fit))
        assert np.array_equal(pillow, via_steps)
    assert Preprocess.from_dict({"steps": []}).fit == "squash"  # indexes before --fit
    assert Preprocess.from_dict(Preprocess(("crop",), fit="pad").to_dict()).fit == "pad"


def test_evaluate_takes_rerank(tiny_index: Path) -> None:
    runs = {how: json.loads(CliRunner().invoke(
        cli, ["evaluate", str(tiny_index), "-r", "type", "-k", "1,5", "--json", "--rerank", how]
    ).output) for how in ("none", "vote=5")}
    assert runs["none"] != runs["vote=5"]
    assert set(runs["none"]) == set(runs["vote=5"])


def test_query_views_are_averaged(tiny_catalog: Path, tmp_path: Path) -> None:
    r = build_tiny(tiny_catalog, tmp_path / "tta", "--views", "flip,zoom", "--fit", "pad")
    assert r.exit_code == 0, r.output
    ix = Index.open(tmp_path / "tta")
    assert ix.views == ("flip", "zoom")
    photo = tiny_catalog.parent / "photos" / "P1-0.jpg"
    img = fit_square(Image.open(photo).convert("RGB"), "pad")
    w, h = img.size
    views = [img, img.transpose(Image.FLIP_LEFT_RIGHT),
             img.crop((round(w * 0.1), round(h * 0.1), w - round(w * 0.1), h - round(h * 0.1)))]
    e = ix.embedder(np.stack([np.asarray(v.resize((ix.spec.input_size,) * 2, Image.BILINEAR,
                                                  reducing_gap=3.0)) for v in views]))
    want = e.mean(axis=0) / np.linalg.norm(e.mean(axis=0))
    assert np.allclose(ix.embed(photo), want, atol=1e-5)
    assert not np.allclose(ix.embed(photo, views="none"), want, atol=1e-3)
    with pytest.raises(LookalikeError, match="unknown view"):
        ix.embed(photo, views="spin")
    r = build_tiny(tiny_catalog, tmp_path / "bad", "--views", "spin")
    assert r.exit_code != 0 and "spin" in r.output


def test_batched_similar_equals_one_by_one(tiny_index: Path) -> None:
    """The server's batched path (several items in one pass) gives the lists Index.similar
    gives, with the vote, for pools that hold the answer and for those that do not."""
    ix = Index.open(tiny_index)
    ids = ix.items["item_id"].tolist()
    snap = ix.snapshot()
    for how, k in (("vote=3", 3), ("vote=4", 8), ("none", 5)):
        got = ix.similar_slots(snap, [snap.slot(i) for i in ids], [k] * len(ids), how)
        want = [ix.similar(i, k, rerank=how) for i in ids]
        assert [[h.item_id for h in g] for g in got] == [[h.item_id for h in w] for w in want]
    with pytest.raises(LookalikeError, match="not batched"):
        ix.similar_slots(snap, [0], [3], "expand=1")


def test_classifier_learns_set_labels_of_outside_photos() -> None:
    """fit_head learns catalogue categories; outside photos whose label allows a set of
    categories move their look into the set: photos that lie nearest category a (as a street
    photo lies nearest the wrong catalogue items), labelled "b or c", stop being called a."""
    from lookalike.search.classifier import fit_head

    rng = np.random.default_rng(0)
    centres = np.eye(8, dtype=np.float32)[:3]
    x = np.concatenate([c + 0.05 * rng.normal(size=(40, 8)) for c in centres]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = ["a"] * 40 + ["b"] * 40 + ["c"] * 40
    head = fit_head("type", x, labels)
    assert head.classes == ["a", "b", "c"]
    assert (np.array(head.predict(x)) == np.array(labels)).mean() > 0.95
    look = np.eye(8, dtype=np.float32)[5] + 0.8 * centres[0] \
        + 0.05 * rng.normal(size=(30, 8)).astype(np.float32)
    look /= np.linalg.norm(look, axis=1, keepdims=True)
    assert set(head.predict(look)) == {"a"}
    head = fit_head("type", x, labels, look, [("b", "c")] * len(look))
    assert "a" not in set(head.predict(look))
    assert (np.array(head.predict(x)) == np.array(labels)).mean() > 0.95  # still knows these
    with pytest.raises(LookalikeError, match="at least 2 categories"):
        fit_head("type", x[:40], labels[:40])
