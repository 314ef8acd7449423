"""Optimizer step time: our Muon (engine/spectral) against torch.optim.Muon, in one run.

    python benchmarks/bench_muon.py                  # CPU, default repeats
    python benchmarks/bench_muon.py --device cuda    # same script on a GPU

Only ``opt.step()`` is timed (gradients are fixed tensors set once), the device is
synchronised before each clock read, the optimizers alternate step by step (the first one
rotating) so that load on the machine hits all alike, and the median per-step time is
reported with the ratio ours / torch (goal ≤ 1.0×). "ours" batches same-shaped matrices into
one Newton–Schulz call where that pays (``batch="auto"``, the default); "unbatched" is the
same optimizer with ``batch="never"`` (one call per matrix, as before batching existed). Both
are bit-identical to torch.optim.Muon. "ours fp32" runs Newton–Schulz in float32 instead of
bf16: not bit-identical; faster only on CPUs without fast bf16 GEMM.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from approximant.engine.spectral.common import sync
from approximant.engine.spectral.optimizer import SpectralOptimizer, configure_map

SHAPE_SETS = {
    # The hidden matrices of the tiny_gpt workload's defaults (width 64, depth 2): per block
    # q, k, v, proj (64×64), fc (256×64) and out (64×256).
    "tiny LM (2 blocks)": [(64, 64)] * 4 + [(256, 64), (64, 256)] + [(64, 64)] * 4
    + [(256, 64), (64, 256)],
    "GPT-2 768×768": [(768, 768)],
    "GPT-2 768×3072": [(768, 3072)],
    "GPT-2 3072×768": [(3072, 768)],
    # Two GPT-2-small blocks' attention projection and MLP matrices (shape groups of 2).
    "GPT-2 block ×2": [(768, 768), (768, 3072), (3072, 768)] * 2,
}


def _make(shapes, device, kind: str) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(*s, generator=g).to(device) * 0.02)
              for s in shapes]
    for p in params:
        p.grad = torch.randn(*p.shape, generator=g).to(device)
    if kind == "torch":
        opt = torch.optim.Muon(params, lr=0.02, weight_decay=0.0, adjust_lr_fn="original")
    else:
        dtype = torch.float32 if kind == "ours fp32" else torch.bfloat16
        cmap = configure_map("newton_schulz", schedule="keller", steps=5, dtype=dtype, eps=1e-7)
        # As the registry builds it ("propagate": no per-step finiteness check).
        opt = SpectralOptimizer(params, cmap, lr=0.02, nesterov=True, momentum=0.95,
                                nonfinite="propagate",
                                batch="never" if kind == "unbatched" else "auto")
    return opt, params


def bench(shapes, device: torch.device, repeats: int, warmup: int) -> dict[str, float]:
    kinds = ("torch", "ours", "unbatched", "ours fp32")
    opts = {k: _make(shapes, device, k)[0] for k in kinds}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for i in range(warmup + repeats):
        # Rotate who goes first, so a burst of load on a shared machine favours no one.
        for k in kinds[i % len(kinds):] + kinds[:i % len(kinds)]:
            sync(device)
            t0 = time.perf_counter()
            opts[k].step()
            sync(device)
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=15, help="timed steps, tiny-LM shapes")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--big-repeats", type=int, default=5,
                    help="timed steps for the GPT-2 shapes (on CPUs without bf16 GEMM "
                    "support a 768×3072 bf16 step can take half a minute: lower it there)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--only", choices=("all", "tiny", "gpt2"), default="all",
                    help="which shape sets to run")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"# bench_muon: torch {torch.__version__}, device {device} ({name or 'cpu'}), "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cpus, "
          f"median of {args.repeats} steps (GPT-2 shapes: {args.big_repeats})")
    print()
    print("| shapes | torch.optim.Muon (ms) | ours bf16 (ms) | ours/torch | unbatched/torch "
          "| ours fp32 (ms) | fp32/torch |")
    print("|---|---|---|---|---|---|---|")
    for label, shapes in SHAPE_SETS.items():
        big = label.startswith("GPT-2")
        if (args.only == "tiny" and big) or (args.only == "gpt2" and not big):
            continue
        # One warm-up step suffices for the GPT-2 shapes: it allocates the momentum buffers, and
        # a step there is long beside any other first-call cost.
        t = bench(shapes, device, args.big_repeats if big else args.repeats,
                  min(args.warmup, 1) if big else args.warmup)
        print(f"| {label} | {t['torch'] * 1e3:.2f} | {t['ours'] * 1e3:.2f} | "
              f"{t['ours'] / t['torch']:.2f}× | {t['unbatched'] / t['torch']:.2f}× | "
              f"{t['ours fp32'] * 1e3:.2f} | {t['ours fp32'] / t['torch']:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
