"""Screenshots of a study logged from training scripts in real Chromium (1400×1000), with runs
still going, half finished and finished, for docs/img/.

Starts ``approximant up`` (local editor mode) and runs examples/own_script.py in six
subprocesses, as a person would from terminals: three configs (Muon, Freon c = ⅔, AdamW) ×
two seeds, ``APPROXIMANT_DATA_DIR`` set to the stack's data directory, one torch thread each.
In each state it shoots the whole study page (the Curves tab, the shot as tall as the page) to
``script-study-{running,half,finished}.png``; with ``SHOTS_TABS=<folder>`` it also shoots
every tab, the Runs tab with every run selected, the Spec expander and the Studies page there,
for review (not for docs/img/). Prints each run's progress at each shot, so a picture can be
checked against the broker's numbers.

Run: ``python benchmarks/shots_client.py [--out docs/img]`` (about two minutes on 2 cores).
Needs Debian's Chromium at /usr/bin/chromium.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from bench_faults import ROOT, chromium, progress, shooting, wait_for
from shots_lab import CONTENT_HEIGHT, PLOT_SIZES, SIZE

from approximant.client import study_id_for
from approximant.storage.stream import TERMINAL

STUDY = "digits, my own loop"  # examples/own_script.py's default study
# The slow ones first (bf16 Muon and Freon cost 30–60 ms a step on this CPU, AdamW ≈ 1.5).
CONFIGS = [["--optimizer", "muon"], ["--optimizer", "freon", "--c", "0.6667"],
           ["--optimizer", "adamw"]]
SEEDS = [0, 1]
STEPS = 400
TABS = ["Curves", "Compare", "Learning rate", "Tuning budget", "Time to target", "Diagnostics",
        "Runs"]
RUN_LINE = re.compile(r"^run (\S+) attempt (\d+)", re.M)


def launch(data_dir: Path, logs: Path) -> list[tuple[str, subprocess.Popen, Path]]:
    env = {**os.environ, "APPROXIMANT_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    env.pop("APPROXIMANT_BROKER_URL", None)
    out = []
    for config in CONFIGS:
        for seed in SEEDS:
            name = f"{config[1]}-seed{seed}"
            log = logs / f"{name}.log"
            cmd = [sys.executable, str(ROOT / "examples" / "own_script.py"), *config,
                   "--seed", str(seed), "--steps", str(STEPS), "--eval-every", "25"]
            proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                    env=env, cwd=ROOT)
            out.append((name, proc, log))
    return out


def run_ids(procs) -> dict[str, str]:
    """name → run id, from each script's first line; empty until every script has started."""
    ids = {}
    for name, proc, log in procs:
        m = RUN_LINE.search(log.read_text(errors="replace"))
        if m:
            ids[name] = m.group(1)
        elif proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log.read_text()}")
    return ids if len(ids) == len(procs) else {}


