"""Method drivers: every iterate of a registered spectral map, with its cost and wall time.

The lab needs what the registry's maps do not return: the iterate after each step, how many
matmuls and factorisations it took, and how long. Two strategies, both driving the registry's
own data and kernels rather than copies of them:

* **Stepped** (the matmul-only odd quintics: ``newton_schulz``, ``kaon_chaos``): one call of
  ``engine.spectral.newton_schulz.odd_quintic_iteration`` with an ``after_step`` hook that keeps
  each iterate and reads the clock after each step. A test checks the last iterate equals the
  registry's output bit for bit.
* **Capped** (``qdwh``, ``freon``): the registry function itself, called with its iteration cap
  set to 1, 2, … until the map stops earlier than the cap (it has converged). Each cap is a real,
  separately timed call, so the wall time at iteration k is what a user of k iterations pays.

Every other map (SVD, Gram eigh, Kaon's SVD form, …) is one "iteration": one timed call.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from approximant.engine.spectral import get_map
from approximant.engine.spectral.common import sync
from approximant.engine.spectral.freon import freon_power
from approximant.engine.spectral.newton_schulz import (
    QuinticPlan,
    kaon_plan,
    newton_schulz_plan,
    odd_quintic_iteration,
)
from approximant.engine.spectral.qdwh import qdwh_polar

# The option that caps a map's iterations, for the maps that iterate.
ITERATION_OPTION = {"newton_schulz": "steps", "kaon_chaos": "steps", "qdwh": "max_iter",
                    "freon": "max_steps"}
# Maps whose target is (GGᵀ)^(−c) G: the lab passes the job's c to them.
POWER_MAPS = ("freon", "gram_eigh", "spectral_power")
# Maps whose result is the polar factor whatever their options.
# Options the lab sets itself (per job or per run) rather than per method.
RESERVED_OPTIONS = ("dtype", "generator", "f")
DEFAULT_CAP = {"qdwh": 10, "freon": 8}


@dataclass
class Iterate:
    """The map's output after ``k`` iterations and what producing it cost (from the start)."""

    k: int
    X: Tensor
    matmuls: int
    factorisations: int
    flops: float
    times: list[float] = field(default_factory=list)  # seconds, one per repeat


def _dims(G: Tensor) -> tuple[int, int, int]:
    """(batch, m, n) of the wide orientation, m ≤ n."""
    m, n = sorted(G.shape[-2:])
    batch = G.shape[0] if G.ndim == 3 else 1
    return batch, m, n


# -- cost models (leading terms, 2 flops per multiply-add, wide orientation m ≤ n) ------------

def quintic_flops(m: int, n: int) -> float:
    """One odd-quintic step: A = XXᵀ (2m²n), A·A (2m³), B·X (2m²n) — SCIENCE.md's table."""
    return 4.0 * m * m * n + 2.0 * m**3


def qr_flops(rows: int, cols: int) -> float:
    """Householder QR of a rows×cols matrix plus forming its thin Q: twice 2·rows·cols² − ⅔cols³."""
    return 2.0 * (2.0 * rows * cols * cols - 2.0 / 3.0 * cols**3)


def svd_flops(m: int, n: int) -> float:
    """Thin SVD with both factors (Golub & Van Loan's R-SVD count, 4m²n + 22m³) plus U f(Σ) Vᵀ."""
    return 4.0 * m * m * n + 22.0 * m**3 + 2.0 * m * m * n


def eigh_flops(m: int, n: int) -> float:
    """Gram (2m²n), eigh with vectors (≈ 9m³), Qᵀ X and Q(·) (2 × 2m²n)."""
    return 6.0 * m * m * n + 9.0 * m**3


def qdwh_flops(m: int, n: int, qr_steps: int, chol_steps: int) -> float:
    """QR step: QR of the (n+m)×m stack and Q₁Q₂ᵀ (2nm²); Cholesky step: TᵀT, chol, solve."""
    qr = qr_flops(n + m, m) + 2.0 * n * m * m
    chol = 2.0 * n * m * m + m**3 / 3.0 + 2.0 * n * m * m
    return qr_steps * qr + chol_steps * chol


