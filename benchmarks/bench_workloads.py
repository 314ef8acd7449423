"""Workload speed, the digits-MLP accuracy in a CPU minute, and the cost of diagnostics.

    python benchmarks/bench_workloads.py            # full (about 3 minutes on 2 cores)
    python benchmarks/bench_workloads.py --quick    # smoke run, figures not for the record
    python benchmarks/bench_workloads.py --threads 1

Prints markdown for docs/performance.md. Steps/second use the loop's own clock (training step
only, evaluation excluded). The diagnostics figure is a ratio of whole-run wall clock with
``diagnostics_every = k`` to the same run without, measured back to back in one process, plus
the cost of one measurement in training-step equivalents.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from approximant.engine.specs import expand, parse_study
from approximant.engine.training import train
from approximant.engine.workloads import WORKLOADS

# AdamW learning rates that make each default workload learn (not tuned beyond that).
LR = {"digits_mlp": 3e-3, "digits_cnn": 3e-3, "random_features": 1e-2, "tiny_gpt": 3e-3}


def run(workload: str, steps: int, **study) -> tuple[list[dict], object, float]:
    spec = parse_study({
        "name": "bench", "workload": {"name": workload, "settings": {}},
        "optimizers": [{"name": "adamw", "grid": {"lr": [LR[workload]]}}],
        "steps": steps, **{"eval_every": steps, **study},
    })
    rows: list[dict] = []
    t0 = time.perf_counter()
    result = train(expand(spec)[0], rows.extend)
    return rows, result, time.perf_counter() - t0


def speed(workload: str, steps: int) -> dict[str, float]:
    run(workload, 3)  # warm caches, allocator and the digits/corpus loaders
    rows, result, _ = run(workload, steps)
    wall = max(r["wall_s"] for r in rows if r["name"] == "train_loss")
    tokens = max(r["tokens"] for r in rows)
    val = [r["value"] for r in rows if r["name"] == "val_loss"]
    return {"steps_per_s": result.steps_done / wall, "examples_per_s": tokens / wall,
            "val_first": val[0], "val_last": val[-1]}


def diagnostics_cost(workload: str, steps: int, every: int) -> dict[str, float]:
    plain_rows, _, plain = run(workload, steps, eval_every=steps)
    _, _, measured = run(workload, steps, eval_every=steps, diagnostics_every=every)
    step_s = max(r["wall_s"] for r in plain_rows) / steps
    n = steps // every
    return {"ratio": measured / plain, "per_measure_steps": (measured - plain) / n / step_s}


def digits_minute(budget_s: float) -> dict[str, float]:
    rows, result, _ = run("digits_mlp", 1_000_000, eval_every=100, max_seconds=budget_s)
    acc = [(r["wall_s"], r["value"]) for r in rows if r["name"] == "val_accuracy"]
    first90 = next((w for w, a in acc if a >= 0.9), float("nan"))
    return {"steps": result.steps_done, "final": acc[-1][1], "best": max(a for _, a in acc),
            "first90_s": first90}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        # Workers set their thread count the same way (APPROXIMANT_TORCH_THREADS).
        torch.set_num_threads(args.threads)
    steps = 20 if args.quick else 100
    budget = 5.0 if args.quick else 60.0

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"load average before {os.getloadavg()[0]:.2f}")
    print()
    print("| workload (defaults, AdamW) | steps/s | examples or tokens/s | val loss start → "
          f"after {steps} steps | diagnostics every 10: run-time ratio | one measurement, "
          "in steps |")
    print("|---|---|---|---|---|---|")
    for name in WORKLOADS:
        s = speed(name, steps)
        d = diagnostics_cost(name, steps, 10)
        print(f"| {name} | {s['steps_per_s']:.1f} | {s['examples_per_s']:.0f} | "
              f"{s['val_first']:.3f} → {s['val_last']:.3f} | {d['ratio']:.2f}× | "
              f"{d['per_measure_steps']:.1f} |")
    print()
    m = digits_minute(budget)
    print(f"digits_mlp, AdamW lr {LR['digits_mlp']}, {budget:g} s of training: {m['steps']} steps, "
          f"final val accuracy {m['final']:.3f} (best {m['best']:.3f}); first ≥ 0.90 after "
          f"{m['first90_s']:.2f} s of training")
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
