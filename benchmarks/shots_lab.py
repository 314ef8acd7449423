"""Screenshots of the Approximation lab page in real Chromium (1400×1000) for docs/img/.

Starts ``approximant up``, submits a lab job (every default polar method on the default six
spectra at three shapes, fp32 and bf16: about three minutes of work) and takes the whole page
with the job running (a first test matrix in), half finished and finished. Each shot also
prints the drawn size of every chart, so a squashed plot shows as a number, not only in the
picture.

Run: ``python benchmarks/shots_lab.py [--out docs/img]`` (about four minutes on 2 cores).
Needs Debian's Chromium at /usr/bin/chromium.
"""

from __future__ import annotations

import re

from bench_faults import chromium, shooting, wait_for

from approximant.engine.approx.spec import (
    DEFAULT_SHAPES,
    DEFAULT_SPECTRA,
    POLAR_METHODS,
    parse_lab,
)

SPEC = parse_lab({
    "name": "polar methods on six spectra",
    "methods": list(POLAR_METHODS),
    "spectra": list(DEFAULT_SPECTRA),
    # Largest first: the first test matrix takes long enough to be caught "running".
    "shapes": list(reversed(DEFAULT_SHAPES)),
    "dtypes": ["float32", "bfloat16"],
    "repeats": 3,
})
PROGRESS = re.compile(r"(\w+) · (\d+) of (\d+) test matrices")
# [chart width, height, plot width, height] of every chart in CSS px; the plot is the chart's
# frame (its background rectangle in Vega's SVG).
PLOT_SIZES = """() => [...document.querySelectorAll('.vega-embed')].map(e => {
    const frame = e.querySelector('svg .mark-group.role-frame > g > path.background');
    const r = e.getBoundingClientRect(), p = frame ? frame.getBoundingClientRect() : r;
    return [r.width, r.height, p.width, p.height].map(Math.round);
})"""
# Streamlit scrolls an inner element, not the document: a "full page" screenshot is the
# viewport. The shot is taken with the viewport as tall as that element's content instead.
CONTENT_HEIGHT = """() => Math.max(...[...document.querySelectorAll(
    '[data-testid="stMain"], [data-testid="stAppViewContainer"]')].map(e => e.scrollHeight))"""
SIZE = {"width": 1400, "height": 1000}


def progress(page) -> tuple[str, int, int] | None:
    """(status, test matrices done, of) as the page's progress bar says."""
    for text in page.get_by_text(PROGRESS).all_inner_texts():
        m = PROGRESS.search(text)
        if m:
            return m.group(1), int(m.group(2)), int(m.group(3))
    return None


def main() -> None:
    from playwright.sync_api import expect, sync_playwright

    from approximant.tasks.lab import submit_lab

    with shooting(__doc__) as (out, stack, url), sync_playwright() as p:
        browser = chromium(p)
        page = browser.new_page(viewport=SIZE)
        submit_lab(SPEC, stack.broker_url)
        page.goto(f"{url}/lab?job={SPEC.job_id}")
        expect(page.get_by_role("heading", name=SPEC.name)).to_be_visible(
            timeout=60_000)

        def shoot(state: str) -> None:
            # While a rerun swaps elements in, the previous copy of the page can still
            # be there for a moment (twice the charts, twice the height): shoot again
            # until the page measured before and after the shot is the same one.
            for _ in range(10):
                expect(page.locator(".vega-embed canvas, .vega-embed svg.marks")
                       ).to_have_count(6, timeout=120_000)
                page.wait_for_timeout(1500)  # fonts and the last refresh settle
                sizes = page.evaluate(PLOT_SIZES)
                height = page.evaluate(CONTENT_HEIGHT)
                page.set_viewport_size({**SIZE, "height": height})
                page.wait_for_timeout(1500)
                page.screenshot(path=str(out / f"lab-{state}.png"))
                page.set_viewport_size(SIZE)
                if len(sizes) == 6 and page.evaluate(CONTENT_HEIGHT) == height \
                        and len(page.evaluate(PLOT_SIZES)) == 6:
                    break
            print(f"{state}: {progress(page)}; {height} px tall; charts (w×h, plot "
                  "w×h): " + ", ".join(f"{a}×{b} ({c}×{d})" for a, b, c, d in sizes),
                  flush=True)

        wait_for("a first test matrix", lambda: (progress(page) or ("", 0, 1))[1] >= 1,
                 600, poll_s=1)
        shoot("running")
        wait_for("half the test matrices",
                 lambda: (lambda s: s and s[1] >= s[2] // 2)(progress(page)), 1200,
                 poll_s=1)
        shoot("half")
        wait_for("the job to finish",
                 lambda: (progress(page) or ("",))[0] == "finished", 1800, poll_s=1)
        expect(page.get_by_role("button", name="Cancel job")).to_have_count(
            0, timeout=60_000)
        shoot("finished")
        browser.close()


if __name__ == "__main__":
    main()