def main() -> None:
    from playwright.sync_api import expect, sync_playwright

    tabs_dir = Path(os.environ["SHOTS_TABS"]) if os.environ.get("SHOTS_TABS") else None
    if tabs_dir:
        tabs_dir.mkdir(parents=True, exist_ok=True)
    sid = study_id_for(STUDY)
    with shooting(__doc__) as (out, stack, url), sync_playwright() as p:
        procs = launch(stack.data_dir, stack.data_dir.parent)
        try:
            ids = wait_for("every script to start its run", lambda: run_ids(procs), 180)
            broker = stack.broker_url

            def states() -> dict[str, dict[str, str]]:
                return {name: progress(broker, rid) for name, rid in ids.items()}

            def ended() -> int:
                return sum(s.get("status") in TERMINAL for s in states().values())

            browser = chromium(p)
            page = browser.new_page(viewport=SIZE)
            page.goto(f"{url}/study?study={sid}")
            expect(page.get_by_role("heading", name=STUDY)).to_be_visible(timeout=60_000)

            def shoot(state: str) -> None:
                page.get_by_role("tab", name="Curves").last.click()
                # Two curve charts (validation and training loss) once both are reported.
                expect(page.locator(".vega-embed")).to_have_count(2, timeout=120_000)
                page.wait_for_timeout(2500)  # a live refresh: the page is drawn
                height = page.evaluate(CONTENT_HEIGHT)
                page.set_viewport_size({**SIZE, "height": height})
                page.wait_for_timeout(1500)
                sizes = page.evaluate(PLOT_SIZES)
                steady_shot(page, out / f"script-study-{state}.png")
                page.set_viewport_size(SIZE)
                print(f"{state}: {ended()} of {len(ids)} runs ended; {height} px tall; charts "
                      "(w×h, plot w×h): " + ", ".join(f"{a}×{b} ({c}×{d})"
                                                      for a, b, c, d in sizes), flush=True)
                for name, s in states().items():
                    print(f"  {name}: {s.get('status')} step {s.get('step')}/{s.get('steps')} "
                          f"attempt {s.get('attempt')} train_loss {s.get('train_loss')} "
                          f"val_accuracy {s.get('val_accuracy')}", flush=True)
                if tabs_dir:
                    review(page, state, tabs_dir)

            wait_for("every run to report a step", lambda: all(
                int(s.get("step", 0)) >= 5 for s in states().values()), 180)
            shoot("running")
            wait_for("half the runs", lambda: ended() >= len(ids) // 2, 600)
            shoot("half")
            wait_for("every run", lambda: ended() == len(ids), 900)
            n = len(ids)
            page.get_by_text(f"{n} of {n} runs done").wait_for(timeout=60_000)
            # The page redraws itself once the study ends; a fresh load shoots the result.
            page.goto(f"{url}/study?study={sid}")
            page.get_by_text(f"{n} of {n} runs done").wait_for(timeout=60_000)
            shoot("finished")
            if tabs_dir:
                page.goto(f"{url}/")  # the Studies page, the default one
                page.wait_for_timeout(4000)
                page.screenshot(path=str(tabs_dir / "studies.png"))
            browser.close()
        finally:
            for name, proc, log in procs:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(30)
                print(f"{name}: exit {proc.returncode}; "
                      f"{log.read_text(errors='replace').strip().splitlines()[-1:]}")


def stale(page) -> int:
    """Elements a rerun in progress has not redrawn yet (Streamlit dims them)."""
    return page.locator('[data-testid="stElementContainer"][data-stale="true"]').count()


def steady_shot(page, path: Path) -> None:
    """A screenshot between two live refreshes: none of its elements dimmed as stale (a
    refresh every 2 s redraws the page; one that overlaps the shot greys the charts out)."""
    for _ in range(10):
        wait_for("a redrawn page", lambda: stale(page) == 0, 30, poll_s=0.1)
        page.screenshot(path=str(path))
        if stale(page) == 0:
            return
    print(f"{path.name}: a refresh overlapped every try; the last one is kept", flush=True)


def review(page, state: str, folder: Path) -> None:
    """Every tab (viewport-sized), the Runs tab with every run selected and (finished) the
    Spec expander open: what a reviewer checks, not for the docs."""
    for tab in TABS:
        page.get_by_role("tab", name=tab).last.click()
        page.wait_for_timeout(2500)
        page.screenshot(path=str(folder / f"{state}-{tab.lower().replace(' ', '-')}.png"))
    # The Runs tab is open: select every run (the row-marker column's header checkbox).
    grid = page.locator('[data-testid="stDataFrame"]').first
    box = grid.bounding_box()
    if box:
        page.mouse.move(box["x"] + 15, box["y"] + 17)
        page.mouse.click(box["x"] + 15, box["y"] + 17)
        page.wait_for_timeout(2500)
        page.screenshot(path=str(folder / f"{state}-runs-selected.png"))
    if state == "finished":
        page.get_by_text("Spec", exact=True).click()
        page.wait_for_timeout(2500)
        height = page.evaluate(CONTENT_HEIGHT)
        page.set_viewport_size({**SIZE, "height": height})
        page.wait_for_timeout(1000)
        page.screenshot(path=str(folder / f"{state}-spec.png"))
        page.set_viewport_size(SIZE)
    page.get_by_role("tab", name="Curves").last.click()


if __name__ == "__main__":
    main()
