"""The lab benchmark: every method × test matrix × dtype, measured iterate by iterate.

``run_lab(spec, sink)`` builds each case, its fp64 SVD reference, runs every method through
``engine.approx.methods`` and hands one ``CaseResult`` per case to ``sink`` (the worker
publishes it), so a long job shows results as it goes and a cancelled one keeps what it did.
Only the methods are timed; references and measurements run off the clock.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from approximant.engine.approx.cases import build_case
from approximant.engine.approx.measure import (
    condition_number,
    effective_lower_bound,
    gemm_gflops,
    measure,
    references,
)
from approximant.engine.approx.methods import final_call, peak_extra_bytes, run_method
from approximant.engine.approx.spec import LabSpec
from approximant.engine.errors import short
from approximant.engine.specs import resolve_device
from approximant.engine.spectral import get_map
from approximant.engine.spectral.common import DTYPES

RESULT_FIELDS = (
    "case_id", "method", "map", "dtype", "iteration", "matmuls", "factorisations", "flops",
    "wall_median_s", "wall_min_s", "wall_max_s", "gflops", "gemm_frac", "peak_bytes",
    "err_spec", "err_rms", "band_min", "band_max", "orth_err", "nuclear_frac", "finite",
)
CASE_FIELDS = ("case_id", "dtype", "source", "spectrum", "shape", "batch", "rows", "cols",
               "kappa", "l_eff", "sigma_max", "gemm_gflops")
CURVE_FIELDS = ("case_id", "method", "dtype", "iteration", "kind", "idx", "x", "y")


@dataclass
class CaseResult:
    """Everything measured on one case: rows shaped as the *_FIELDS tuples above."""

    case_id: str
    cases: list[list[Any]] = field(default_factory=list)
    results: list[list[Any]] = field(default_factory=list)
    curves: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class LabSummary:
    status: str  # finished | cancelled
    cases_done: int
    wall_s: float
    info: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def off_the_clock() -> Iterator[None]:
    """One torch thread for the fp64 references and measurements (never timed).

    Their small LAPACK problems (eigvalsh, SVD of ≤ 1024-sided matrices) gain little from a
    second thread and lose most when the machine is shared: the default job's measurements took
    2–4× longer with two threads than with one on the 2-core machine (docs/performance.md).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def bf16_matmul_kind(device: torch.device) -> str:
    """Whether bf16 matmuls run on native kernels here, as a sentence for the job's info.

    PyTorch does not say which kernel a CPU bf16 GEMM takes, so this asks oneDNN whether it has a
    bf16 path on this CPU and measures a 256×512 GEMM in bf16 against fp32: native bf16
    instructions (AVX512-BF16, AMX) run faster than fp32; an emulated path runs slower.
    """
    if device.type == "cuda":
        return "native (CUDA)"
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn = False
    speed = gemm_gflops(256, 512, torch.bfloat16, device) / gemm_gflops(256, 512, torch.float32,
                                                                         device)
    if onednn and speed > 1:
        return f"native (oneDNN bf16 kernels: a bf16 GEMM ran {speed:.1f}× fp32's speed)"
    how = "oneDNN's bf16 path" if onednn else "PyTorch's reference kernels"
    return (f"emulated ({how}: bf16 storage, fp32 arithmetic; a bf16 GEMM ran at {speed:.2f}× "
            "fp32's speed)")


def _finite(x: float) -> float | None:
    return x if isinstance(x, float) and math.isfinite(x) else None


def _unrepresentable(G64: Tensor, G: Tensor, dtype: torch.dtype) -> str:
    """Why the fp64 case cannot be handed over in ``dtype`` (empty: it can)."""
    if not bool(torch.isfinite(G).all()):
        return f"its entries overflow {str(dtype).removeprefix('torch.')}"
    if bool((G64 != 0).any()) and not bool((G != 0).any()):
        return f"its entries underflow {str(dtype).removeprefix('torch.')} to zero"
    return ""


def case_list(spec: LabSpec) -> list[tuple[str, str, str]]:
    """(case_id, spectrum, shape) for generated cases, then ("captured:…", key, "") per capture."""
    out = [(f"{sp}@{sh}", sp, sh) for sp, sh in spec.cases()]
    for ref in spec.captured:
        out.append((f"captured:{ref.label}", ref.key, ""))
    return out


