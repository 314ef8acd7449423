"""The whole product in a real headless Chromium: submit a study from the form, watch it finish.

Needs Debian's Chromium (/usr/bin/chromium). Without it the test is skipped, unless
APPROXIMANT_REQUIRE_BROWSER=1 (set by .ci/run), where a missing browser is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tasks.broker import free_port

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("APPROXIMANT_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("APPROXIMANT_TEST_ARTIFACTS", "test-artifacts"))


def _require_browser() -> None:
    if shutil.which(CHROMIUM) is None:
        msg = f"headless Chromium not found at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("APPROXIMANT_REQUIRE_BROWSER") == "1":
            pytest.fail(msg)
        pytest.skip(msg)


@contextmanager
def running_stack(tmp_path: Path, env: dict[str, str] | None = None,
                  port: int | None = None, cwd: Path | None = None) -> Iterator[str]:
    """``approximant up`` on a free port with its own data directory; yields the URL, then
    stops it with Ctrl-C and checks that it stopped cleanly."""
    _require_browser()
    port = port or free_port()
    log = open(tmp_path / "up.log", "w")  # noqa: SIM115 - outlives this block, closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "up", "--data-dir", str(tmp_path / "data"),
         "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
        env={**os.environ, "APPROXIMANT_BROKER_URL": "", **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            log.close()
            raise AssertionError("dashboard did not start:\n" + (tmp_path / "up.log").read_text())
        time.sleep(0.5)
    try:
        yield url
    finally:
        proc.send_signal(subprocess.signal.SIGINT)
        try:
            proc.wait(40)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
    assert proc.returncode == 0, (tmp_path / "up.log").read_text()[-3000:]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[str]:
    with running_stack(tmp_path) as url:
        yield url


def launch(p):
    """Debian's Chromium, headless, with nothing that would reach the network."""
    return p.chromium.launch(
        executable_path=CHROMIUM,
        args=["--no-sandbox", "--headless", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-background-networking", "--disable-component-update",
              "--no-first-run"],
    )


def _fill(page, label: str, value: str) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(value)
    box.press("Enter")
    page.wait_for_timeout(300)


def test_submit_from_form_and_watch_it_finish(stack: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
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
            page.screenshot(path=str(ARTIFACTS / "study.png"), full_page=True)

            # The same URL opens the same study in a fresh browser context.
            url = page.url
            other = browser.new_context().new_page()
            other.goto(url)
            expect(other.get_by_role("heading", name="browser test")).to_be_visible(
                timeout=30_000)
            expect(other.get_by_text("3 of 3 runs done")).to_be_visible(timeout=30_000)

            _share_and_snapshot(browser, page)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()


def create_share_link(page) -> str:
    """Open *Share and export* on a study page, create a read-only link and return it."""
    from playwright.sync_api import expect

    create = page.get_by_role("button", name="Create a read-only link")
    for _ in range(10):
        # The page redraws once as the study ends; a click on the expander during that redraw
        # can be lost, so open it until its content shows.
        if create.is_visible():
            break
        page.get_by_text("Share and export").click()
        page.wait_for_timeout(1000)
    create.click()
    code = page.locator("code", has_text="/shared?token=").first
    expect(code).to_be_visible(timeout=30_000)
    return code.inner_text().strip()


def _share_and_snapshot(browser, page) -> None:
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
    path = ARTIFACTS / "snapshot.html"
    download.value.save_as(path)
    offline = browser.new_context(offline=True).new_page()
    offline.goto(path.resolve().as_uri())
    expect(offline.get_by_role("heading", name="browser test")).to_be_visible()
    # Charts render from the embedded bundle and data, with the network off.
    expect(offline.locator(".vega-embed svg, .vega-embed canvas").first).to_be_visible(
        timeout=30_000)
    assert offline.locator(".vega-embed").count() >= 3
    offline.screenshot(path=str(ARTIFACTS / "snapshot.png"), full_page=True)
