"""The HTML report in a real browser: headless Chromium through Playwright, every image loads."""

from pathlib import Path

import pytest

from lookalike.quality.inputs import read_label_mapping, read_query_set
from lookalike.quality.report import write_report
from lookalike.quality.runs import evaluate_indexes

from ..conftest import BROWSER_ARGS, CHROMIUM, MODELS, needs_browser

pytestmark = needs_browser


def broken_images(page_path: Path) -> tuple[int, int]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        try:
            page = browser.new_page()
            page.goto(page_path.resolve().as_uri(), wait_until="load")
            total = page.evaluate("document.images.length")
            broken = page.evaluate(
                "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
                ".length")
        finally:
            browser.close()
    return total, broken


@pytest.mark.model
def test_html_report_has_no_broken_images(two_indexes: dict[str, Path], tmp_path: Path) -> None:
    results = evaluate_indexes(
        [two_indexes[m] for m in MODELS], relevances=[["type"]], ks=[1, 3],
        query_set=read_query_set(two_indexes["queries"]),
        mapping=read_label_mapping(two_indexes["mapping"]))
    page = write_report(results, tmp_path / "report", by=["gender"], gallery_queries=2)
    total, broken = broken_images(page)
    assert total >= 2 + 2 * 2 * len(MODELS) and broken == 0, (total, broken)
    # the check itself notices a broken image
    (tmp_path / "report" / "plots" / "precision_at_k.png").unlink()
    assert broken_images(page) == (total, 1)
