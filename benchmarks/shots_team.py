"""Screenshots of a team-mode dashboard in real Chromium (1400×1000) for docs/img/.

Starts ``approximant up`` with an editor password, submits a six-run digits study, and takes
the study page as its editor and as a share-link viewer sees it with runs still going, half
finished and finished; in between it freezes the broker (SIGSTOP, as a hung team Redis would
be) until the page says so, then thaws it and waits for the banner to go.

Run: ``python benchmarks/shots_team.py [--out docs/img]`` (about three minutes on 2 cores).
Needs Debian's Chromium at /usr/bin/chromium.
"""

from __future__ import annotations

import os
import signal
import time

from bench_faults import chromium, progress, shooting, wait_for

from approximant.app.access import ENV_PASSWORD
from approximant.engine.specs import expand, parse_study
from approximant.storage.stream import TERMINAL

PASSWORD = "correct horse battery staple"
SPEC = parse_study({
    "name": "digits: SGD vs AdamW vs Muon (team view)",
    "workload": {"name": "digits_mlp"},
    "optimizers": [{"name": "sgd", "grid": {"lr": [0.05]}},
                   {"name": "adamw", "grid": {"lr": [1e-3]}},
                   {"name": "muon", "grid": {"lr": [0.02]}}],
    "seeds": [0, 1],
    "steps": 8000,
    "eval_every": 500,
})


def ended(url: str) -> int:
    return sum(progress(url, r.run_id).get("status") in TERMINAL for r in expand(SPEC))


def main() -> None:
    from playwright.sync_api import expect, sync_playwright

    from approximant.tasks.submit import submit_study

    env = {ENV_PASSWORD: PASSWORD}
    with shooting(__doc__, env) as (out, stack, url), sync_playwright() as p:
        browser = chromium(p)
        size = {"width": 1400, "height": 1000}
        editor = browser.new_page(viewport=size)
        editor.goto(f"{url}/")
        editor.get_by_label("Editor password").fill(PASSWORD)
        editor.get_by_role("button", name="Sign in").click()
        expect(editor.get_by_role("heading", name="Studies")).to_be_visible(
            timeout=30_000)
        submit_study(SPEC, stack.broker_url)
        editor.goto(f"{url}/study?study={SPEC.study_id}")
        expect(editor.get_by_text("Share and export")).to_be_visible(timeout=30_000)
        editor.get_by_text("Share and export").click()
        editor.get_by_role("button", name="Create a read-only link").click()
        code = editor.locator("code", has_text="/shared?token=").first
        expect(code).to_be_visible(timeout=30_000)
        viewer = browser.new_context(viewport=size).new_page()
        viewer.goto(code.inner_text().strip())
        editor.goto(f"{url}/study?study={SPEC.study_id}")

        def shoot(state: str) -> None:
            for who, page in (("editor", editor), ("viewer", viewer)):
                page.wait_for_timeout(4000)  # a live refresh or two: charts are drawn
                page.screenshot(path=str(out / f"team-{who}-{state}.png"))
            print(f"{state}: {ended(stack.broker_url)} of 6 runs ended", flush=True)

        wait_for("a run to report", lambda: any(
            progress(stack.broker_url, r.run_id).get("train_loss")
            for r in expand(SPEC)), 120)
        shoot("running")
        wait_for("half the runs", lambda: ended(stack.broker_url) >= 3, 600)
        shoot("half")

        broker = stack.pids()["broker"]
        os.kill(broker, signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            banner = editor.get_by_text("Broker unreachable since", exact=False)
            expect(banner).to_be_visible(timeout=120_000)
            print(f"banner after {time.monotonic() - t0:.1f} s", flush=True)
            editor.screenshot(path=str(out / "team-broker-unreachable.png"))
        finally:
            os.kill(broker, signal.SIGCONT)
        t1 = time.monotonic()
        expect(banner).to_have_count(0, timeout=120_000)
        print(f"banner gone {time.monotonic() - t1:.1f} s after the broker thawed",
              flush=True)

        wait_for("every run", lambda: ended(stack.broker_url) == 6, 900)
        expect(editor.get_by_text("6 of 6 runs done")).to_be_visible(timeout=60_000)
        shoot("finished")
        browser.close()


if __name__ == "__main__":
    main()
