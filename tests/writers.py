"""Many writers on one index folder, as users would run them: a server taking POST /items from
4 threads while two ``lookalike add`` processes and one ``lookalike remove`` run on the same
folder. Afterwards the server is killed and the folder opened again: every acknowledged change
must be there, in the order it was acknowledged, and nothing else.

Used once by tests/store/test_writers.py and repeated by ``bench/updates.py --writers-rounds 20``.
Only the command line, HTTP and the folder's files are used, so the same scenario runs
against any version of lookalike.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .conftest import garment

KEY = "s3cret"
REMOVED = ["P1-0", "P2-1", "P4-2"]  # built items the remove process takes out
THREADS = 4
CLI_ITEMS = 12  # items in each `lookalike add` delta
MIN_POSTS = 6  # each server thread posts at least this many, and on until the CLI is done
# ... but no more than this many: past 1,000 changes the server compacts on its own
# (store.live.COMPACT_MIN_ITEMS), and the journal this round reads would no longer hold them all
MAX_POSTS = 200


@dataclass
class Outcome:
    problems: list[str] = field(default_factory=list)
    posted: int = 0  # acknowledged POST /items
    entries: int = 0  # journal entries at the end
    items: int = 0
    seen_cli_add_s: float | None = None  # the server answered a CLI-added id after this long


def _exe() -> str:
    return str(Path(sys.executable).parent / "lookalike")


def _photo(i: int, shape: str) -> bytes:
    """A photo unlike every other one of the round (its colour histogram tells them apart)."""
    rgb = ((37 * i + 11) % 256, (91 * i + 47) % 256, (53 * i + 101) % 256)
    buf = io.BytesIO()
    garment(rgb, shape, seed=i).save(buf, "PNG")
    return buf.getvalue()


def _start_server(folder: Path, *options: str) -> tuple[subprocess.Popen, str]:
    """``lookalike serve`` on a port it picks itself (--port 0), once it answers."""
    import httpx2

    proc = subprocess.Popen([_exe(), "serve", str(folder), "--port", "0", *options],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "LOOKALIKE_API_KEY": KEY})
    line = proc.stdout.readline()  # "serving … at http://127.0.0.1:PORT/ …", once bound
    url = line.split(" at ")[1].split("/ ")[0] if " at http://" in line else ""
    end = time.monotonic() + 60
    while url and time.monotonic() < end and proc.poll() is None:
        try:
            if httpx2.get(f"{url}/health", timeout=5).status_code == 200:
                return proc, url
        except httpx2.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"the server did not start: {line}{proc.stderr.read()}")


def run_round(base: Path, work: Path) -> Outcome:
    """One round on a private copy of the index folder ``base`` (tiny catalogue, colour
    histogram: columns sku, product, type, colour, gender, file)."""
    import httpx2

    from lookalike import Index

    out = Outcome()
    folder = Path(shutil.copytree(base, work / "index"))
    built = Index.open(folder)
    built_ids = set(built.items["item_id"])
    photos = work / "photos"
    photos.mkdir()
    expected: dict[str, bytes] = {}  # item id → its photo, for every item a writer sends
    deltas = {}
    for name, offset in (("A", 1000), ("B", 2000)):
        rows = []
        for i in range(CLI_ITEMS):
            item_id = f"cli-{name}-{i}"
            data = _photo(offset + i, "bag")
            (photos / f"{item_id}.png").write_bytes(data)
            expected[item_id] = data
            rows.append((item_id, f"PC{name}{i}", "Bags", f"c{name}", "Women",
                         f"photos/{item_id}.png"))
        deltas[name] = work / f"delta-{name}.csv"
        pd.DataFrame(rows, columns=["sku", "product", "type", "colour", "gender", "file"]
                     ).to_csv(deltas[name], index=False)

    server, url = _start_server(folder)
    acked: dict[int, list[str]] = {t: [] for t in range(THREADS)}  # per thread, in order
    failed: list[str] = []
    cli_done = threading.Event()

    def poster(t: int) -> None:
        with httpx2.Client(base_url=url, timeout=60) as c:
            i = 0
            while i < MIN_POSTS or (not cli_done.is_set() and i < MAX_POSTS):
                item_id = f"srv-{t}-{i}"
                data = _photo(100 * (t + 1) + i, "shirt")
                expected[item_id] = data
                r = c.post("/items", headers={"X-API-Key": KEY},
                           data={"item_id": item_id, "product_id": f"PS{t}",
                                 "metadata": json.dumps({"type": "Shirts", "colour": f"s{t}"})},
                           files={"image": (f"{item_id}.png", data, "image/png")})
                if r.status_code == 201:
                    acked[t].append(item_id)
                else:
                    failed.append(f"POST {item_id}: {r.status_code} {r.text[:200]}")
                i += 1

    threads = [threading.Thread(target=poster, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    procs = {name: subprocess.Popen([_exe(), "add", str(folder), str(deltas[name]), "-q"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in deltas}
    procs["remove"] = subprocess.Popen([_exe(), "remove", str(folder), *REMOVED],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {name: (p.wait(timeout=300), *p.communicate()) for name, p in procs.items()}
    done_at = time.monotonic()
    # the server follows what the other processes wrote, without a restart
    with httpx2.Client(base_url=url, timeout=10) as c:
        while time.monotonic() - done_at < 5:
            if all(c.get(f"/items/{i}").status_code == 200 for i in ("cli-A-0", "cli-B-0")) \
                    and c.get(f"/items/{REMOVED[0]}").status_code == 404:
                out.seen_cli_add_s = time.monotonic() - done_at
                break
            time.sleep(0.02)
    cli_done.set()
    for th in threads:
        th.join(timeout=300)
    server.send_signal(signal.SIGKILL)  # no clean shutdown: what was acknowledged is on disk
    server.wait(timeout=30)

    out.problems += failed
    for name, (rc, stdout, stderr) in results.items():
        if rc != 0:
            out.problems.append(f"lookalike {name} exited {rc}: {stderr.strip()[-300:]}")
    if out.seen_cli_add_s is None:
        out.problems.append("the server did not serve the CLI's changes within 5 s")
    out.posted = sum(len(v) for v in acked.values())

    try:
        ix = Index.open(folder)
    except Exception as e:  # noqa: BLE001 (a broken folder is the finding)
        out.problems.append(f"the folder does not open after the round: {e}")
        return out
    want = (built_ids - set(REMOVED)) | {i for v in acked.values() for i in v}
    for name in deltas:
        if results[name][0] == 0:
            want |= {f"cli-{name}-{i}" for i in range(CLI_ITEMS)}
    have = set(ix.items["item_id"])
    out.items = len(have)
    if have - want:
        out.problems.append(f"items nobody acknowledged: {sorted(have - want)[:10]}")
    if want - have:
        out.problems.append(f"acknowledged items lost: {sorted(want - have)[:10]}")
    for item_id in sorted(have & set(expected)):
        got = ix.vector(item_id)
        own = ix.embed(expected[item_id])
        if float(got @ own) < 0.999:
            out.problems.append(f"{item_id} holds another item's vector "
                                f"(cosine to its photo {float(got @ own):.3f})")
    for item_id in sorted(have):
        if item_id.startswith("srv-"):
            t = item_id.split("-")[1]
            meta = ix.metadata(item_id)
            if (meta["type"], meta["colour"]) != ("Shirts", f"s{t}"):
                out.problems.append(f"{item_id} has another item's metadata: {meta}")
    out.problems += _order(folder, acked)
    out.entries = len(journal_entries(folder))
    return out


def journal_entries(folder: Path) -> list:
    from lookalike.store import journal

    return journal.read(folder, journal.Cursor(), None)[0]


def _order(folder: Path, acked: dict[int, list[str]]) -> list[str]:
    """Each server thread's items in the journal in the order they were acknowledged."""
    from lookalike.store import journal

    entries, _ = journal.read(folder, journal.Cursor(), None)
    position: dict[str, int] = {}
    for pos, e in enumerate(entries):
        if e.change["op"] == "add":
            for rec in e.records:
                position.setdefault(rec["item_id"], pos)
    problems = []
    for t, ids in acked.items():
        seen = [position.get(i) for i in ids]
        if None in seen or seen != sorted(seen):
            problems.append(f"thread {t}'s items are not in the journal in the order they "
                            "were acknowledged")
    return problems
