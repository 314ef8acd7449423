"""Progress of a headless ``approximant run`` in the terminal.

On a terminal it is one block redrawn in place: a summary line (runs done, running, queued,
failed; steps done; elapsed time and an estimate of what is left) and one line per config with
a bar over its seeds' steps and its latest losses. A preset has up to 180 runs, so lines are per
config, not per run, and the block is cut to the terminal's height. Anywhere else (a log
file, CI) it prints a line per run whenever that run's line changes, as a log should.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from approximant.app.labels import config_title
from approximant.storage.stream import TERMINAL

BAR = 20
METRICS = ("train_loss", "val_loss", "val_accuracy")


def _fmt_time(seconds: float) -> str:
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


def _steps_done(run: Any, state: dict[str, str]) -> int:
    """Steps of ``run`` behind it: all of them once it ended (a diverged or cancelled run has
    no more to come), else its progress record's step."""
    if state.get("status", "queued") in TERMINAL:
        return run.steps
    return min(run.steps, int(state.get("step", 0) or 0))


def _bar(fraction: float, width: int = BAR) -> str:
    filled = max(0.0, min(1.0, fraction)) * width
    full = int(filled)
    part = " ▏▎▍▌▋▊▉"[int((filled - full) * 8)] if full < width else ""
    return ("█" * full + part).ljust(width, "·")


class ProgressView:
    """Shows ``runs`` (RunSpecs) as their broker progress records (``states``) change."""

    def __init__(self, runs: Sequence[Any], out: TextIO | None = None,
                 live: bool | None = None, clock=time.monotonic) -> None:
        self.runs = list(runs)
        self.out = out or sys.stdout
        self.live = (self.out.isatty() and os.environ.get("TERM") != "dumb") if live is None \
            else live
        self.clock = clock
        self.t0 = clock()
        self._drawn = 0  # lines of the block on screen now
        self._last: dict[str, str] = {}

    # -- what is shown -----------------------------------------------------------------------
    def summary(self, states: dict[str, dict[str, str]]) -> str:
        status = [states.get(r.run_id, {}).get("status", "queued") for r in self.runs]
        done = sum(s in TERMINAL for s in status)
        steps = sum(r.steps for r in self.runs)
        # An ended run counts whole: a diverged or cancelled run has no more steps to come.
        at = sum(_steps_done(r, states.get(r.run_id, {})) for r in self.runs)
        fraction = at / steps if steps else 1.0
        elapsed = self.clock() - self.t0
        left = (f" · about {_fmt_time(elapsed * (1 - fraction) / fraction)} left"
                if 0.02 < fraction < 1 else "")
        counts = [f"{done}/{len(self.runs)} runs done"]
        for word in ("running", "queued", "failed", "diverged", "cancelled"):
            n = status.count(word)
            if n:
                counts.append(f"{n} {word}")
        return (f"{' · '.join(counts)}  {_bar(fraction)} {fraction:4.0%}  "
                f"{_fmt_time(elapsed)}{left}")

    def config_lines(self, states: dict[str, dict[str, str]]) -> list[str]:
        groups: dict[str, list[Any]] = {}
        for r in self.runs:
            groups.setdefault(r.label, []).append(r)
        width = max((len(config_title(label)) for label in groups), default=0)
        width = min(width, 48)
        lines = []
        for label, runs in groups.items():
            recs = [states.get(r.run_id, {}) for r in runs]
            status = [s.get("status", "queued") for s in recs]
            at = sum(_steps_done(r, s) for r, s in zip(runs, recs, strict=True))
            fraction = at / max(1, sum(r.steps for r in runs))
            ended = sum(st in TERMINAL for st in status)
            note = f"{ended}/{len(runs)} seeds"
            bad = [st for st in status if st in ("failed", "diverged")]
            if bad:
                note += f" ({len(bad)} {bad[0]})"
            values = []
            for key in METRICS:
                seen = [float(s[key]) for s in recs if key in s]
                if seen:  # the mean over the seeds that report it
                    values.append(f"{key} {sum(seen) / len(seen):.4g}")
            title = config_title(label)
            title = title if len(title) <= width else title[:width - 1] + "…"
            lines.append(f"  {title:<{width}}  {_bar(fraction, 12)} {note:<14} "
                         + "  ".join(values))
        return lines

    # -- drawing -----------------------------------------------------------------------------
    def update(self, states: dict[str, dict[str, str]]) -> None:
        if self.live:
            self._redraw([self.summary(states), *self.config_lines(states)])
        else:
            self._log_lines(states)

    def close(self, states: dict[str, dict[str, str]]) -> None:
        """The last state, left on screen (a live block is not cleared)."""
        self.update(states)

    def _redraw(self, lines: list[str]) -> None:
        size = shutil.get_terminal_size((100, 30))
        room = max(3, size.lines - 2)
        if len(lines) > room:
            lines = [*lines[:room - 1], f"  … and {len(lines) - room + 1} more configs"]
        cols = max(20, size.columns - 1)
        text = ""
        if self._drawn:
            text += f"\x1b[{self._drawn}F"  # back to the block's first line
        for line in lines:
            text += "\x1b[2K" + line[:cols] + "\n"
        for _ in range(self._drawn - len(lines)):  # a shorter block: clear what is left
            text += "\x1b[2K\n"
        if self._drawn > len(lines):
            text += f"\x1b[{self._drawn - len(lines)}F"
        self.out.write(text)
        self.out.flush()
        self._drawn = len(lines)

    def _log_lines(self, states: dict[str, dict[str, str]]) -> None:
        for r in self.runs:
            s = states.get(r.run_id, {})
            status = s.get("status", "queued")
            line = f"{status:>9}  step {s.get('step', '0'):>6}/{r.steps}"
            for k in METRICS:
                if k in s:
                    line += f"  {k} {float(s[k]):.4g}"
            if self._last.get(r.run_id) != line and (status != "running" or "train_loss" in s):
                self.out.write(f"  {r.label} seed={r.seed}: {line}\n")
                self.out.flush()
                self._last[r.run_id] = line
