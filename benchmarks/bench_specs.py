"""Time to accept or refuse a spec: generated hostile cases and the over-limit specs of issue 11.

* **fuzz**: the cases the property tests generate (tests/test_fuzz_specs.py strategies), a few
  thousand per parser, each parse timed alone; median, 99th percentile and maximum per parser.
* **bombs**: the specs that used to take minutes: a 100 000-run grid in a ~500-byte TOML
  (dict and TOML paths), a 100 000-value grid list, 100 000 seeds, a 10 MB name, 2 000
  duplicate entries under a raised run limit. Each is parsed ``--repeats`` times; the slowest
  is reported.

Run: ``python benchmarks/bench_specs.py [--cases 3000] [--repeats 5]``. Prints a table; the
figures in docs/performance.md come from it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
import tomllib
from collections.abc import Callable
from typing import Any

import spec_strategies as fz
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from approximant.engine.approx.spec import parse_lab, parse_method_lines
from approximant.engine.errors import SpecError
from approximant.engine.specs import parse_study, parse_study_toml

BOMB_TOML = """\
name = "grid bomb"
seeds = [0]
steps = 10

[workload]
name = "digits_mlp"

[[optimizers]]
name = "adamw"
[optimizers.grid]
lr = [0.0001, 0.0002, 0.0003, 0.0004, 0.0005, 0.0006, 0.0007, 0.0008, 0.0009, 0.001]
beta1 = [0.80, 0.81, 0.82, 0.83, 0.84, 0.85, 0.86, 0.87, 0.88, 0.89]
beta2 = [0.990, 0.991, 0.992, 0.993, 0.994, 0.995, 0.996, 0.997, 0.998, 0.999]
eps = [1e-9, 2e-9, 3e-9, 4e-9, 5e-9, 6e-9, 7e-9, 8e-9, 9e-9, 1e-8]
weight_decay = [0.00, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09]
"""


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    try:
        fn()
    except SpecError:
        pass
    except ValueError:  # parse_method_lines' documented error
        pass
    return time.perf_counter() - t0


def fuzz_times(strategy, parse: Callable[[Any], Any], n: int) -> list[float]:
    times: list[float] = []

    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(case):
        times.append(_timed(lambda: parse(case)))

    run()
    return times


def _parse_or_refuse(data: Any) -> None:
    with contextlib.suppress(SpecError):
        parse_study(data)


def lab_from_lines(text: str) -> None:
    parse_lab({**fz.LAB_BASE, "methods": parse_method_lines(text)})


def bombs() -> dict[str, Callable[[], Any]]:
    base = dict(fz.BASE)
    bomb = tomllib.loads(BOMB_TOML)
    many_dupes = {**base, "seeds": [0],
                  "optimizers": [{"name": "adamw", "grid": {"lr": [1e-3]}}] * 2_000}
    return {
        f"100 000-run grid, TOML ({len(BOMB_TOML.encode())} bytes)":
            lambda: parse_study_toml(BOMB_TOML),
        "100 000-run grid, dict": lambda: parse_study(bomb),
        "100 000-value grid list": lambda: parse_study(
            {**base, "optimizers": [{"name": "adamw", "grid": {"lr": [1e-3] * 100_000}}]}),
        "100 000 seeds": lambda: parse_study({**base, "seeds": list(range(100_000))}),
        "10 MB study name": lambda: parse_study({**base, "name": "x" * 10_000_000}),
        "10 MB lab method line": lambda: lab_from_lines("qdwh[" + "x" * 10_000_000),
        "2 000 duplicate entries (limit 100 000)": lambda: _with_limit(
            "100000", lambda: parse_study(many_dupes)),
    }


def _with_limit(value: str, fn: Callable[[], Any]) -> Any:
    old = os.environ.get("APPROXIMANT_MAX_RUNS")
    os.environ["APPROXIMANT_MAX_RUNS"] = value
    try:
        return fn()
    finally:
        if old is None:
            del os.environ["APPROXIMANT_MAX_RUNS"]
        else:
            os.environ["APPROXIMANT_MAX_RUNS"] = old


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=3000, help="generated cases per parser")
    ap.add_argument("--repeats", type=int, default=5, help="parses of each bomb")
    args = ap.parse_args()
    print(f"fuzz: {args.cases} generated cases per parser, each parse timed alone")
    print(f"{'parser':<44} {'n':>6} {'median ms':>10} {'p99 ms':>8} {'max ms':>8}")
    for label, strategy, parse in (
        ("study dict (mutated specs)", fz.mutated_specs(), _parse_or_refuse),
        ("study TOML (mutated specs, random text)",
         fz.mutated_specs().map(fz.to_toml) | st.text(max_size=300), parse_study_toml),
        ("valid study dict", fz.valid_specs(), parse_study),
        ("lab method lines → lab spec", fz.method_lines(), lab_from_lines),
    ):
        t = sorted(fuzz_times(strategy, parse, args.cases))
        p99 = t[min(len(t) - 1, int(0.99 * len(t)))]
        print(f"{label:<44} {len(t):>6} {statistics.median(t) * 1e3:>10.3f} "
              f"{p99 * 1e3:>8.2f} {t[-1] * 1e3:>8.2f}")
    print(f"\nbombs: slowest of {args.repeats} parses")
    print(f"{'spec':<44} {'max ms':>10}")
    for label, fn in bombs().items():
        worst = max(_timed(fn) for _ in range(args.repeats))
        print(f"{label:<44} {worst * 1e3:>10.3f}")


if __name__ == "__main__":
    main()