def freon_flops(m: int, n: int, steps: tuple, c: float, eigh: bool = False) -> float:
    """QR phase as QDWH's plus the products (I + gA)⁻ʲX; then either the Cholesky phase on the
    m×m Gram (each step: chol, a solve against I, U^p and A·U^p, the accumulator) and the
    finish (E², W·X), or the Gram, its eigh (≈ 9m³, the textbook count with vectors) and
    W·X."""
    total = 0.0
    gram = False
    for st in steps:
        if st.kind == "qr":
            # T₁ = (I + gA)⁻¹X, then K = (I + gA)⁻¹ and Tⱼ = K Tⱼ₋₁ up to the higher of the
            # iterate's power k and the output's k + s (s = k(2c − 1)).
            k = st.p // 2
            s = round(k * (2 * c - 1))
            top = max(k, k + s)
            total += qr_flops(n + m, m) + 2.0 * n * m * m
            if top > 1 or s != 0:
                total += 2.0 * m**3 + 2.0 * m * m * n * (top - 1)
        else:
            if not gram:
                total += 2.0 * m * m * n
                gram = True
            mults = (st.p - 1) + 1 + max(int(c * st.p) - 1, 0) + 1
            total += m**3 / 3.0 + 2.0 * m**3 + 2.0 * m**3 * mults
    if eigh:
        return total + 2.0 * m * m * n + 9.0 * m**3 + 2.0 * m**3 + 2.0 * m * m * n
    return total + 2.0 * m**3 + 2.0 * m * m * n


# -- drivers -----------------------------------------------------------------------------------

def quintic_plan(map_name: str, options: dict[str, Any], dtype: torch.dtype
                 ) -> tuple[QuinticPlan, float]:
    """(the plan the registry map runs in ``dtype``, eps) for a stepped map and its options."""
    eps = float(options.get("eps", 1e-7))
    if map_name == "newton_schulz":
        plan = newton_schulz_plan(options.get("schedule", "keller"), options.get("steps"), dtype)
        return plan, eps
    return kaon_plan(int(options.get("steps", 5))), eps


def quintic_rows(map_name: str, options: dict[str, Any], dtype: torch.dtype = torch.float64
                 ) -> tuple[list[tuple[float, float, float]], float, float, float]:
    """(rows applied, norm safety, output divisor, eps) of :func:`quintic_plan` (fp64: the
    tables as they are)."""
    plan, eps = quintic_plan(map_name, options, dtype)
    return plan.rows, plan.norm_safety, plan.out_scale, eps


def _stepped(G: Tensor, map_name: str, options: dict[str, Any], dtype: torch.dtype,
             repeats: int) -> list[Iterate]:
    plan, eps = quintic_plan(map_name, options, dtype)
    out_scale = plan.out_scale
    batch, m, n = _dims(G)
    times: list[list[float]] = [[] for _ in plan.rows]
    kept: list[Tensor] = []  # the last repeat's iterates
    t0 = [0.0]

    def keep(i: int, X: Tensor) -> None:
        kept.append(X)
        sync(G.device)
        times[i].append(time.perf_counter() - t0[0])

    for _ in range(repeats):
        kept.clear()
        sync(G.device)
        t0[0] = time.perf_counter()
        # The registry's own iteration, watched after every step: the iterates are its own.
        odd_quintic_iteration(G, plan.rows, dtype=dtype, eps=eps, norm_safety=plan.norm_safety,
                              s4_guard=plan.s4_guard, after_step=keep)
    out = []
    for i, Y in enumerate(kept):
        if out_scale != 1.0:
            Y = Y / out_scale
        out.append(Iterate(i + 1, Y, 3 * (i + 1), 0, batch * quintic_flops(m, n) * (i + 1),
                           times[i]))
    return out


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[Any, list[float]]:
    times = []
    result = None
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return result, times


