"""The study page's charts in a real headless Chromium: hovering a curve chart shows every
group's value at that step, and clicking a group draws its seeds and fades the others."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from approximant.engine.specs import expand, parse_study
from approximant.storage.stream import EventStream, connect

pytestmark = pytest.mark.browser

SPEC = parse_study({
    "name": "charts: hover and click",
    "workload": {"name": "digits_mlp"},
    "optimizers": [{"name": "sgd", "grid": {"lr": [0.05]}},
                   {"name": "adamw", "grid": {"lr": [1e-3]}},
                   {"name": "freon", "grid": {"lr": [0.02], "c": [0.6667]}}],
    "seeds": [0, 1, 2],
    "steps": 100,
    "eval_every": 10,
})
TITLES = ["SGD-momentum (lr = 0.05)", "AdamW (lr = 0.001)", "Freon (c = ⅔, lr = 0.02)"]


def _publish(broker_url: str) -> None:
    """A finished study straight onto the stream the dashboard records (no training needed:
    this test is about what the page draws)."""
    runs = expand(SPEC)
    events = [{"type": "study", "study_id": SPEC.study_id, "spec": SPEC.model_dump(mode="json"),
               "runs": [r.model_dump(mode="json") for r in runs], "ts": time.time()}]
    for i, run in enumerate(runs):
        floor = 0.1 * (i // 3 + 1) + 0.02 * run.seed
        # Few points: Streamlit draws a chart this small as SVG, whose marks the test can see.
        rows = [[s, name, floor + k / (s + 1), 0.01 * s, 64 * s] for s in range(0, 101, 10)
                for name, k in (("train_loss", 2.0), ("val_loss", 2.5))]
        events.append({"type": "metrics", "run_id": run.run_id, "attempt": 1, "rows": rows})
        events.append({"type": "status", "run_id": run.run_id, "attempt": 1,
                       "status": "finished", "step": 100, "message": None, "worker": "w",
                       "ts": time.time()})
    EventStream(connect(broker_url)).append(events)


def test_hover_shows_every_group_and_a_click_shows_seeds(tmp_path: Path, running_stack,
                                                          launch) -> None:
    from playwright.sync_api import sync_playwright

    with running_stack(tmp_path) as url:
        broker = json.loads((tmp_path / "data" / "stack.json").read_text())["broker_url"]
        _publish(broker)
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/study?study={SPEC.study_id}")
            page.get_by_text("9 of 9 runs done").wait_for(timeout=60_000)
            chart = page.locator(".vega-embed").first
            chart.wait_for(timeout=30_000)
            page.wait_for_timeout(1500)  # Vega draws after the element appears
            box = chart.bounding_box()

            page.mouse.move(box["x"] + box["width"] * 0.35, box["y"] + box["height"] * 0.5)
            tip = page.locator("#vg-tooltip-element")
            tip.wait_for(state="visible", timeout=10_000)
            text = tip.inner_text()
            assert "step" in text and "undefined" not in text
            for title in TITLES:
                assert title in text, text

            page.mouse.move(box["x"] + 5, box["y"] + 5)  # away: the rule goes
            dashed = chart.locator("path[stroke-dasharray]")
            assert dashed.count() == 0  # no seeds drawn until a group is picked
            seeds_drawn = """() => document.querySelector('.vega-embed')
                             .querySelectorAll('path[stroke-dasharray]').length >= 3"""
            # A click in the plot picks the group of the nearest point: its seeds appear.
            page.mouse.click(box["x"] + box["width"] * 0.35, box["y"] + box["height"] * 0.5)
            page.wait_for_function(seeds_drawn, timeout=10_000)
            page.mouse.dblclick(box["x"] + box["width"] * 0.35, box["y"] + box["height"] * 0.5)
            page.wait_for_function("""() => document.querySelector('.vega-embed')
                                   .querySelectorAll('path[stroke-dasharray]').length == 0""",
                                   timeout=10_000)
            # Pick Freon by its legend entry: its three seeds appear, dashed, in its colour.
            chart.locator("svg text", has_text=TITLES[2]).click()
            page.wait_for_function(seeds_drawn, timeout=10_000)
            strokes = {dashed.nth(i).get_attribute("stroke") for i in range(dashed.count())}
            assert strokes == {"#009E73"}, strokes  # third colour of the palette: Freon's
            browser.close()
