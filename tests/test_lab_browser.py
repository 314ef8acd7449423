"""The Approximation lab in a real headless Chromium: configure a job, watch it finish, export.

Same stack and skip rules as tests/test_browser.py (Debian's Chromium at /usr/bin/chromium).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

# [chart width, height] and [plot width, height] of every chart, in CSS px; the plot is the
# chart's frame (its background rectangle in Vega's SVG).
PLOT_SIZES = """() => [...document.querySelectorAll('.vega-embed')].map(e => {
    const frame = e.querySelector('svg .mark-group.role-frame > g > path.background');
    const r = e.getBoundingClientRect(), p = frame.getBoundingClientRect();
    return [[r.width, r.height], [p.width, p.height]];
})"""
CLIPPED_BUTTONS = """() => [...document.querySelectorAll('[data-testid="stDownloadButton"] button')]
    .filter(b => b.scrollWidth > b.clientWidth + 1
                 || [...b.querySelectorAll('p')].some(t => t.scrollWidth > t.clientWidth + 1))
    .map(b => b.innerText)"""


def test_lab_job_from_the_browser_with_svg_export(stack: str, launch, artifacts: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        try:
            page.goto(f"{stack}/lab")
            expect(page.get_by_role("heading", name="Approximation lab")).to_be_visible(
                timeout=30_000)
            expect(page.get_by_text("No lab jobs yet")).to_be_visible(timeout=30_000)
            page.get_by_role("tab", name="New job").click()
            box = page.locator("textarea").first
            box.fill("newton_schulz[schedule=polar_express,steps=8]\nsvd_polar")
            box.press("Control+Enter")
            repeats = page.get_by_label("Timed repeats", exact=True)
            repeats.fill("1")
            repeats.press("Enter")
            expect(page.get_by_text(re.compile(r"2 methods × 18 test matrices"))).to_be_visible(
                timeout=30_000)
            page.get_by_role("button", name="Run", exact=True).click()

            # .first: while Streamlit swaps a rerun's elements in, the previous copy of the
            # status line can still be on the page for a moment (strict mode would fail on it).
            expect(page.get_by_text(re.compile(r"finished · 18 of 18 test matrices")).first
                   ).to_be_visible(timeout=240_000)
            expect(page.locator(".vega-embed")).to_have_count(6, timeout=30_000)
            expect(page.locator(".vega-embed canvas, .vega-embed svg").first).to_be_visible(
                timeout=30_000)
            # The page redraws once when the job ends; click after that, not during it.
            expect(page.get_by_role("button", name="Cancel job")).to_have_count(0,
                                                                              timeout=30_000)
            page.screenshot(path=str(artifacts / "lab.png"), full_page=True)
            # One chart a row at the page's width: each plot (not only its chart) wide and
            # tall enough to read, and every download button shows its whole label.
            expect(page.locator(".vega-embed svg.marks")).to_have_count(6, timeout=30_000)
            sizes = page.evaluate(PLOT_SIZES)
            for i, (chart, plot) in enumerate(sizes):
                # The last chart is the output spectrum's strips: a row per method.
                tall = 250 if i < len(sizes) - 1 else 100
                assert chart[0] >= 600 and plot[0] >= 600 and plot[1] >= tall, (i, chart, plot)
            clipped = page.evaluate(CLIPPED_BUTTONS)
            assert page.locator('[data-testid="stDownloadButton"]').count() >= 30
            assert clipped == [], clipped
            with page.expect_download(timeout=60_000) as dl:
                page.get_by_role("button", name="SVG").first.click()
            svg = Path(dl.value.path()).read_bytes()
            assert svg.startswith(b"<svg") and b"Transfer function" in svg
        except Exception:
            page.screenshot(path=str(artifacts / "lab-failure.png"), full_page=True)
            raise
        finally:
            browser.close()
