"""Each spectral map's time, cost and error against torch's fp32 SVD and the Gram eigh.

    python benchmarks/bench_maps.py                          # CPU: 512×1024 and 1024², κ 1e2…1e8
    python benchmarks/bench_maps.py --device cuda            # same script on a GPU
    python benchmarks/bench_maps.py --shapes 256x512 --kappas 1e2,1e6 --repeats 1   # quick

Inputs are fp32 matrices with log-uniform singular values on [1/κ, 1] (built in fp64); every
target ``U f(Σ) Vᵀ`` comes from the exact fp64 construction. Error is the relative spectral-norm
error (estimated by 30 power iterations on the difference, in fp64). Cost is time divided by
one same-size GEMM ``X Xᵀ`` (m×n by n×m), "GEMM-equivalents". Each method is timed
interleaved with its baselines (GEMM, fp32 SVD, Gram eigh) repeat by repeat, so the ratios
hold on a loaded machine; times are medians; the device is synchronised before each read.
Freon rows use the default lower bound (1e-6 in fp32) unless they say ℓ₀ = 1/(2κ) (a known
bound), and the default finish (eigh on a CPU, Cholesky steps on a GPU) unless they say
finish=cholesky (the rational iteration throughout); "δ=1e-3" rows compare with the floored
target (GGᵀ + δ²I)^(−c)G, δ relative to ‖G‖₂ = 1. A map with no answer for the input (Freon
c = 1 without a floor once fp32 sees G as rank-deficient, σ_min ≤ max(m, n)·eps·σ_max) prints
its reason instead of a time.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from approximant.engine.errors import MapError
from approximant.engine.spectral import apply_map
from approximant.engine.spectral.common import sync
from approximant.engine.spectral.testing import controlled_matrix


def _time_interleaved(fns: list[Callable[[], torch.Tensor]], device: torch.device,
                      repeats: int) -> tuple[list[float], torch.Tensor]:
    """Median time of each fn, timed in turn within each repeat so that load drifting on a
    shared machine hits the method and its baselines alike; returns the last fn's output."""
    out = [fn() for fn in fns][-1]  # warm-up (and caches such as Freon's schedule)
    ts: list[list[float]] = [[] for _ in fns]
    for r in range(repeats):
        # Rotate who goes first, so a burst of load on a shared machine favours no one.
        for i in [*range(r % len(fns), len(fns)), *range(r % len(fns))]:
            fn = fns[i]
            sync(device)
            t0 = time.perf_counter()
            y = fn()
            sync(device)
            ts[i].append(time.perf_counter() - t0)
            if i == len(fns) - 1:
                out = y
    return [statistics.median(t) for t in ts], out


def _spec_err(Y: torch.Tensor, ref: torch.Tensor, iters: int = 30) -> float:
    """Relative spectral-norm error by power iteration (a lower estimate, fp64)."""
    D = Y.to(torch.float64) - ref
    v = torch.ones(D.shape[1], 1, dtype=torch.float64, device=D.device)
    for _ in range(iters):
        v = D.mT @ (D @ v)
        v = v / v.norm().clamp_min(1e-300)
    num = (D @ v).norm()
    w = torch.ones(ref.shape[1], 1, dtype=torch.float64, device=ref.device)
    for _ in range(iters):
        w = ref.mT @ (ref @ w)
        w = w / w.norm().clamp_min(1e-300)
    return float(num / (ref @ w).norm())