def run_lab(
    spec: LabSpec,
    sink: Callable[[CaseResult], None],
    should_stop: Callable[[], bool] | None = None,
    captured: dict[str, Tensor] | None = None,
) -> LabSummary:
    """Run the whole job; ``captured`` maps a ``CapturedRef.key`` to its matrix."""
    device = torch.device(resolve_device(spec.device))
    t_start = time.perf_counter()
    cases = case_list(spec)
    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__,
                            "threads": torch.get_num_threads(), "skipped": []}
    if "bfloat16" in spec.dtypes:
        info["bf16_matmul"] = bf16_matmul_kind(device)
    polar = spec.target == "polar"
    c = 0.5 if polar else spec.c
    gen = torch.Generator().manual_seed(spec.seed)
    gemm_cache: dict[tuple[int, int, str], float] = {}
    for done, (case_id, a, b) in enumerate(cases):
        if should_stop is not None and should_stop():
            return LabSummary("cancelled", done, time.perf_counter() - t_start, info)
        if case_id.startswith("captured:"):
            if captured is None or a not in captured:
                raise ValueError(f"captured: matrix {short(a)} was not delivered to the worker")
            G64 = captured[a].to(torch.float64)
            source, spectrum, shape = "captured", "", "x".join(str(d) for d in G64.shape)
        else:
            G64 = build_case(a, b, spec.seed)
            source, spectrum, shape = "generated", a, b
        result = CaseResult(case_id)
        ref_cache: dict[torch.dtype, list] = {}
        for dname in spec.dtypes:
            dtype = DTYPES[dname]
            in_dtype = torch.float64 if dtype == torch.float64 else torch.float32
            G = G64.to(in_dtype).to(device)
            lost = _unrepresentable(G64, G, in_dtype)
            if lost:
                note = f"{case_id} × {dname} skipped: {lost}"
                if note not in info["skipped"]:
                    info["skipped"].append(note)
                continue
            if in_dtype not in ref_cache:
                with off_the_clock():
                    ref_cache[in_dtype] = references(G, c)
            refs = ref_cache[in_dtype]
            m, n = sorted(G.shape[-2:])
            gkey = (m, n, dname)
            if gkey not in gemm_cache:
                gemm_cache[gkey] = gemm_gflops(m, n, dtype, device)
            result.cases.append([
                case_id, dname, source, spectrum, shape, G.shape[0] if G.ndim == 3 else None,
                G.shape[-2], G.shape[-1], _finite(condition_number(refs)),
                effective_lower_bound(refs), float(max(float(r.s.max()) for r in refs)),
                gemm_cache[gkey],
            ])
            for method in spec.methods:
                if dtype == torch.bfloat16 and not get_map(method.map).half:
                    note = (f"{method.label} × bfloat16 skipped: {method.map} has no half-"
                            "precision kernels (factorisations)")
                    if note not in info["skipped"]:
                        info["skipped"].append(note)
                    continue
                _run_one(spec, method, G, dtype, dname, refs, polar, gen, gemm_cache[gkey],
                         case_id, result)
        sink(result)
    return LabSummary("finished", len(cases), time.perf_counter() - t_start, info)


def _run_one(spec: LabSpec, method, G: Tensor, dtype: torch.dtype, dname: str, refs: list,
             polar: bool, gen: torch.Generator, gemm: float, case_id: str,
             result: CaseResult) -> None:
    opts = spec.method_options(method)
    try:
        iterates = run_method(G, method.map, opts, dtype, spec.repeats, gen)
        peak = peak_extra_bytes(final_call(G, method.map, opts, dtype, gen), G.device)
    except (RuntimeError, ValueError, ArithmeticError) as err:
        # A method that breaks on a case (a failed factorisation, an overflow) is a result
        # for that case, like a diverged run: one row at iteration 0, and the reason.
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        result.notes.append(f"{method.label} × {dname} on {case_id} failed: {first}")
        nan_row: list[Any] = [None] * len(RESULT_FIELDS)
        nan_row[:5] = [case_id, method.label, method.map, dname, 0]
        nan_row[5:8] = [0, 0, 0.0]
        nan_row[-1] = False
        result.results.append(nan_row)
        return
    for j, it in enumerate(iterates):
        with off_the_clock():
            meas = measure(it.X, refs, polar)
        med = statistics.median(it.times)
        achieved = it.flops / med / 1e9 if med > 0 else float("nan")
        result.results.append([
            case_id, method.label, method.map, dname, it.k, it.matmuls, it.factorisations,
            it.flops, med, min(it.times), max(it.times), _finite(achieved),
            _finite(achieved / gemm) if gemm > 0 else None,
            peak if j == len(iterates) - 1 else None,
            _finite(meas.err_spec), _finite(meas.err_rms), _finite(meas.band_min),
            _finite(meas.band_max), _finite(meas.orth_err), _finite(meas.nuclear_frac),
            meas.finite,
        ])
        for i, (x, y) in enumerate(meas.transfer):
            result.curves.append([case_id, method.label, dname, it.k, "transfer", i, x, y])
        for i, y in enumerate(meas.spectrum):
            result.curves.append([case_id, method.label, dname, it.k, "spectrum", i,
                                  i / max(1, len(meas.spectrum) - 1), y])
        del it.X  # keep memory flat: iterates are measured once
