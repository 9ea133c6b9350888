"""Issue 17: every input checked before it can hurt (metadata types and size, item ids)."""

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lookalike import Index, LookalikeError, build_index, read_catalog
from lookalike.ingest.catalog import CatalogError
from lookalike.server import create_app

from ..conftest import garment

KEY = {"X-API-Key": "k"}


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    """6 items with a text and a numeric column, and their index."""
    (tmp_path / "img").mkdir()
    rows = []
    for i, shape in enumerate(["shirt", "shoe", "bag"] * 2):
        garment((40 * i, 90, 200 - 30 * i), shape, seed=i).save(tmp_path / "img" / f"{i}.jpg")
        rows.append((f"item-{i}", shape, "Men" if i % 2 else "Women", 2010 + i, f"img/{i}.jpg"))
    pd.DataFrame(rows, columns=["id", "type", "gender", "year", "image_path"]).to_csv(
        tmp_path / "shop.csv", index=False)
    build_index(read_catalog(tmp_path / "shop.csv", category_column="type"), tmp_path / "ix",
                model="mobilenet-v2")
    return tmp_path


def photo(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    garment((10, 200, 10), "shoe", seed=seed).save(buf, "JPEG")
    return buf.getvalue()


def post(client: TestClient, item_id: str, metadata: str = "{}") -> object:
    return client.post("/items", headers=KEY, data={"item_id": item_id, "metadata": metadata},
                       files={"image": ("x.jpg", photo(), "image/jpeg")})


@pytest.mark.model
@pytest.mark.parametrize("metadata, key", [
    ({"gender": {"a": 1}}, "gender"),  # not a scalar
    ({"gender": ["Men"]}, "gender"),
    ({"gender": 5}, "gender"),  # a number in a text column
    ({"year": "2012"}, "year"),  # text in a numeric column
    ({"year": True}, "year"),
    ({"gender": "x" * 5000}, "gender"),  # too long
    ({"year": 2**70}, "year"),  # found by tests/server/test_fuzz.py: broke compaction
    ({"year": 1e300}, "year"),
])
def test_metadata_of_the_wrong_type_is_refused_and_nothing_breaks(shop: Path, metadata: dict,
                                                                  key: str) -> None:
    """Each of these answered 201 and then broke /attributes or compaction for good."""
    client = TestClient(create_app(shop / "ix", api_key="k"))
    r = post(client, "new", json.dumps(metadata))
    assert r.status_code == 422 and key in r.json()["detail"], r.text
    assert client.get("/attributes").status_code == 200
    assert client.get("/items/new").status_code == 404
    with pytest.raises(LookalikeError, match=key):
        Index.open(shop / "ix").add([{"item_id": "new2", **metadata}], vectors=np.ones((1, 1280)))
    ix = Index.open(shop / "ix")
    assert len(ix) == 6 and ix.compact() == 0


@pytest.mark.model
def test_good_metadata_still_goes_in_and_compacts(shop: Path) -> None:
    client = TestClient(create_app(shop / "ix", api_key="k"))
    r = post(client, "new", json.dumps({"gender": "Men", "year": 2020, "type": None}))
    assert r.status_code == 201, r.text
    r = post(client, "new2", json.dumps({"year": 2021.0}))  # a whole float in an int column
    assert r.status_code == 201, r.text
    ix = Index.open(shop / "ix")
    assert ix.compact() == 2
    again = Index.open(shop / "ix")
    assert again.metadata("new")["year"] == 2020 and again.metadata("new2")["year"] == 2021
    assert TestClient(create_app(shop / "ix")).get("/attributes").status_code == 200


@pytest.mark.model
def test_deeply_nested_metadata_is_422_not_500(shop: Path) -> None:
    client = TestClient(create_app(shop / "ix", api_key="k"))
    deep = "[" * 5000 + "]" * 5000
    r = post(client, "new", '{"gender": ' + deep + "}")
    assert r.status_code == 422, r.text
    r = post(client, "new", "{" * 3000)
    assert r.status_code == 422, r.text


@pytest.mark.model
@pytest.mark.parametrize("bad", ["a/b", "x" * 500_000, "tab\there", "line\nbreak", " "])
def test_one_id_rule_for_the_server_the_api_and_catalogues(shop: Path, bad: str) -> None:
    client = TestClient(create_app(shop / "ix", api_key="k"))
    r = post(client, bad)
    assert r.status_code == 422 and "item id" in r.json()["detail"], r.text
    with pytest.raises(LookalikeError, match="item id"):
        Index.open(shop / "ix").add([{"item_id": bad}], vectors=np.ones((1, 1280)))
    df = pd.read_csv(shop / "shop.csv")
    df.loc[2, "id"] = bad
    df.to_csv(shop / "bad.csv", index=False)
    with pytest.raises(CatalogError, match="item id"):
        read_catalog(shop / "bad.csv")
    assert len(Index.open(shop / "ix")) == 6


@pytest.mark.model
def test_ids_that_follow_the_rule_are_reachable(shop: Path) -> None:
    client = TestClient(create_app(shop / "ix", api_key="k"))
    for good in ("x" * 256, "sku 12 (blue)", "été-ß", "a?b#c"):
        r = post(client, good)
        assert r.status_code == 201, (good, r.text)
        from urllib.parse import quote

        assert client.get(f"/items/{quote(good, safe='')}").status_code == 200, good
        assert client.delete(f"/items/{quote(good, safe='')}", headers=KEY).status_code == 200


@pytest.mark.model
def test_info_says_the_live_count_and_the_built_one(shop: Path) -> None:
    from click.testing import CliRunner

    from lookalike.cli import cli

    ix = Index.open(shop / "ix")
    ix.add([{"item_id": f"n{i}", "type": "shoe"} for i in range(3)], vectors=np.ones((3, 1280)))
    ix.delete(["item-0"])
    out = CliRunner().invoke(cli, ["info", str(shop / "ix")]).output
    assert "8 items now (6 at the last build or compaction, then 2 change(s))" in out, out
    ix.compact()
    out = CliRunner().invoke(cli, ["info", str(shop / "ix")]).output
    assert "8 items now;" in out, out


@pytest.mark.model
def test_a_killed_writer_leaves_nothing_the_next_one_keeps(shop: Path) -> None:
    """A build or compaction killed mid-way leaves a hidden temporary folder the size of the
    vectors, a killed server a journal temporary file; the next open, build or compaction
    removes those of dead processes, and keeps those of live ones."""
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ix_dir = shop / "ix"
    stale = shop / f".ix.tmp-{dead}-abc123"
    stale.mkdir()
    (stale / "embeddings.npy").write_bytes(b"x" * 1000)
    live = shop / f".ix.tmp-{os.getpid()}-def456"
    live.mkdir()
    journal = ix_dir / "journal"
    journal.mkdir(exist_ok=True)
    stale_file = journal / f".000001.npy.{dead}-0badc0de.tmp"
    stale_file.write_bytes(b"y")
    live_file = journal / f".000001.npy.{os.getpid()}-0badc0df.tmp"
    live_file.write_bytes(b"z")
    Index.open(ix_dir)
    assert not stale_file.exists() and live_file.exists()
    assert not stale.exists() and live.exists()
    stale.mkdir()  # and a build (or compaction) removes them too
    build_index(read_catalog(shop / "shop.csv", category_column="type"), ix_dir,
                model="mobilenet-v2")
    assert not stale.exists() and live.exists()
    assert not any(p.name.startswith(".ix.tmp-") and p != live for p in shop.iterdir())


@pytest.mark.model
def test_a_build_over_a_changed_index_refuses_unless_told(shop: Path) -> None:
    """A build over a live index dropped the items added through the server without a word;
    now it refuses before embedding anything, drops them with --force, or replays them with
    --keep-changes (also after they were compacted into the build)."""
    from click.testing import CliRunner

    from lookalike.cli import cli

    client = TestClient(create_app(shop / "ix", api_key="k"))
    assert post(client, "added-1", json.dumps({"type": "shoe", "year": 2030})).status_code == 201
    assert client.delete("/items/item-3", headers=KEY).status_code == 200
    args = ["build", str(shop / "shop.csv"), "--out", str(shop / "ix"), "-m", "mobilenet-v2",
            "--category-column", "type", "-q"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code != 0 and "2 change(s) since it was built" in r.output, r.output
    assert "added-1" in Index.open(shop / "ix") and len(Index.open(shop / "ix")) == 6
    Index.open(shop / "ix").compact()  # folded into the build: still changes since the catalogue
    r = CliRunner().invoke(cli, args)
    assert r.exit_code != 0 and "--keep-changes" in r.output
    r = CliRunner().invoke(cli, [*args, "--keep-changes"])
    assert r.exit_code == 0 and "1 added item(s) embedded again, 1 removal(s)" in r.output, r.output
    ix = Index.open(shop / "ix")
    assert "added-1" in ix and "item-3" not in ix and len(ix) == 6
    assert ix.metadata("added-1")["year"] == 2030
    fresh = TestClient(create_app(shop / "ix"))
    assert fresh.get("/items/added-1/image").status_code == 200  # its photo came along
    r = CliRunner().invoke(cli, [*args, "--force"])
    assert r.exit_code == 0, r.output
    ix = Index.open(shop / "ix")
    assert "added-1" not in ix and "item-3" in ix and len(ix) == 6
    r = CliRunner().invoke(cli, args)  # no change since this build: replaced quietly
    assert r.exit_code == 0, r.output


@pytest.mark.model
def test_catalogue_photos_stay_inside_the_image_folder(shop: Path, tmp_path: Path) -> None:
    """Photo paths could point anywhere the process can read, and the server then served
    them; now such rows are skipped and reported, unless allowed."""
    outside = tmp_path.parent / f"{tmp_path.name}-secret"
    outside.mkdir()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(outside / "s.jpg")
    df = pd.read_csv(shop / "shop.csv")
    df.loc[0, "image_path"] = f"../{outside.name}/s.jpg"
    df.loc[1, "image_path"] = str(outside / "s.jpg")
    df.loc[2, "image_path"] = f"file://{outside / 's.jpg'}"
    df.to_csv(shop / "out.csv", index=False)
    cat = read_catalog(shop / "out.csv")
    assert sorted(cat.missing) == [0, 1, 2]
    assert "outside the image folder" in cat.missing[0] and "allow_outside_images=" in \
        cat.missing[1] and "file URI" in cat.missing[2]
    assert not read_catalog(shop / "out.csv", allow_outside_images=True).missing.keys() - {2}
    (shop / "img" / "link.jpg").symlink_to(outside / "s.jpg")
    df.loc[3, "image_path"] = "img/link.jpg"
    df.to_csv(shop / "out.csv", index=False)
    assert 3 in read_catalog(shop / "out.csv").missing


def _asgi_call(app: object, headers: list, chunks: list[bytes]) -> tuple[int, int]:
    """Run one POST through ``app``; returns (status, chunks the app read)."""
    import asyncio

    read = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal read
        read += 1
        more = read < len(chunks)
        return {"type": "http.request", "body": chunks[read - 1] if read <= len(chunks) else b"",
                "more_body": more}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/search", "raw_path": b"/search",
             "query_string": b"", "headers": headers, "http_version": "1.1",
             "scheme": "http", "server": ("t", 80), "client": ("c", 1), "root_path": ""}
    asyncio.run(app(scope, receive, send))  # type: ignore[operator]
    return next(m["status"] for m in sent if m["type"] == "http.response.start"), read


@pytest.mark.model
def test_a_body_over_the_limit_is_refused_before_it_is_stored(shop: Path) -> None:
    app = create_app(shop / "ix", max_upload_bytes=1_000_000)
    ctype = (b"content-type", b"multipart/form-data; boundary=x")
    status, read = _asgi_call(app, [ctype, (b"content-length", b"300000000")], [b"x" * 65536] * 5)
    assert status == 413 and read == 0  # not one byte read
    # no length given (chunked): stopped once what came passes the limit
    head = (b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n")
    status, read = _asgi_call(app, [ctype], [head] + [b"x" * 65536] * 100)
    assert status == 413 and read <= (1_000_000 + 256 * 1024) // 65536 + 2
    status, _ = _asgi_call(app, [ctype, (b"content-length", b"abc")], [b""])
    assert status == 400


def test_the_decode_gate_bounds_the_pixels_in_flight() -> None:
    import threading
    import time

    from lookalike.server.limits import DecodeGate, decode_pixels

    gate = DecodeGate(100)
    peak = [0]
    lock = threading.Lock()

    def work(pixels: int) -> None:
        with gate.hold(pixels):
            with lock:
                peak[0] = max(peak[0], gate.used)
            time.sleep(0.02)

    threads = [threading.Thread(target=work, args=(p,)) for p in [40, 40, 40, 250, 10, 60] * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert peak[0] <= 100 and gate.used == 0 and not any(t.is_alive() for t in threads)
    big = io.BytesIO()
    Image.new("RGB", (4000, 3000)).save(big, "PNG")
    assert decode_pixels(big.getvalue(), 224) == 12_000_000
    jpg = io.BytesIO()
    Image.new("RGB", (4000, 3000)).save(jpg, "JPEG")
    assert decode_pixels(jpg.getvalue(), 224) == 500 * 375  # JPEG draft mode: 1/8
    assert decode_pixels(b"not an image", 224) == 0


@pytest.mark.model
def test_the_openapi_schema_describes_every_answer(shop: Path) -> None:
    """401/404/409/413/415 were undocumented and the app's own 422 bodies carried a string where
    the schema said an array; OPTIONS on /items/{id} listed only GET in Allow."""
    client = TestClient(create_app(shop / "ix", api_key="k"))
    spec = client.get("/openapi.json").json()
    want = {("get", "/items/{item_id}"): {"404", "422"},
            ("get", "/items/{item_id}/similar"): {"404", "422"},
            ("post", "/search"): {"413", "415", "422"},
            ("post", "/items"): {"401", "409", "413", "415", "422"},
            ("delete", "/items/{item_id}"): {"401", "404", "422"}}
    for (method, path), codes in want.items():
        responses = spec["paths"][path][method]["responses"]
        assert codes <= set(responses), (method, path, set(responses))
        for code in codes:
            ref = responses[code]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorBody"), (method, path, code, ref)
    assert spec["components"]["schemas"]["ErrorBody"]["properties"]["detail"]["type"] == "string"
    r = client.get("/items/item-1/similar", params={"k": "many"})  # FastAPI's own validation
    assert r.status_code == 422 and isinstance(r.json()["detail"], str), r.json()
    r = client.get("/items/item-1/similar", params={"rerank": "sideways"})
    assert r.status_code == 422 and isinstance(r.json()["detail"], str)
    r = client.options("/items/item-1")
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) >= {"GET", "DELETE"}


@pytest.mark.model
def test_a_journal_value_that_does_not_fit_is_named_not_a_traceback(shop: Path) -> None:
    """A journal written before values were checked can hold {"year": "2012"}: compaction now
    names the change, the item and the value instead of failing in pyarrow; once the item is
    removed, it compacts."""
    from lookalike.store.changes import Prepared, UpdateSummary

    ix = Index.open(shop / "ix")
    ok = ix.add([{"item_id": "fine", "year": 2001}], vectors=np.ones((1, 1280)))
    record = {"row": -1, "item_id": "old", "product_id": "old", "image_path": None,
              "type": "shoe", "gender": None, "year": "2012", "photo_sha1": None}
    ix._live.add(Prepared([record], np.ones((1, 1280), np.float32), [None], UpdateSummary()),
                   True)  # as an older version wrote it, unchecked
    with pytest.raises(LookalikeError, match=r"change 2 of the journal gives item 'old' year="
                                             r"'2012', which is str"):
        Index.open(shop / "ix").compact()
    assert ok.change == 1 and len(Index.open(shop / "ix")) == 8  # nothing lost meanwhile
    Index.open(shop / "ix").delete(["old"])
    assert Index.open(shop / "ix").compact() == 3
    assert Index.open(shop / "ix").metadata("fine")["year"] == 2001


@pytest.mark.model
def test_compaction_drops_photos_no_item_names(shop: Path) -> None:
    """A server killed between keeping an upload's photo and writing its journal record left
    the photo in photos/ for good; compaction keeps only the photos an item names."""
    client = TestClient(create_app(shop / "ix", api_key="k"))
    assert post(client, "kept", json.dumps({"type": "shoe"})).status_code == 201
    photos = shop / "ix" / "photos"
    orphan = photos / "orphan-0123456789ab.jpeg"
    orphan.write_bytes(photo(3))
    assert Index.open(shop / "ix").compact() == 1
    assert not orphan.exists() and len(list(photos.iterdir())) == 1
    fresh = TestClient(create_app(shop / "ix"))
    assert fresh.get("/items/kept/image").status_code == 200


@pytest.mark.model
def test_a_writer_whose_pid_is_not_seen_but_holds_its_lock_is_left_alone(shop: Path) -> None:
    """A build in another PID namespace (its pid unknown here) still holds its folder's lock:
    its work in progress is not removed."""
    import subprocess
    import sys

    from lookalike.store.litter import WriterLock, remove_dead_builds

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    busy = shop / f".ix.tmp-{dead}-busy"
    busy.mkdir()
    held = WriterLock(busy)  # as if that process were still writing
    assert remove_dead_builds(shop / "ix") == [] and busy.exists()
    held.release()
    assert remove_dead_builds(shop / "ix") == [busy] and not busy.exists()


@pytest.mark.model
def test_reads_survive_an_old_journal_with_an_object_value(shop: Path) -> None:
    """GET /attributes answered 500 for good once the journal held {"gender": {"a": 1}}; such a
    journal (from before the checks) is read, and compaction names the value."""
    from lookalike.store.changes import Prepared, UpdateSummary

    record = {"row": -1, "item_id": "old", "product_id": "old", "image_path": None,
              "type": "shoe", "gender": {"a": 1}, "year": None, "photo_sha1": None}
    Index.open(shop / "ix")._live.add(
        Prepared([record], np.ones((1, 1280), np.float32), [None], UpdateSummary()), True)
    client = TestClient(create_app(shop / "ix"))
    assert client.get("/attributes").status_code == 200
    assert client.get("/items/old").json()["metadata"]["gender"] == {"a": 1}
    with pytest.raises(LookalikeError, match="item 'old' gender="):
        Index.open(shop / "ix").compact()
