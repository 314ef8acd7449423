"""The approximation lab's default run: how long it takes, where the time goes, and the anchors.

    python benchmarks/bench_lab.py                 # the default job in process, 2 torch threads
    python benchmarks/bench_lab.py --worker        # the same job through Celery, a worker
                                                   # process and the recorder into DuckDB
    python benchmarks/bench_lab.py --device cuda   # the same engine on a GPU

The default job is every polar method (Keller ×5, Polar Express ×8, CANS ×5, classical ×12,
QDWH, Freon c = ½, Gram eigh, SVD) on six spectra × three shapes up to 1024 (256², 1024×256,
512×1024) in fp32 with three timed repeats: ``engine.approx.spec.default_lab()``. The issue's
target is under two minutes on the 2-core CPU. "measured" is the time spent off the clock
(references, measurements, memory pass, GEMM rooflines): total minus the timed repeats.
The anchors are computed in fp64 exactly as the tests compute them.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from approximant.engine.approx.bench import RESULT_FIELDS, CaseResult, run_lab
from approximant.engine.approx.methods import quintic_rows
from approximant.engine.approx.spec import default_lab
from approximant.engine.spectral.qdwh import qdwh_coefficients


def _in_process(device: str) -> None:
    spec = default_lab(device=device)
    per_shape: dict[str, float] = defaultdict(float)
    timed: dict[str, float] = defaultdict(float)
    last = [time.perf_counter()]
    i_wall, i_it, i_map = (RESULT_FIELDS.index(k) for k in ("wall_median_s", "iteration", "map"))

    def sink(r: CaseResult) -> None:
        t = time.perf_counter()
        shape = r.case_id.split("@")[1]
        per_shape[shape] += t - last[0]
        last[0] = t
        # Timed work: stepped maps are timed once per repeat for all iterates (the last
        # iterate's clock); capped maps are one call per iteration count.
        by_method: dict[str, list] = defaultdict(list)
        for row in r.results:
            by_method[row[1]].append(row)
        for rows in by_method.values():
            if rows[0][i_map] in ("newton_schulz", "kaon_chaos"):
                timed[shape] += max(x[i_wall] for x in rows) * spec.repeats
            else:
                timed[shape] += sum(x[i_wall] for x in rows) * spec.repeats

    t0 = time.perf_counter()
    summary = run_lab(spec, sink)
    total = time.perf_counter() - t0
    print(f"default lab run, in process: {total:.1f} s for {summary.cases_done} cases "
          f"({len(spec.methods)} methods, fp32, {spec.repeats} repeats) on {summary.info['device']}"
          f", {summary.info['threads']} torch threads")
    print("| shape | wall s | timed repeats s | off the clock s |")
    print("|---|---|---|---|")
    for shape, w in per_shape.items():
        print(f"| {shape} | {w:.1f} | {timed[shape]:.1f} | {w - timed[shape]:.1f} |")


def _through_worker() -> None:
    """Submit the default job to a real worker process; time submit → last row in DuckDB."""
    import subprocess

    from approximant.storage.db import Database
    from approximant.storage.lab import LabQueries
    from approximant.storage.recorder import Recorder
    from approximant.storage.stream import EventStream, connect
    from approximant.tasks.broker import EmbeddedBroker
    from approximant.tasks.lab import submit_lab

    with tempfile.TemporaryDirectory() as tmp:
        broker = EmbeddedBroker(Path(tmp) / "broker")
        url = broker.start()
        env = {**os.environ, "APPROXIMANT_TORCH_THREADS": str(torch.get_num_threads())}
        worker = subprocess.Popen([sys.executable, "-m", "approximant.app.cli", "worker",
                                   "--broker", url, "--loglevel", "WARNING"], env=env)
        db = Database(Path(tmp) / "lab.duckdb")
        try:
            rec = Recorder(db, EventStream(connect(url)))
            q = LabQueries(db)
            spec = default_lab()
            t0 = time.perf_counter()
            submit_lab(spec, url)
            while True:
                rec.drain_once(block_ms=200)
                job = q.job(spec.job_id)
                if job is not None and job["status"] in ("finished", "failed", "cancelled"):
                    break
            total = time.perf_counter() - t0
            print(f"default lab run through a worker: {total:.1f} s submit → all rows in DuckDB "
                  f"(status {job['status']}, worker's own run {job['info'].get('wall_s')} s, "
                  f"{len(q.results(spec.job_id))} result rows)")
        finally:
            worker.terminate()
            worker.wait(30)
            db.close()
            broker.stop()


def _anchors() -> None:
    grid = torch.logspace(-3, 0, 200001, dtype=torch.float64)

    def compose(opts: dict, x: torch.Tensor) -> torch.Tensor:
        rows, safety, _, _ = quintic_rows("newton_schulz", opts)
        x = x / safety
        for a, b, c in rows:
            x = a * x + b * x**3 + c * x**5
        return x

    for lo in (1e-3, 1e-2):
        y = compose({"schedule": "keller", "steps": 5}, grid[grid >= lo])
        print(f"Keller ×5 on [{lo:g}, 1]: output σ in [{y.min():.4f}, {y.max():.4f}]")
    errs = [float((compose({"schedule": "polar_express", "steps": k}, grid) - 1).abs().max())
            for k in range(1, 9)]
    print("Polar Express (pinned 8-step table, ε = 0.01, input / 1.01): worst |φ − 1| on "
          "[1e-3, 1] by k = 1…8: " + ", ".join(f"{e:.2g}" for e in errs))
    for ell in (1e-3, 1e-8, 1e-16):
        x = torch.logspace(math.log10(ell), 0, 2001, dtype=torch.float64)
        lo, n = ell, 0
        while 1 - lo > 10 * torch.finfo(torch.float64).eps:
            a, b, c = qdwh_coefficients(lo)
            x, lo, n = x * (a + b * x * x) / (1 + c * x * x), lo * (a + b * lo * lo) / (
                1 + c * lo * lo), n + 1
        print(f"QDWH from ℓ = {ell:g}: {n} iterations, worst |φ − 1| = {(x - 1).abs().max():.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--worker", action="store_true", help="through Celery and DuckDB")
    ap.add_argument("--no-anchors", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{time.strftime('%Y-%m-%d %H:%M')} · torch {torch.__version__} · "
          f"{platform.processor() or platform.machine()} · {os.cpu_count()} cores · "
          f"load average before {load:.2f}")
    if args.worker:
        _through_worker()
    else:
        _in_process(args.device)
    if not args.no_anchors:
        _anchors()
    if hasattr(os, "getloadavg"):
        print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