def methods(kappa: float) -> list[tuple[str, float, float, Callable[[torch.Tensor], torch.Tensor]]]:
    """(label, c, δ, fn): the target is U σ(σ² + δ²)^(−c) Vᵀ."""
    f32 = torch.float32
    rows = [
        ("svd fp32 (polar)", 0.5, 0.0, lambda G: apply_map("svd_polar", G)),
        ("gram eigh fp32 (polar)", 0.5, 0.0, lambda G: apply_map("gram_eigh", G, c=0.5)),
        ("newton-schulz keller ×5 fp32", 0.5, 0.0, lambda G: apply_map("newton_schulz", G)),
        ("newton-schulz polar express ×8 fp32", 0.5, 0.0,
         lambda G: apply_map("newton_schulz", G, schedule="polar_express")),
        ("qdwh fp32 (polar)", 0.5, 0.0, lambda G: apply_map("qdwh", G, dtype=f32)),
        ("kaon chaos ×5 fp32 (time only)", float("nan"), 0.0,
         lambda G: apply_map("kaon_chaos", G)),
    ]
    for c, label in ((0.25, "1/4"), (0.5, "1/2"), (2 / 3, "2/3"), (1.0, "1")):
        rows.append((f"svd fp32 c={label}", c, 0.0,
                     lambda G, c=c: apply_map("spectral_power", G, c=c)))
        rows.append((f"gram eigh fp32 c={label}", c, 0.0,
                     lambda G, c=c: apply_map("gram_eigh", G, c=c)))
        rows.append((f"freon fp32 c={label}", c, 0.0, lambda G, c=c: apply_map("freon", G, c=c)))
        if c != 1.0:  # the rational iteration throughout (the default finish is eigh on a CPU)
            rows.append((f"freon fp32 c={label} finish=cholesky", c, 0.0,
                         lambda G, c=c: apply_map("freon", G, c=c, finish="cholesky")))
        if c in (0.5, 2 / 3):
            l0 = 0.5 / kappa  # a known bound: fewer QR steps than the default 1e-6
            rows.append((f"freon fp32 c={label} ℓ₀=1/(2κ)", c, 0.0,
                         lambda G, c=c, l0=l0: apply_map("freon", G, c=c, l0=l0)))
        if c >= 0.5 and kappa >= 1e6:
            rows.append((f"freon fp32 c={label} δ=1e-3", c, 1e-3,
                         lambda G, c=c: apply_map("freon", G, c=c, delta=1e-3, l0=5e-4)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shapes", default="512x1024,1024x1024")
    ap.add_argument("--kappas", default="1e2,1e4,1e6,1e8")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--match", default="",
                    help="comma-separated substrings: run only methods whose label has one")
    args = ap.parse_args()
    wanted = [w for w in args.match.split(",") if w]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"# bench_maps: torch {torch.__version__}, device {device} ({name or 'cpu'}), "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cpus, median of {args.repeats}")
    for shape in args.shapes.split(","):
        m, n = (int(v) for v in shape.split("x"))
        for kappa in (float(k) for k in args.kappas.split(",")):
            t = controlled_matrix(m, n, 1 / kappa, seed=0, device=device)
            G = t.G.to(torch.float32)
            base = [lambda G=G: G @ G.mT, lambda G=G: apply_map("svd_polar", G),
                    lambda G=G: apply_map("gram_eigh", G, c=0.5)]
            print()
            print(f"## {m}×{n}, κ = {kappa:.0e}")
            print()
            print("| method | time (ms) | GEMM-eq | / SVD fp32 | / Gram eigh | rel. error |")
            print("|---|---|---|---|---|---|")
            for label, c, delta, fn in methods(kappa):
                if wanted and not any(w in label for w in wanted):
                    continue
                try:
                    fn(G)
                except MapError as err:  # e.g. c = 1 without a floor at κ ≥ 1e4 in fp32
                    print(f"| {label} | — | — | — | — | no answer: {err.reason} |", flush=True)
                    continue
                (gemm, svd_t, eig_t, dt), Y = _time_interleaved(
                    [*base, lambda G=G, fn=fn: fn(G)], device, args.repeats)
                if c != c:  # NaN: no closed-form target (Kaon's chaotic map)
                    err = "—"
                else:
                    ref = t.apply(t.s * (t.s**2 + delta**2) ** (-c))
                    err = f"{_spec_err(Y, ref):.1e}"
                print(f"| {label} | {dt * 1e3:.1f} | {dt / gemm:.1f} | {dt / svd_t:.2f}× | "
                      f"{dt / eig_t:.2f}× | {err} |", flush=True)


if __name__ == "__main__":
    main()
