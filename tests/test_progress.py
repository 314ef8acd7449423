"""The terminal progress of ``approximant run``: a block redrawn in place on a terminal, a line
per change elsewhere."""

from __future__ import annotations

import io

from approximant.app.progress import ProgressView
from approximant.engine.specs import expand, parse_study

SPEC = parse_study({
    "name": "progress", "workload": {"name": "digits_mlp"},
    "optimizers": [{"name": "adamw", "grid": {"lr": [1e-3, 3e-3]}}, {"name": "freon"}],
    "seeds": [0, 1], "steps": 100,
})
RUNS = expand(SPEC)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _states(**by_index: dict) -> dict[str, dict[str, str]]:
    return {RUNS[int(i)].run_id: {k: str(v) for k, v in s.items()} for i, s in by_index.items()}


def test_the_summary_counts_runs_and_steps_and_estimates_what_is_left() -> None:
    clock = Clock()
    view = ProgressView(RUNS, io.StringIO(), live=True, clock=clock)
    clock.t = 60.0
    states = _states(**{"0": {"status": "finished", "step": 100},
                        "1": {"status": "diverged", "step": 12},
                        "2": {"status": "running", "step": 50, "train_loss": 0.5}})
    line = view.summary(states)
    # 100 + 100 (an ended run counts whole) + 50 of 600 steps: 42 % in 60 s, 83 s left.
    assert line.startswith("2/6 runs done · 1 running · 3 queued · 1 diverged  ")
    assert " 42%  1:00 · about 1:24 left" in line


def test_one_line_per_config_with_its_seeds_and_mean_losses() -> None:
    view = ProgressView(RUNS, io.StringIO(), live=True)
    states = _states(**{"0": {"status": "running", "step": 50, "train_loss": 0.4},
                        "1": {"status": "running", "step": 50, "train_loss": 0.6},
                        "4": {"status": "failed", "step": 3}})
    lines = view.config_lines(states)
    assert len(lines) == 3  # adamw at two lrs, freon; seeds are folded
    assert "AdamW (lr = 0.001)" in lines[0] and "0/2 seeds" in lines[0]
    assert "train_loss 0.5" in lines[0]
    assert "1/2 seeds (1 failed)" in lines[2] and "Freon" in lines[2]


def test_a_terminal_gets_one_block_redrawn_in_place() -> None:
    out = io.StringIO()
    view = ProgressView(RUNS, out, live=True)
    view.update({})
    first = out.getvalue()
    assert first.count("\n") == 4 and "\x1b[" in first and "0/6 runs done" in first
    view.update(_states(**{"0": {"status": "running", "step": 10, "train_loss": 1.0}}))
    second = out.getvalue()[len(first):]
    assert second.startswith("\x1b[4F")  # back up over the block, then the new one
    assert second.count("\n") == 4


def test_a_log_gets_a_line_per_run_when_it_changes() -> None:
    out = io.StringIO()
    view = ProgressView(RUNS, out, live=False)
    states = _states(**{"0": {"status": "running", "step": 10, "train_loss": 1.0}})
    view.update(states)
    view.update(states)  # nothing changed: nothing printed
    text = out.getvalue()
    assert "\x1b" not in text
    assert text.count("\n") == 6  # five queued lines and the running one
    assert f"{RUNS[0].label} seed=0:   running  step     10/100  train_loss 1" in text