def _capped(G: Tensor, map_name: str, options: dict[str, Any], dtype: torch.dtype,
            repeats: int) -> list[Iterate]:
    batch, m, n = _dims(G)
    key = ITERATION_OPTION[map_name]
    cap = int(options.get(key, DEFAULT_CAP[map_name]))
    base = {k: v for k, v in options.items() if k != key}
    if map_name == "freon":
        # Freon's speculative first step (``probe``) and its eigh finish plan differently under
        # each cap, so the capped calls would not be the iterates of one run: measure the
        # data-independent rational iteration unless the method asks for them.
        base.setdefault("probe", False)
        base.setdefault("finish", "cholesky")
    out: list[Iterate] = []
    done = 0
    for k in range(1, cap + 1):
        if map_name == "qdwh":
            (X, info), times = _timed(
                lambda k=k: qdwh_polar(G, dtype=dtype, max_iter=k, **base), G.device, repeats)
            flops = qdwh_flops(m, n, info.qr_steps, info.cholesky_steps)
            facts = info.iterations
            mat = facts  # one GEMM-like product per step besides the factorisation
        else:
            # Solving the coefficient schedule is a one-off per option set (cached), not part
            # of what a training step pays: do it before the clock starts.
            get_map("freon").warm(tuple(G.shape), dtype=dtype, max_steps=k, **base)
            (X, info), times = _timed(
                lambda k=k: freon_power(G, dtype=dtype, max_steps=k, **base), G.device, repeats)
            flops = freon_flops(m, n, info.schedule, float(base.get("c", 0.5)),
                                eigh=info.eigh_steps > 0)
            facts = info.factorisations
            mat = 2 * info.qr_steps + 4 * info.cholesky_steps + 3 * info.eigh_steps + 2
        if facts <= done:
            break  # converged before the cap: a larger cap computes the same thing
        done = facts
        out.append(Iterate(done, X, mat, facts, batch * flops, times))
        if done < k:
            break
    return out


def _single(G: Tensor, map_name: str, options: dict[str, Any], dtype: torch.dtype,
            repeats: int, generator: torch.Generator | None) -> list[Iterate]:
    batch, m, n = _dims(G)
    spec = get_map(map_name)
    opts = dict(options)
    if spec.random:
        opts["generator"] = generator
    X, times = _timed(lambda: spec.fn(G, dtype=dtype, **opts), G.device, repeats)
    if map_name == "gram_eigh":
        flops, mat = eigh_flops(m, n), 3
    else:
        flops, mat = svd_flops(m, n), 1
    return [Iterate(1, X, mat, 1, batch * flops, times)]


def run_method(G: Tensor, map_name: str, options: dict[str, Any], dtype: torch.dtype,
               repeats: int = 3, generator: torch.Generator | None = None) -> list[Iterate]:
    """Every iterate of ``map_name`` on ``G`` computed in ``dtype``, timed over ``repeats``."""
    if not 1 <= repeats <= 100:
        raise ValueError(f"repeats: must be in [1, 100] (got {repeats})")
    if map_name in ("newton_schulz", "kaon_chaos"):
        return _stepped(G, map_name, options, dtype, repeats)
    if map_name in ("qdwh", "freon"):
        return _capped(G, map_name, options, dtype, repeats)
    return _single(G, map_name, options, dtype, repeats, generator)


# -- memory ------------------------------------------------------------------------------------

class _PeakTracker(TorchDispatchMode):
    """Live bytes of tensors created by torch ops inside the ``with`` block, and their peak.

    Storage is counted once however many views point at it, and released when the last tensor
    this tracker saw on it is freed. Library workspace inside one op (LAPACK, oneDNN) is not
    visible at this level, so the figure is a lower bound on the true peak.
    """

    def __init__(self) -> None:
        super().__init__()
        self.refs: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor) and t.device.type != "meta":
                self._track(t)
        return out

    def _track(self, t: Tensor) -> None:
        st = t.untyped_storage()
        key, size = st.data_ptr(), st.nbytes()
        if size == 0:
            return
        if key not in self.refs:
            self.refs[key] = 0
            self.sizes[key] = size
            self.current += size
            self.peak = max(self.peak, self.current)
        self.refs[key] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        n = self.refs.get(key)
        if n is None:
            return
        if n <= 1:
            del self.refs[key]
            self.current -= self.sizes.pop(key)
        else:
            self.refs[key] = n - 1


def peak_extra_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak memory ``fn`` allocates beyond its inputs (the allocator's figure on CUDA; tensor
    accounting at the dispatcher on CPU, see ``_PeakTracker``)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del result
        return int(peak)
    tracker = _PeakTracker()
    with tracker:
        result = fn()
    del result
    return int(tracker.peak)


def final_call(G: Tensor, map_name: str, options: dict[str, Any], dtype: torch.dtype,
               generator: torch.Generator | None = None) -> Callable[[], Tensor]:
    """A thunk running the map once as configured (the registry's own function)."""
    spec = get_map(map_name)
    opts = dict(options)
    if spec.random:
        opts["generator"] = generator
    return lambda: spec.fn(G, dtype=dtype, **opts)
