"""Screenshots of every study-page tab in real Chromium (1400×1000), with runs still going,
half finished and finished, for docs/img/.

Starts ``approximant up`` (local editor mode), submits a ten-run digits study (five optimizer
configs × two seeds, diagnostics on) and, in each state, clicks through the six tabs; in the
finished state it also hovers a curve chart and picks a group (the seeds it then draws).

Run: ``python benchmarks/shots_study.py [--out docs/img]`` (a few minutes on 2 cores). Needs
Debian's Chromium at /usr/bin/chromium.
"""

from __future__ import annotations

from bench_faults import chromium, progress, shooting, wait_for

from approximant.engine.specs import expand, parse_study
from approximant.storage.stream import TERMINAL

SPEC = parse_study({
    "name": "digits: Freon vs Muon vs AdamW vs SGD",
    "workload": {"name": "digits_mlp"},
    # The slowest optimizers first: the "running" shots then catch a run going, not a queue of
    # SGD runs that finish in seconds.
    "optimizers": [{"name": "freon", "grid": {"lr": [0.02], "c": [0.6667]}},
                   {"name": "muon", "grid": {"lr": [0.02]}},
                   {"name": "adamw", "grid": {"lr": [1e-3]}},
                   {"name": "sgd", "grid": {"lr": [0.05, 0.2]}}],
    "seeds": [0, 1],
    "steps": 4000,
    "eval_every": 100,
    "diagnostics_every": 500,
})
TABS = ["Curves", "Compare", "Learning rate", "Tuning budget", "Time to target", "Diagnostics",
        "Runs"]


def ended(url: str) -> int:
    return sum(progress(url, r.run_id).get("status") in TERMINAL for r in expand(SPEC))


def main() -> None:
    from playwright.sync_api import sync_playwright

    from approximant.tasks.submit import submit_study

    n = len(expand(SPEC))
    with shooting(__doc__) as (out, stack, url), sync_playwright() as p:
        browser = chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        submit_study(SPEC, stack.broker_url)
        page.goto(f"{url}/study?study={SPEC.study_id}")

        def shoot(state: str) -> None:
            for tab in TABS:
                page.get_by_role("tab", name=tab).last.click()
                page.wait_for_timeout(2500)  # a live refresh: the tab is drawn
                name = tab.lower().replace(" ", "-")
                page.screenshot(path=str(out / f"study-{state}-{name}.png"))
            print(f"{state}: {ended(stack.broker_url)} of {n} runs ended", flush=True)

        wait_for("a run to report", lambda: any(
            progress(stack.broker_url, r.run_id).get("train_loss")
            for r in expand(SPEC)), 120)
        page.wait_for_timeout(3000)
        shoot("running")
        # The four slow runs come first; after three of them the rest is still to come.
        wait_for("three runs", lambda: ended(stack.broker_url) >= 3, 900)
        shoot("half")
        wait_for("every run", lambda: ended(stack.broker_url) == n, 1800)
        page.get_by_text(f"{n} of {n} runs done").wait_for(timeout=60_000)
        # The page redraws itself once the study ends; a fresh load shoots the result.
        page.goto(f"{url}/study?study={SPEC.study_id}")
        page.get_by_text(f"{n} of {n} runs done").wait_for(timeout=60_000)
        shoot("finished")

        page.get_by_role("tab", name="Curves").click()
        chart = page.locator(".vega-embed").first
        page.wait_for_timeout(1500)
        box = chart.bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.45)
        page.wait_for_timeout(800)
        page.screenshot(path=str(out / "study-hover.png"))
        page.mouse.move(box["x"] + 5, box["y"] + 5)
        legend = chart.locator("svg text", has_text="Freon")
        if legend.count():
            legend.first.click()
            page.wait_for_timeout(800)
            page.screenshot(path=str(out / "study-picked.png"))
        browser.close()


if __name__ == "__main__":
    main()
