"""Serving at shop scale (issue 18): kept lists computed from the start and answered before
the framework, photos embedded together, filters kept, several worker processes."""

from __future__ import annotations

import io
import os
import queue
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from lookalike import Index
from lookalike.errors import BusyError
from lookalike.server import create_app
from lookalike.server.kept import plain_k
from lookalike.server.photos import PhotoBatcher

from ..conftest import garment
from ..writers import KEY, _start_server


def _jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    garment(((47 * i) % 256, (91 * i + 30) % 256, (13 * i + 200) % 256),
            ("shirt", "shoe", "bag")[i % 3], seed=i).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def folder(two_indexes: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(next(iter(two_indexes.values())), tmp_path / "ix"))


def _wait_for_lists(client: TestClient, deadline_s: float = 120) -> dict[str, int]:
    end = time.monotonic() + deadline_s
    while True:
        lists = client.get("/health").json()["similar_lists"]
        if lists["kept"] == lists["items"]:
            return lists
        assert time.monotonic() < end, f"the lists were not all computed: {lists}"
        time.sleep(0.1)


def test_plain_k() -> None:
    assert plain_k(b"") == 10 and plain_k(b"k=7") == 7 and plain_k(b"k=20") == 20
    for q in (b"k=0", b"k=", b"k=x", b"k=10&gender=Men", b"gender=Men", b"k=12345",
              b"k=-1", b"per_product=true"):
        assert plain_k(q) is None, q


@pytest.mark.model
def test_every_list_is_kept_from_the_start_and_answered_as_the_app_answers(
        folder: Path) -> None:
    with TestClient(create_app(folder)) as client:
        lists = _wait_for_lists(client)
        ix = Index.open(folder)
        assert lists == {"kept": len(ix), "items": len(ix)}
        for item_id in ix.items["item_id"].astype(str):
            kept = client.get(f"/items/{item_id}/similar?k=5")  # the middleware's answer
            framed = client.get(f"/items/{item_id}/similar?k=5&per_product=false")  # the app's
            assert kept.status_code == framed.status_code == 200
            assert kept.content == framed.content
            assert kept.headers["content-type"] == framed.headers["content-type"] == \
                "application/json"
            assert int(kept.headers["content-length"]) == len(kept.content)
            want = ix.similar(item_id, 5)
            got = kept.json()["results"]
            assert [h["item_id"] for h in got] == [h.item_id for h in want]
            assert all(abs(h["score"] - w.score) < 1e-5 for h, w in zip(got, want))
        # what the kept lists do not answer still gets the app's answers
        first = ix.items["item_id"].astype(str).iloc[0]
        assert client.get("/items/nope/similar").status_code == 404
        assert client.get("/items/nope/similar").json()["detail"]
        assert client.get(f"/items/{first}/similar?k=0").status_code == 422
        assert client.get(f"/items/{first}/similar?k=101").status_code == 422
        assert len(client.get(f"/items/{first}/similar?k=22").json()["results"]) == \
            min(22, len(ix) - 1)


@pytest.mark.model
def test_lists_a_change_drops_are_computed_again(folder: Path) -> None:
    with TestClient(create_app(folder, api_key="k")) as client:
        _wait_for_lists(client)
        r = client.post("/items", headers={"X-API-Key": "k"}, data={"item_id": "new-1"},
                        files={"image": ("x.jpg", _jpeg(5), "image/jpeg")})
        assert r.status_code == 201, r.text
        lists = _wait_for_lists(client)
        assert lists["items"] == len(Index.open(folder))
        fresh = Index.open(folder)
        for item_id in fresh.items["item_id"].astype(str):
            got = client.get(f"/items/{item_id}/similar?k=10").json()["results"]
            assert [h["item_id"] for h in got] == [h.item_id for h in fresh.similar(item_id)]


@pytest.mark.model
def test_concurrent_photos_are_embedded_in_one_model_call(folder: Path) -> None:
    ix = Index.open(folder)
    photos = [_jpeg(i) for i in range(6)]
    batcher = PhotoBatcher(start=False)  # they all queue before the model runs once
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(batcher.embed, ix, ix.model_input(p)) for p in photos]
        while batcher._queue.qsize() < len(photos):
            time.sleep(0.01)
        batcher.start()
        got = [f.result(timeout=60) for f in futures]
    batcher.close()
    assert (batcher.model_calls, batcher.photos) == (1, 6)
    for p, g in zip(photos, got):
        assert np.allclose(g, ix.embed(p), atol=1e-5)


@pytest.mark.model
def test_a_full_photo_queue_is_refused_at_once(folder: Path) -> None:
    ix = Index.open(folder)
    pixels = ix.model_input(_jpeg(1))
    batcher = PhotoBatcher(max_queued=2, start=False)
    waiting = [threading.Thread(target=batcher.embed, args=(ix, pixels)) for _ in range(2)]
    for t in waiting:
        t.start()
    while batcher._queue.qsize() < 2:
        time.sleep(0.01)
    with pytest.raises(BusyError, match="2 photos are waiting"):
        batcher.embed(ix, pixels)
    batcher.start()
    for t in waiting:
        t.join(timeout=60)
    batcher.close()


@pytest.mark.model
def test_a_busy_server_answers_503_with_retry_after(folder: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*_: object) -> np.ndarray:
        raise BusyError("64 photos are waiting to be searched already; try again in a moment")

    monkeypatch.setattr(PhotoBatcher, "embed", full)
    client = TestClient(create_app(folder))
    r = client.post("/search", files={"image": ("p.jpg", _jpeg(2), "image/jpeg")})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "waiting" in r.json()["detail"]


