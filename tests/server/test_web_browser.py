"""The search page in a real browser: upload a street photo, see similar products, open one.

Playwright drives Debian's Chromium, headless, against `lookalike serve`'s app on loopback,
with a slice of myntra-9k as the catalogue. Screenshots go to test-artifacts/.
"""

import socket
import threading
import time

import pandas as pd
import pytest
import uvicorn

from lookalike import build_index, read_catalog
from lookalike.server import create_app

from ..conftest import ARTIFACTS, BROWSER_ARGS, CHROMIUM, MYNTRA, STREET, needs_browser

pytestmark = [
    pytest.mark.slow, *needs_browser,
    pytest.mark.skipif(not (MYNTRA / "catalog.csv").exists() or not (STREET / "photos.csv").exists(),
                       reason="sample data not found"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("web")
    df = pd.read_csv(MYNTRA / "catalog.csv", dtype={"id": str}).head(400)
    df.to_csv(root / "slice.csv", index=False)
    build_index(read_catalog(root / "slice.csv", MYNTRA, category_column="articleType",
                             color_column="baseColour"), root / "index")  # as the CLI does
    sock = socket.socket()  # bound here and handed to the server: no port race
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(root / "index"), log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


# at least n images matching sel have loaded (lazy ones further down may still be waiting)
LOADED = ("([sel, n]) => [...document.querySelectorAll(sel)]"
          ".filter(i => i.complete && i.naturalWidth > 0).length >= n")
BROKEN = ("sel => [...document.querySelectorAll(sel)]"
          ".filter(i => i.complete && i.naturalWidth === 0).length")


# where each part of the page sits (viewport px), for a failure message that shows the cause
LAYOUT = """() => Object.fromEntries(["header", "#status", "#query", "#item", "#results-title",
  "#results .card"].map(sel => { const e = document.querySelector(sel);
    if (!e) return [sel, null]; const r = e.getBoundingClientRect();
    return [sel, `top ${Math.round(r.top)} height ${Math.round(r.height)}`
      + (e.hidden ? " hidden" : "")]; }).concat([["scrollY", window.scrollY],
    ["innerHeight", window.innerHeight], ["#query text", document.querySelector("#query")
      .innerText.slice(0, 80)]]))"""


def _first_result_in_view(page: object, height: int, what: str) -> None:
    """Most of the first result card (its top 120 px: the photo) shows without scrolling."""
    page.evaluate("window.scrollTo(0, 0)")
    box = None
    for _ in range(3):  # None: the card was replaced while measured; measure the new one
        box = page.locator("#results .card").first.bounding_box()
        if box is not None:
            break
        time.sleep(0.2)
    if box is None or box["y"] + 120 > height:
        page.screenshot(path=str(ARTIFACTS / f"web-failed-{height}.png"))
        raise AssertionError(f"{what} need scrolling: {page.evaluate(LAYOUT)}")


@pytest.mark.parametrize("width, height", [(1280, 900), (390, 844)])
def test_photo_search_then_item_page(server: str, width: int, height: int) -> None:
    from playwright.sync_api import sync_playwright

    photos = pd.read_csv(STREET / "photos.csv")
    photo, other = (STREET / p for p in photos[photos.label == "T-Shirt"].image_path.iloc[:2])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tag = f"{width}x{height}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server + "/")
            # filled from /attributes after load; on a phone they wait behind one button
            page.wait_for_selector("#filters select", state="attached")
            names = page.eval_on_selector_all("#filters select", "s => s.map(x => x.name)")
            assert names[:2] == ["articleType", "baseColour"] and "gender" in names, names
            assert "year" not in names and "season" not in names  # not how an item looks
            phone = width < 480
            assert page.locator("#filters select").first.is_visible() != phone
            if phone:
                page.click("#filters-toggle")
                assert page.locator("#filters select").first.is_visible()
                page.click("#filters-toggle")
            searches: list[str] = []
            page.on("request", lambda r: r.method == "POST" and searches.append(r.url))
            page.set_input_files("#photo", str(photo))
            page.wait_for_selector("#results .card")
            assert len(searches) == 1, searches  # one photo, one search (it once ran twice)
            _first_result_in_view(page, height, "the first results")
            page.evaluate("window.scrollTo(0, document.body.scrollHeight)")  # lazy images
            page.wait_for_function(LOADED, arg=["#results .card img", 10], timeout=30_000)
            assert page.locator("#results .card").count() >= 10
            assert page.evaluate(BROKEN, "img") == 0
            assert "similar products" in page.locator("#status").inner_text()
            # usable at phone width: nothing sticks out sideways
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            page.screenshot(path=str(ARTIFACTS / f"web-search-{tag}.png"), full_page=True)

            first = page.locator("#results .card").first
            item_id = first.get_attribute("href").split("/")[-1]
            first.click()
            page.wait_for_function(  # the item's own similar items replaced the search results
                "document.getElementById('results-title').textContent === 'Similar items'")
            page.wait_for_function(LOADED, arg=["#item img", 1], timeout=30_000)
            page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
            page.wait_for_function(LOADED, arg=["#results .card img", 10], timeout=30_000)
            assert page.evaluate(BROKEN, "img") == 0
            page.evaluate("window.scrollTo(0, 0)")
            name = page.locator("#item h2.name").inner_text()
            assert name and name != item_id  # the product's name leads, not its raw columns
            _first_result_in_view(page, height, "the similar items")
            page.click("#item summary")  # every column, behind one click
            assert item_id in page.locator("#item dl").inner_text()
            assert not page.locator("#query").is_visible()  # the photo search made way
            page.screenshot(path=str(ARTIFACTS / f"web-item-{tag}.png"), full_page=True)

            # another photo from the item page: back to a photo search, again one request
            page.set_input_files("#photo", str(other))
            page.wait_for_function(
                "document.getElementById('results-title').textContent === 'Similar products'")
            page.wait_for_selector("#results .card")
            assert page.locator("#query").is_visible() and not page.locator("#item").is_visible()
            assert other.name in page.locator("#query").inner_text()
            assert page.url.endswith("#/")  # the address no longer names the item
            assert len(searches) == 2, searches
            assert not errors, errors
        finally:
            browser.close()
