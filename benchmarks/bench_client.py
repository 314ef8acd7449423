"""What logging costs a training script: ``approximant.start_run(...).log`` (approximant/client.py).

Three measurements in one process, against an embedded Valkey broker started here on a
temporary data directory (``tasks.broker.EmbeddedBroker``, the server ``approximant up``
runs, with its ``appendfsync always``); no worker, no dashboard:

1. **per call**: ``run.log(step, train_loss=x)`` (and with three metrics) in a loop of
   ``--calls`` calls against the same loop doing the same float work bare, two ways: with the
   run's sender thread paused (``client.FLUSH_S`` set to an hour for that run: the call alone,
   then the ``run.flush()`` after the loop sends every row, its time per row), and as in a
   script, the sender running meanwhile (every 0.25 s it hands the rows held to the
   publisher, which sends a batch once 2 000 are pending or a second has passed, competing for
   the GIL), with and without the final ``flush()`` that sends what the loop left held. Parts
   1 and 2 run with no recorder in this process (it lives in the dashboard's); the stream is
   dropped after each repeat.
2. **training loop**: the digits MLP of examples/own_script.py (Kaon on the hidden matrix,
   AdamW on the rest; or AdamW alone), ``--steps`` steps with an evaluation every 50, bare
   against ``run.log`` every step (and the evaluations' two rows) and ``finish()`` at the end
   (which sends the rows still held), the run started off the clock, and bare again as a
   control of the machine's noise; the three interleaved over ``--repeats`` repeats, their
   order rotating; one torch thread. Wall time and this process's CPU time
   (``time.process_time``, every thread: the sender's work included, other processes' load
   not). The last column is what part 1's all-in cost per call predicts.
3. **delivery**: a ``storage.recorder.Recorder`` draining the stream into a
   ``storage.db.Database`` (the dashboard's job) in this process: the time from ``run.log`` of
   a run's last row to that row being in DuckDB, when the script then goes on without
   flushing (the row waits for the sender's next send, once a second), calls ``run.flush()``,
   or leaves the ``with`` block (``finish()``); and the rows per second the recorder applies
   for logged rows (``--rows`` rows, sent in batches of 1 000 as a fast loop's sender does,
   applied by ``recorder.drain()``).

Medians over repeats (``time.perf_counter`` unless said). Run:
``python benchmarks/bench_client.py [--calls 100000] [--steps 300] [--repeats 9]``
(about a minute and a half on 2 cores).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

import approximant
from approximant.storage.db import Database
from approximant.storage.recorder import Recorder
from approximant.storage.stream import EventStream, connect
from approximant.tasks.broker import EmbeddedBroker

STUDY = "bench: logging from a script"
EVAL_EVERY = 50


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(ratios: list[float]) -> str:
    return f"{med(ratios):.3f}× ({min(ratios):.2f}–{max(ratios):.2f})"


# -- 1. per call -----------------------------------------------------------------------------

def loop_bare(n: int) -> float:
    x = 1.0
    t0 = time.perf_counter()
    for _step in range(n):
        x = x * 0.999 + 0.001
    return time.perf_counter() - t0


def loop_log(run, first: int, n: int, metrics: int) -> tuple[float, float]:
    """Seconds for the loop, then for the ``flush()`` that sends what it left held."""
    log = run.log
    x = 1.0
    t0 = time.perf_counter()
    if metrics == 1:
        for step in range(first, first + n):
            x = x * 0.999 + 0.001
            log(step, train_loss=x)
    else:
        for step in range(first, first + n):
            x = x * 0.999 + 0.001
            log(step, train_loss=x, val_loss=x, val_accuracy=x)
    t1 = time.perf_counter()
    run.flush()
    return t1 - t0, time.perf_counter() - t1


def per_call(url: str, calls: int, repeats: int) -> list[dict]:
    """Per metric count: the loop with the sender running (as in a script) and with it
    paused (``client.FLUSH_S`` set to an hour before the run starts: ``log`` alone, the rows
    all sent by the ``flush()`` after the loop)."""
    from approximant import client

    runs = {}
    for m in (1, 3):
        runs[m, "live"] = approximant.start_run(STUDY, optimizer="calls", config={"metrics": m},
                                                seed=0, steps=10**9, broker=url)
        saved, client.FLUSH_S = client.FLUSH_S, 3600.0
        try:
            runs[m, "paused"] = approximant.start_run(
                STUDY, optimizer="calls", config={"metrics": m}, seed=1, steps=10**9,
                broker=url)
        finally:
            client.FLUSH_S = saved
    bare: list[float] = []
    logged: dict[tuple, list[tuple[float, float]]] = {key: [] for key in runs}
    loop_bare(calls)  # warm-up
    for (m, _), run in runs.items():
        loop_log(run, 0, 1000, m)
    for r in range(repeats):
        bare.append(loop_bare(calls))
        for (m, how), run in runs.items():
            logged[m, how].append(loop_log(run, 1000 + r * calls, calls, m))
            forget_stream(url)
    for run in runs.values():
        run.finish()
    forget_stream(url)
    b = med(bare)
    out = []
    for m in (1, 3):
        live, paused = logged[m, "live"], logged[m, "paused"]
        out.append({"metrics": m, "bare_us": b / calls * 1e6,
                    "call_us": (med([t for t, _ in paused]) - b) / calls * 1e6,
                    "send_us": med([f for _, f in paused]) / (calls * m) * 1e6,
                    "live_us": (med([t for t, _ in live]) - b) / calls * 1e6,
                    "live_total_us": (med([t + f for t, f in live]) - b) / calls * 1e6,
                    "live_flush_ms": med([f for _, f in live]) * 1e3})
    return out


def forget_stream(url: str) -> None:
    """Drop what was sent (no recorder reads parts 1 and 2): the broker's memory stays flat."""
    from approximant.storage.stream import STREAM

    connect(url).delete(STREAM)


