"""The HTTP API: every endpoint, every error code (FastAPI's TestClient, no network)."""

import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lookalike.ingest.preprocess import DEFAULT_PREPROCESS
from lookalike.server import create_app

from ..conftest import MODELS, garment, png_bomb, serve


@pytest.fixture(scope="module")
def client(two_indexes: dict[str, Path]) -> TestClient:
    return TestClient(create_app(two_indexes[MODELS[0]], max_upload_bytes=200_000,
                                 max_pixels=5_000_000))


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.model
def test_health_and_openapi(client: TestClient) -> None:
    r = client.get("/health")
    body = r.json()
    lists = body.pop("similar_lists")
    assert r.status_code == 200 and body == {"status": "ok", "items": 24,
                                             "model": "mobilenet-v2",
                                             "preprocess": list(DEFAULT_PREPROCESS.steps),
                                             "fit": DEFAULT_PREPROCESS.fit, "rerank": "none"}
    assert lists["items"] == 24 and 0 <= lists["kept"] <= 24
    spec = client.get("/openapi.json").json()
    assert {"/items/{item_id}", "/items/{item_id}/image", "/items/{item_id}/similar",
            "/search", "/health"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200


@pytest.mark.model
def test_item_metadata_and_photo(client: TestClient) -> None:
    r = client.get("/items/P2-1")
    assert r.status_code == 200
    assert r.json() == {"item_id": "P2-1", "metadata": {
        "type": "Shirts", "colour": "Blue", "gender": "Men", "product_id": "P2"}}
    r = client.get("/items/P2-1/image")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (96, 96)


@pytest.mark.model
def test_unknown_and_skipped_items_are_404(client: TestClient) -> None:
    for path in ("/items/nope", "/items/nope/image", "/items/nope/similar"):
        r = client.get(path)
        assert r.status_code == 404 and "unknown item id 'nope'" in r.json()["detail"]
    r = client.get("/items/bad-0")
    assert r.status_code == 404 and "skipped when the index was built" in r.json()["detail"]
    # ids are looked up, never used as paths
    assert client.get("/items/..%2F..%2Fcatalog.csv/image").status_code == 404


@pytest.mark.model
def test_similar_shape_filters_and_options(client: TestClient) -> None:
    r = client.get("/items/P1-0/similar", params={"k": 3})
    assert r.status_code == 200
    res = r.json()["results"]
    assert len(res) == 3 and set(res[0]) == {"item_id", "score", "metadata"}
    assert res[0]["metadata"]["product_id"] == "P1" and "P1-0" not in [x["item_id"] for x in res]
    assert [x["score"] for x in res] == sorted((x["score"] for x in res), reverse=True)
    r = client.get("/items/P1-0/similar", params=[("k", "5"), ("type", "Bags"),
                                                  ("type", "Shoes")])
    assert {x["metadata"]["type"] for x in r.json()["results"]} <= {"Bags", "Shoes"}
    r = client.get("/items/P1-0/similar", params={"k": 10, "per_product": "true"})
    products = [x["metadata"]["product_id"] for x in r.json()["results"]]
    assert len(products) == len(set(products)) and "P1" not in products


@pytest.mark.model
@pytest.mark.parametrize("params, message", [
    ({"k": 0}, "greater than or equal to 1"),
    ({"k": 1000}, "less than or equal to 100"),
    ({"k": "many"}, "valid integer"),
    ({"size": "XL"}, "unknown query parameter 'size'"),
])
def test_bad_parameters_are_422(client: TestClient, params: dict, message: str) -> None:
    r = client.get("/items/P1-0/similar", params=params)
    assert r.status_code == 422 and message in str(r.json()["detail"])


@pytest.mark.model
def test_search_by_photo(client: TestClient, two_indexes: dict[str, Path]) -> None:
    photo = (two_indexes["root"] / "photos" / "P4-0.jpg").read_bytes()
    r = client.post("/search", files={"image": ("shoe.jpg", photo, "image/jpeg")},
                    params={"k": 4})
    assert r.status_code == 200
    res = r.json()["results"]
    assert len(res) == 4 and res[0]["item_id"] == "P4-0"  # the same photo, score ≈ 1
    assert res[0]["score"] > 0.99
    r = client.post("/search", files={"image": ("s.jpg", photo, "image/jpeg")},
                    params={"k": 4, "type": "Bags"})
    assert {x["metadata"]["type"] for x in r.json()["results"]} == {"Bags"}


@pytest.mark.model
def test_search_errors(client: TestClient) -> None:
    big = jpeg(Image.effect_noise((600, 600), 100).convert("RGB"))
    assert len(big) > 200_000
    r = client.post("/search", files={"image": ("big.jpg", big, "image/jpeg")})
    assert r.status_code == 413 and "larger than 200,000 bytes" in r.json()["detail"]
    r = client.post("/search", files={"image": ("bomb.png", png_bomb(), "image/png")})
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    r = client.post("/search", files={"image": ("notes.txt", b"hello, not a photo", "text/plain")})
    assert r.status_code == 415 and "not an image" in r.json()["detail"]
    r = client.post("/search", files={"image": ("empty.jpg", b"", "image/jpeg")})
    assert r.status_code == 415
    r = client.post("/search", files={"photo": ("x.jpg", jpeg(garment((1, 2, 3), "bag")),
                                                "image/jpeg")})
    assert r.status_code == 422  # the field is called "image"
    r = client.post("/search", params={"k": 0},
                    files={"image": ("x.jpg", jpeg(garment((1, 2, 3), "bag")), "image/jpeg")})
    assert r.status_code == 422


@pytest.mark.model
def test_lookalike_serve_answers_over_http(two_indexes: dict[str, Path]) -> None:
    import json
    import urllib.request

    proc, url = serve(two_indexes[MODELS[0]])
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=10) as r:
            assert json.load(r)["items"] == 24
        with urllib.request.urlopen(f"{url}/items/P3-0/similar?k=2") as r:
            assert len(json.load(r)["results"]) == 2
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.model
def test_page_and_filters(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'capture="environment"' in r.text and "/static/app.js" in r.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    attrs = client.get("/attributes").json()
    assert attrs["type"] == ["Bags", "Shirts", "Shoes"] and attrs["gender"] == ["Men", "Women"]


@pytest.mark.model
def test_batched_similar_matches_the_index(two_indexes: dict[str, Path]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from lookalike import Index
    from lookalike.server.batcher import SimilarBatcher

    ix = Index.open(two_indexes[MODELS[0]])
    batcher = SimilarBatcher()
    try:
        ids = [i for i in ix.items["item_id"] for _ in range(5)]  # many at once, repeated
        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(lambda i: batcher.similar(ix, i, 4), ids))
        for item_id, hits in zip(ids, got):
            want = ix.similar(item_id, 4)
            assert [h.score for h in hits] == pytest.approx([h.score for h in want], abs=1e-5)
            assert item_id not in [h.item_id for h in hits] and len(hits) == 4
    finally:
        batcher.close()


def test_every_error_kind_has_a_status_code() -> None:
    """The server answers a library error by its kind, never by searching its message."""
    from lookalike import errors
    from lookalike.server.contract import STATUS, WHY

    kinds = {c.kind for c in vars(errors).values()
             if isinstance(c, type) and issubclass(c, errors.LookalikeError)}
    assert kinds == set(STATUS)
    assert {STATUS[k] for k in kinds} - {500} <= set(WHY)
    assert errors.ImageTooLargeError("x").kind == "too_large"
    assert STATUS[errors.ImageTooLargeError.kind] == 413
