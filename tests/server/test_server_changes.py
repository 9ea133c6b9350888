"""Adding and deleting items while serving: API key, persistence across restarts, concurrency."""

import io
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import pytest
from fastapi.testclient import TestClient

from lookalike import Index
from lookalike.server import create_app

from ..conftest import MODELS, garment

pytestmark = pytest.mark.model  # every test here runs a pretrained CNN

KEY = {"X-API-Key": "s3cret"}


def jpeg(rgb: tuple[int, int, int], shape: str, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    garment(rgb, shape, seed=seed).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def folder(two_indexes: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the small index: these tests change it."""
    return Path(shutil.copytree(two_indexes[MODELS[0]], tmp_path / "index"))


def add(client: TestClient, item_id: str, photo: bytes, headers: dict | None = KEY,
        **form: str) -> httpx2.Response:
    return client.post("/items", headers=headers or {}, data={"item_id": item_id, **form},
                       files={"image": (f"{item_id}.jpg", photo, "image/jpeg")})


def test_changes_need_the_api_key(folder: Path) -> None:
    client = TestClient(create_app(folder, api_key="s3cret"))
    photo = jpeg((10, 200, 10), "shoe")
    for headers in (None, {"X-API-Key": "wrong"}):
        r = add(client, "new-1", photo, headers=headers)
        assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
        assert client.delete("/items/P1-0", headers=headers or {}).status_code == 401
    assert client.get("/items/new-1").status_code == 404 and len(Index.open(folder)) == 24
    closed = TestClient(create_app(folder, api_key=""))
    r = add(closed, "new-1", photo)
    assert r.status_code == 401 and "LOOKALIKE_API_KEY" in r.json()["detail"]


def test_add_and_delete_survive_a_restart(folder: Path) -> None:
    client = TestClient(create_app(folder, api_key="s3cret"))
    shoe = jpeg((10, 200, 10), "shoe")
    r = add(client, "green-shoe", shoe, metadata='{"type": "Shoes", "colour": "Green"}',
            product_id="P9")
    assert r.status_code == 201
    assert r.json() == {"item_id": "green-shoe", "metadata": {
        "type": "Shoes", "colour": "Green", "gender": None, "product_id": "P9"}}
    found = client.post("/search", files={"image": ("q.jpg", shoe, "image/jpeg")},
                        params={"k": 1}).json()["results"]
    assert found[0]["item_id"] == "green-shoe" and found[0]["score"] > 0.99
    assert client.get("/items/green-shoe/image").content == shoe
    assert "green-shoe" in [h["item_id"] for h in
                            client.get("/items/P3-0/similar", params={"k": 30}).json()["results"]]
    assert client.delete("/items/P1-0", headers=KEY).json() == {"deleted": "P1-0"}
    assert client.get("/items/P1-0").status_code == 404
    assert client.delete("/items/P1-0", headers=KEY).status_code == 404
    # errors: taken id, unknown attribute, bad JSON, not a photo
    assert add(client, "green-shoe", shoe).status_code == 409
    r = add(client, "x", shoe, metadata='{"size": "XL"}')
    assert r.status_code == 422 and "unknown attribute" in r.json()["detail"]
    assert add(client, "x", shoe, metadata="{not json").status_code == 422
    assert add(client, "x", b"not a photo").status_code == 415
    assert client.get("/health").json()["items"] == 24

    restarted = TestClient(create_app(folder, api_key="s3cret"))
    assert restarted.get("/health").json()["items"] == 24
    assert restarted.get("/items/green-shoe").json()["metadata"]["colour"] == "Green"
    assert restarted.get("/items/P1-0").status_code == 404
    ix = Index.open(folder)  # the Python API sees the same
    assert "green-shoe" in ix and "P1-0" not in ix and ix.manifest["journal"]["changes"] == 2


def test_searches_keep_working_while_items_come_and_go(folder: Path) -> None:
    client = TestClient(create_app(folder, api_key="s3cret"))
    photos = [jpeg((20 * (i % 12), 255 - 20 * (i % 12), 90), ("shirt", "shoe", "bag")[i % 3],
                   seed=i) for i in range(20)]
    deleted: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()
    failures: list[str] = []

    def searcher(n: int) -> int:
        done = 0
        while not stop.is_set():
            with lock:
                gone = set(deleted)  # deleted before this request was sent: must not come back
            if n % 2:
                r = client.get("/items/P2-0/similar", params={"k": 30})
            else:
                r = client.post("/search", params={"k": 30},
                                files={"image": ("q.jpg", photos[done % 20], "image/jpeg")})
            if r.status_code != 200:
                failures.append(f"{r.status_code} {r.text}")
            else:
                seen = {h["item_id"] for h in r.json()["results"]}
                if seen & gone:
                    failures.append(f"deleted items answered: {seen & gone}")
            done += 1
        return done

    with ThreadPoolExecutor(4) as pool:
        runs = [pool.submit(searcher, n) for n in range(4)]
        for i in range(200):
            assert add(client, f"new-{i}", photos[i % 20], metadata='{"type": "Shirts"}'
                       ).status_code == 201
            if i % 2:
                victim = f"new-{i - 1}"
                assert client.delete(f"/items/{victim}", headers=KEY).status_code == 200
                with lock:
                    deleted.add(victim)
        stop.set()
        answered = sum(r.result() for r in runs)
    assert not failures, failures[:5]
    assert answered > 20
    assert client.get("/health").json()["items"] == 24 + 100
    restarted = TestClient(create_app(folder))
    assert restarted.get("/health").json()["items"] == 124
    assert restarted.get("/items/new-198").status_code == 404
    assert restarted.get("/items/new-199").status_code == 200


def test_the_server_serves_what_another_process_adds_within_a_second(folder: Path,
                                                                      tmp_path: Path) -> None:
    """Acceptance 4 of issue 15: no restart; the new ids are known to every endpoint."""
    import subprocess
    import sys
    import time

    import pandas as pd

    client = TestClient(create_app(folder, api_key="s3cret"))
    photo = tmp_path / "new.png"
    garment((240, 120, 10), "bag", seed=3).save(photo)
    delta = tmp_path / "delta.csv"
    pd.DataFrame([("cli-1", "PX", "Bags", "Orange", "Women", str(photo))],
                 columns=["sku", "product", "type", "colour", "gender", "file"]).to_csv(
        delta, index=False)
    assert client.get("/items/cli-1").status_code == 404
    lookalike = Path(sys.executable).parent / "lookalike"
    subprocess.run([str(lookalike), "add", str(folder), str(delta), "-q"], check=True,
                   timeout=300, capture_output=True)
    t0 = time.monotonic()
    while client.get("/items/cli-1").status_code != 200:
        assert time.monotonic() - t0 < 1.0, "the server did not see the add within 1 s"
        time.sleep(0.01)
    print(f"served {time.monotonic() - t0:.3f} s after `lookalike add` returned")
    assert client.get("/items/cli-1").json()["metadata"]["colour"] == "Orange"
    assert add(client, "cli-1", jpeg((1, 2, 3), "shoe")).status_code == 409  # not replaced
    found = client.post("/search", params={"k": 1},
                        files={"image": ("q.png", photo.read_bytes(), "image/png")})
    assert found.json()["results"][0]["item_id"] == "cli-1"
    subprocess.run([str(lookalike), "remove", str(folder), "cli-1"], check=True, timeout=300,
                   capture_output=True)
    t0 = time.monotonic()
    while client.get("/items/cli-1").status_code != 404:
        assert time.monotonic() - t0 < 1.0, "the server did not see the removal within 1 s"
        time.sleep(0.01)
    assert client.delete("/items/cli-1", headers=KEY).status_code == 404