@pytest.mark.model
def test_photo_search_over_http_equals_index_search(folder: Path) -> None:
    ix = Index.open(folder)
    photos = [_jpeg(i) for i in range(8)]
    with TestClient(create_app(folder)) as client, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda p: client.post(
            "/search?k=5", files={"image": ("p.jpg", p, "image/jpeg")}), photos))
    for p, r in zip(photos, answers):
        assert r.status_code == 200, r.text
        want = ix.search(p, 5)
        assert [h["item_id"] for h in r.json()["results"]] == [h.item_id for h in want]


@pytest.mark.model
def test_filtered_answers_follow_additions_and_deletions(folder: Path) -> None:
    """The filter's mask over the built items is kept; the added items' part is not stale."""
    ix = Index.open(folder)
    column = ix.attributes[0]
    value = str(ix.items[column].iloc[0])
    where = {column: value}
    query = ix.items["item_id"].astype(str).iloc[1]
    def ids(index: Index) -> list[str]:
        return [h.item_id for h in index.similar(query, 5, where=where)]

    before = ids(ix)  # (keeps the mask)
    ix.add([{"item_id": "twin", column: value}], vectors=ix.vector(query)[None])
    after = ids(ix)
    assert after == ["twin", *before[:4]]
    ix.add([{"item_id": "other", column: value + "-not"}], vectors=ix.vector(query)[None])
    assert ids(ix) == after
    ix.delete(["twin"])
    assert ids(ix) == before
    assert ids(Index.open(folder)) == before

@pytest.mark.slow
def test_worker_processes_all_serve_a_change_made_through_one(folder: Path) -> None:
    proc, url = _start_server(folder, "--workers", "2")
    try:
        assert len(_workers(proc.pid)) == 2
        with httpx2.Client(base_url=url, timeout=60) as c:
            r = c.post("/items", headers={"X-API-Key": KEY}, data={"item_id": "w-new"},
                       files={"image": ("x.jpg", _jpeg(3), "image/jpeg")})
            assert r.status_code == 201, r.text
            # new connections go to either worker: every one of them must know the item soon
            end = time.monotonic() + 10
            seen = 0
            while seen < 40:
                with httpx2.Client(base_url=url, timeout=60) as fresh:
                    ok = fresh.get("/items/w-new").status_code == 200
                seen = seen + 1 if ok else 0
                assert time.monotonic() < end, "a worker does not serve the new item"
    finally:
        proc.terminate()
        proc.wait(30)
    assert not _workers(proc.pid)


def _workers(parent: int) -> list[str]:
    """The worker processes ``parent`` spawned (not multiprocessing's resource tracker)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"spawn_main" in cmd:
            out.append(pid)
    return out



@pytest.mark.model
def test_import_and_serve_without_torch(folder: Path) -> None:
    """`import lookalike` loads no PyTorch, and `lookalike serve` answers similar-by-id and
    photo search with torch made unimportable (searching runs on ONNX Runtime)."""
    import subprocess
    import sys

    code = "import sys, lookalike; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    serve = ("import sys; sys.modules['torch'] = None  # any import of torch fails\n"
             "from lookalike.cli import cli\n"
             "cli(['serve', sys.argv[1], '--port', '0'])\n")
    Index.open(folder).embed(_jpeg(0))  # (the ONNX graph exported into the test cache first)
    proc = subprocess.Popen([sys.executable, "-c", serve, str(folder)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline()
        assert " at http://" in line, line + proc.stderr.read()
        url = line.split(" at ")[1].split("/ ")[0]
        with httpx2.Client(base_url=url, timeout=60) as c:
            first = Index.open(folder).items["item_id"].astype(str).iloc[0]
            assert c.get(f"/items/{first}/similar").status_code == 200
            r = c.post("/search", files={"image": ("p.jpg", _jpeg(4), "image/jpeg")})
            assert r.status_code == 200 and r.json()["results"], r.text
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_facade_is_small_and_every_name_resolves() -> None:
    """`import lookalike` offers the index, its hits, the errors and a few entry functions;
    helpers live in their packages."""
    import lookalike

    assert 10 <= len(lookalike.__all__) <= 15
    assert {"Index", "Hit", "LookalikeError", "build_index", "read_catalog",
            "evaluate_indexes", "write_report", "train"} <= set(lookalike.__all__)
    for name in lookalike.__all__:
        assert getattr(lookalike, name) is not None, name
    with pytest.raises(AttributeError):
        lookalike.sample_triplets  # noqa: B018 (a helper, not part of the facade)


class _RacingQueue(queue.Queue):
    """A bounded queue where, the moment the batching thread takes the stop marker, other
    requests fill the slot it freed (a producer racing in)."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.late: list[Future] = []

    def get_nowait(self) -> object:
        item = super().get_nowait()
        if item is None:
            while not self.full():
                self.late.append(Future())
                self.put_nowait(("late", self.late[-1]))
        return item


def test_a_stop_marker_never_deadlocks_the_batching_thread() -> None:
    """The batching loop put the stop marker back into its own queue; when requests had
    filled the queue meanwhile, the thread blocked on that put forever. Requests left behind
    at the stop are failed, not left waiting."""
    from lookalike.server.batcher import serve_batches

    q = _RacingQueue(maxsize=3)
    first: Future = Future()
    q.put(("first", first))
    q.put(None)
    t = threading.Thread(target=serve_batches, args=(q, 8),
                         kwargs={"key": lambda item: 0,
                                 "answer": lambda group: [item[0] for item in group]},
                         daemon=True)
    t.start()
    t.join(timeout=5)
    assert not t.is_alive(), "the batching thread is stuck putting its stop marker back"
    assert first.result(timeout=1) == "first"
    assert q.late and q.empty()
    for late in q.late:  # turned away, not left waiting
        with pytest.raises(BusyError, match="stopping"):
            late.result(timeout=1)
