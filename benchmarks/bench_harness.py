"""Harness overhead: one training run through the full path against the same loop run bare.

Variants, timed in one process, interleaved over repeats (median reported):

* ``bare``      a hand-written PyTorch loop (same model, data, optimizer, steps; no metrics);
* ``engine``    ``engine.training.train`` with a sink that drops rows (the loop's own cost);
* ``published`` the worker's code path (``tasks.run.execute_run``): rows buffered and published
                to a Redis stream on an embedded Valkey, progress and status events, cancel polls
                (the recorder is idle, as it lives in the dashboard's process in production);
* ``full``      the same run submitted through Celery to an ``approximant worker`` process while
                the recorder drains the stream into DuckDB in this process (the dashboard's
                role): submit → finished, as a user sees it.

Run: ``python benchmarks/bench_harness.py [--steps 3000] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from approximant.engine.optimizers import build_optimizer
from approximant.engine.specs import expand, parse_study
from approximant.engine.training import train
from approximant.engine.workloads import get_workload


def make_run(steps: int, eval_every: int):
    spec = parse_study({
        "name": "bench", "workload": {"name": "digits_mlp"},
        "optimizers": [{"name": "adamw", "grid": {"lr": [1e-3]}}],
        "seeds": [0], "steps": steps, "eval_every": eval_every, "device": "cpu",
    })
    return spec, expand(spec)[0]


def bare(run) -> float:
    wl = get_workload(run.workload.name)
    t0 = time.perf_counter()
    task = wl.build(wl.settings(**run.workload.settings), run.seed, torch.device("cpu"))
    opt = build_optimizer(run.optimizer, run.hparams, task.model.parameters(),
                          task.matrix_params)
    task.evaluate()
    for step in range(1, run.steps + 1):
        opt.zero_grad(set_to_none=True)
        loss = task.train_loss(step)
        loss.backward()
        opt.step()
        loss.item()
        if step % run.eval_every == 0 or step == run.steps:
            task.evaluate()
    return time.perf_counter() - t0


def engine_only(run) -> float:
    t0 = time.perf_counter()
    train(run, lambda rows: None)
    return time.perf_counter() - t0


def _forget(url: str, run_id: str) -> None:
    """Clear the run's progress and lease so the next repeat trains it again."""
    import redis

    from approximant.tasks.publisher import LEASE_KEY, PROGRESS_KEY
    from approximant.tasks.submit import SUBMITTED_KEY

    redis.Redis.from_url(url).delete(*(k.format(run_id=run_id)
                                       for k in (PROGRESS_KEY, LEASE_KEY, SUBMITTED_KEY)))


def published(run, url: str) -> float:
    from approximant.tasks.run import execute_run

    _forget(url, run.run_id)
    t0 = time.perf_counter()
    execute_run(run, url, worker="bench")
    return time.perf_counter() - t0


def full(spec, url: str) -> float:
    import redis

    from approximant.tasks.publisher import PROGRESS_KEY
    from approximant.tasks.submit import submit_study

    for r in expand(spec):
        _forget(url, r.run_id)
    t0 = time.perf_counter()
    sub = submit_study(spec, url)
    rid = sub.runs[0].run_id
    client = redis.Redis.from_url(url)
    while client.hget(PROGRESS_KEY.format(run_id=rid), "status") != b"finished":
        time.sleep(0.005)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (as a worker has)")
    ap.add_argument("--no-recorder", action="store_true",
                    help="leave the stream undrained during `full` (isolates the recorder's cost)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import os
    import subprocess
    import sys

    from approximant.storage.db import Database
    from approximant.storage.recorder import Recorder
    from approximant.storage.stream import EventStream, connect
    from approximant.tasks.broker import EmbeddedBroker
    from approximant.tasks.celery_app import configure

    spec, run = make_run(args.steps, args.eval_every)
    times: dict[str, list[float]] = {k: [] for k in ("bare", "engine", "published", "full")}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(tmp) as broker:
        url = broker.url
        configure(url)
        db = Database(Path(tmp) / "bench.duckdb")
        stream = EventStream(connect(url))
        recorder = Recorder(db, stream)
        # Register the study first, as a submission does, so every status event has its run.
        stream.append([{"type": "study", "study_id": spec.study_id,
                        "spec": spec.model_dump(mode="json"),
                        "runs": [run.model_dump(mode="json")], "ts": time.time()}])
        bare(run)  # warm-up: imports, data loading, allocator
        worker = subprocess.Popen(
            [sys.executable, "-m", "approximant.app.cli", "worker", "--broker", url,
             "--loglevel", "WARNING"],
            env={**os.environ, "APPROXIMANT_TORCH_THREADS": str(args.threads)},
        )
        try:
            full(spec, url)  # warm-up of the worker process
            for _ in range(args.repeats):
                times["bare"].append(bare(run))
                times["engine"].append(engine_only(run))
                times["published"].append(published(run, url))
                if not args.no_recorder:
                    recorder.start()
                times["full"].append(full(spec, url))
                recorder.stop()
        finally:
            worker.terminate()
            worker.wait(30)
        recorder.drain()
        with db.read() as cur:
            rows = cur.execute("SELECT count(*) FROM metrics").fetchone()[0]
        db.close()

    base = statistics.median(times["bare"])
    print(f"digits_mlp (default settings), AdamW, {args.steps} steps, eval every "
          f"{args.eval_every}, torch threads {args.threads}, {args.repeats} repeats (median)")
    print(f"{'variant':<10} {'seconds':>8} {'steps/s':>9} {'vs bare':>8}")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"{name:<10} {t:8.3f} {args.steps / t:9.0f} {t / base:8.3f}x")
    print(f"metric rows recorded in DuckDB: {rows}")


if __name__ == "__main__":
    main()