# -- 2. a training loop ----------------------------------------------------------------------

def example():
    """examples/own_script.py as a module (loaded from its file: the example is a script, not
    a package module): its data, model and step are what part 2 times."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "examples" / "own_script.py"
    spec = importlib.util.spec_from_file_location("own_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train(ex, optimizer: str, steps: int, data, run=None) -> float:
    """examples/own_script.py's loop, timed from the model's build to the last step."""
    xt, yt, xv, yv = data
    t0 = time.perf_counter()
    model, opts, _config = ex.build(optimizer, seed=0)
    ev = ex.evaluate(model, xv, yv)
    if run is not None:
        run.log(0, **ev)
    for step in range(1, steps + 1):
        value = ex.train_step(model, opts, xt, yt, 0, step)
        if run is not None:
            run.log(step, train_loss=value)
        if step % EVAL_EVERY == 0 or step == steps:
            ev = ex.evaluate(model, xv, yv)
            if run is not None:
                run.log(step, **ev)
    return time.perf_counter() - t0


def training(url: str, optimizers: list[str], steps: int, repeats: int) -> list[dict]:
    """Per optimizer and clock: bare, logged and, as a control for this machine's noise, bare
    again ("A/A"); the three rotate their order from repeat to repeat."""
    ex = example()
    data = ex.data()
    out = []
    variants = ("bare", "log", "again")
    for name in optimizers:
        train(ex, name, 50, data)  # warm-up (first calls, allocations)
        times: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
        for r in range(repeats):
            for variant in variants[r % 3:] + variants[:r % 3]:
                run = None
                if variant == "log":
                    # A fresh run per repeat, started off the clock (a few broker round
                    # trips); on it, ``log`` every step and ``finish()``, which sends the rows
                    # still held.
                    run = approximant.start_run(STUDY, optimizer=name, config={"repeat": r},
                                                seed=0, steps=steps, broker=url)
                c0 = time.process_time()
                t0 = time.perf_counter()
                train(ex, name, steps, data, run)
                if run is not None:
                    run.finish()
                times[variant].append((time.perf_counter() - t0, time.process_time() - c0))
            forget_stream(url)
        row = {"optimizer": name}
        for i, clock in enumerate(("wall", "cpu")):
            b, lg, aa = ([x[i] for x in times[v]] for v in variants)
            row[clock] = {"bare_s": med(b), "log_s": med(lg), "ratio": med(lg) / med(b),
                          "pairs": [y / x for x, y in zip(b, lg, strict=True)],
                          "aa": [y / x for x, y in zip(b, aa, strict=True)]}
        out.append(row)
    return out


# -- 3. delivery into DuckDB -----------------------------------------------------------------

def recorded(db: Database, run_id: str, step: int, name: str) -> bool:
    with db.read() as cur:
        return cur.execute("SELECT count(*) FROM metrics WHERE run_id = ? AND step = ? AND "
                           "name = ?", [run_id, step, name]).fetchone()[0] > 0


def wait_recorded(db: Database, run_id: str, step: int, name: str, t0: float,
                  timeout: float = 30) -> float:
    while not recorded(db, run_id, step, name):
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"row {run_id} {step} {name} not recorded in {timeout} s")
        time.sleep(0.002)
    return time.perf_counter() - t0


def delivery(url: str, db: Database, repeats: int) -> dict[str, list[float]]:
    """Seconds from ``log`` of the last row to the row in DuckDB, per way of ending."""
    rng = random.Random(0)
    out: dict[str, list[float]] = {"no flush": [], "flush()": [], "finish()": []}
    for r in range(repeats):
        for how in out:
            ending = {"no flush": "none", "flush()": "flush", "finish()": "finish"}[how]
            run = approximant.start_run(STUDY, optimizer="delivery", config={"end": ending},
                                        seed=r, steps=10**6, broker=url)
            # A loop at ≈ 500 steps/s for a random while (the sender's phase: it sends once a
            # second, the run's first rows at once), then its last row.
            spell = rng.uniform(1.2, 2.4) if how == "no flush" else rng.uniform(0.3, 0.6)
            step, until = 0, time.perf_counter() + spell
            while time.perf_counter() < until:
                step += 1
                run.log(step, train_loss=1.0 / step)
                time.sleep(0.002)
            step += 1
            t0 = time.perf_counter()
            run.log(step, train_loss=0.0)
            if how == "flush()":
                run.flush()
            elif how == "finish()":
                run.finish()
            out[how].append(wait_recorded(db, run.run_id, step, "train_loss", t0))
            run.finish()
    return out


def recorder_rate(url: str, db: Database, recorder: Recorder, rows: int) -> dict:
    """Rows per second ``recorder.drain()`` applies for rows a script logged."""
    recorder.stop()
    recorder.drain()
    run = approximant.start_run(STUDY, optimizer="rate", config={}, seed=0, steps=rows,
                                broker=url)
    t0 = time.perf_counter()
    for step in range(1, rows // 2 + 1):  # two metrics a step
        run.log(step, train_loss=1.0 / step, lr=0.02)
        if step % 500 == 0:
            run.flush()
    run.finish()
    sent_s = time.perf_counter() - t0
    with db.read() as cur:
        before = cur.execute("SELECT count(*) FROM metrics").fetchone()[0]
    t0 = time.perf_counter()
    entries = recorder.drain()
    drain_s = time.perf_counter() - t0
    with db.read() as cur:
        applied = cur.execute("SELECT count(*) FROM metrics").fetchone()[0] - before
    recorder.start()
    return {"rows": applied, "entries": entries, "drain_s": drain_s, "rate": applied / drain_s,
            "sent_s": sent_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=100_000, help="log calls per repeat (part 1)")
    ap.add_argument("--call-repeats", type=int, default=5, help="repeats of part 1")
    ap.add_argument("--steps", type=int, default=300, help="training steps per run (part 2)")
    ap.add_argument("--optimizers", default="kaon,adamw", help="part 2: kaon and/or adamw")
    ap.add_argument("--repeats", type=int, default=9, help="repeats of part 2")
    ap.add_argument("--deliveries", type=int, default=5, help="repeats of part 3's latency")
    ap.add_argument("--rows", type=int, default=200_000, help="rows for the recorder's rate")
    args = ap.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(Path(tmp) / "data") as broker:
        url = broker.url
        t_all = time.perf_counter()
        # Parts 1 and 2 with no recorder in this process: it lives in the dashboard's.
        calls = per_call(url, args.calls, args.call_repeats)
        loops = training(url, args.optimizers.split(","), args.steps, args.repeats)
        db = Database.in_dir(Path(tmp) / "data")
        recorder = Recorder(db, EventStream(connect(url)))
        recorder.start()
        try:
            lat = delivery(url, db, args.deliveries)
            rate = recorder_rate(url, db, recorder, args.rows)
        finally:
            recorder.close()
            db.close()
        took = time.perf_counter() - t_all

    print(f"\nembedded Valkey (appendfsync always); recorder → DuckDB in this process for "
          f"part 3 only; one torch thread; medians; {took:.0f} s in all\n")
    print(f"1. per call, {args.calls:,} calls × {args.call_repeats} repeats, µs per call "
          f"(a bare iteration: {calls[0]['bare_us']:.3f} µs)\n")
    print("| call | `log` alone (sender paused) | sending, per row (`flush()`) | in a loop "
          "with the sender running | the same + final `flush()` |")
    print("|---|---|---|---|---|")
    for c in calls:
        what = "`run.log(step, train_loss=x)`" if c["metrics"] == 1 else \
            "`run.log(step, 3 metrics)`"
        print(f"| {what} | {c['call_us']:.2f} | {c['send_us']:.2f} | **{c['live_us']:.2f}** | "
              f"{c['live_total_us']:.2f} (flush {c['live_flush_ms']:.0f} ms) |")
    print(f"\n2. training loop, digits MLP, {args.steps} steps, evaluation every {EVAL_EVERY}, "
          f"{args.repeats} repeats\n")
    # What part 1 predicts: every step's call (one metric) and every evaluation's (two, taken
    # as the mean of one and three), sending included.
    evals = len({0, args.steps, *range(EVAL_EVERY, args.steps + 1, EVAL_EVERY)})
    one, three = calls[0]["live_total_us"], calls[1]["live_total_us"]
    cost_s = (args.steps * one + evals * (one + three) / 2) * 1e-6
    print("| optimizer | clock | bare, s | with run.log, s | ratio of medians | median paired "
          "ratio (range) | A/A: bare again, median paired ratio (range) | predicted by part 1 |")
    print("|---|---|---|---|---|---|---|---|")
    for t in loops:
        label = "Kaon + AdamW" if t["optimizer"] == "kaon" else "AdamW"
        for clock, what in (("wall", "wall"), ("cpu", "process CPU")):
            c = t[clock]
            print(f"| {label} | {what} | {c['bare_s']:.3f} | {c['log_s']:.3f} | "
                  f"**{c['ratio']:.3f}×** | {spread(c['pairs'])} | {spread(c['aa'])} | "
                  f"{1 + cost_s / c['bare_s']:.4f}× |")
    print(f"\n3. delivery: last row's `run.log` → row in DuckDB, s ({args.deliveries} runs "
          f"each)\n")
    print("| the script then | median | min | max |")
    print("|---|---|---|---|")
    for how, xs in lat.items():
        print(f"| {how} | {med(xs):.3f} | {min(xs):.3f} | {max(xs):.3f} |")
    print(f"\nrecorder: {rate['rows']:,} logged rows in {rate['entries']} stream entries applied "
          f"in {rate['drain_s']:.2f} s: **{rate['rate']:,.0f} rows/s** "
          f"(logging and sending them took {rate['sent_s']:.2f} s)")


if __name__ == "__main__":
    main()
