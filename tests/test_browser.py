"""The whole product in a real headless Chromium: submit a study from the form, watch it finish.

Needs Debian's Chromium (/usr/bin/chromium). Without it the test is skipped, unless
APPROXIMANT_REQUIRE_BROWSER=1 (set by .ci/run), where a missing browser is a failure.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

def _fill(page, label: str, value: str) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(value)
    box.press("Enter")
    page.wait_for_timeout(300)


def test_submit_from_form_and_watch_it_finish(stack: str, launch, create_share_link,
                                               artifacts: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{stack}/new")
            expect(page.get_by_role("heading", name="New study")).to_be_visible(timeout=30_000)
            _fill(page, "Study name", "browser test")
            _fill(page, "Seeds", "0")
            _fill(page, "Steps per run", "40")
            _fill(page, "Evaluate every", "10")
            expect(page.get_by_text(re.compile(r"3 runs · study id"))).to_be_visible(
                timeout=30_000)
            page.get_by_role("button", name="Run", exact=True).click()

            page.wait_for_url(re.compile(r"/study\?study=st-"), timeout=30_000)
            expect(page.get_by_role("heading", name="browser test")).to_be_visible(
                timeout=30_000)
            expect(page.get_by_text("3 of 3 runs done")).to_be_visible(timeout=120_000)
            # Training and validation loss; Vega renders asynchronously after the page settles.
            expect(page.locator(".vega-embed").nth(1)).to_be_visible(timeout=30_000)
            expect(page.locator(".vega-embed canvas, .vega-embed svg").first).to_be_visible(
                timeout=30_000)
            page.screenshot(path=str(artifacts / "study.png"), full_page=True)

            # The same URL opens the same study in a fresh browser context.
            url = page.url
            other = browser.new_context().new_page()
            other.goto(url)
            expect(other.get_by_role("heading", name="browser test")).to_be_visible(
                timeout=30_000)
            expect(other.get_by_text("3 of 3 runs done")).to_be_visible(timeout=30_000)

            _share_and_snapshot(browser, page, create_share_link, artifacts)
        except Exception:
            page.screenshot(path=str(artifacts / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()


def _share_and_snapshot(browser, page, create_share_link, artifacts: Path) -> None:
    """A read-only link shows the study without edit controls; the snapshot opens offline."""
    from playwright.sync_api import expect

    link = create_share_link(page)
    viewer = browser.new_context().new_page()
    viewer.goto(link)
    expect(viewer.get_by_role("heading", name="browser test")).to_be_visible(timeout=30_000)
    expect(viewer.get_by_text("3 of 3 runs done")).to_be_visible(timeout=30_000)
    expect(viewer.get_by_text("read-only view", exact=False)).to_be_visible()
    expect(viewer.get_by_role("button", name="Cancel study")).to_have_count(0)
    expect(viewer.get_by_text("Share and export")).to_have_count(0)

    with page.expect_download(timeout=60_000) as download:
        page.get_by_role("button", name=re.compile("Snapshot")).click()
    path = artifacts / "snapshot.html"
    download.value.save_as(path)
    offline = browser.new_context(offline=True).new_page()
    offline.goto(path.resolve().as_uri())
    expect(offline.get_by_role("heading", name="browser test")).to_be_visible()
    # Charts render from the embedded bundle and data, with the network off.
    expect(offline.locator(".vega-embed svg, .vega-embed canvas").first).to_be_visible(
        timeout=30_000)
    assert offline.locator(".vega-embed").count() >= 3
    offline.screenshot(path=str(artifacts / "snapshot.png"), full_page=True)
