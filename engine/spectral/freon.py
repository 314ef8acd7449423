"""Freon's rational iteration: ``(G Gᵀ + δ² I)^(−c) G`` without an SVD and without squaring κ.

Notation (wide orientation, X is m×n with m ≤ n, A = X Xᵀ): each step applies
``u(A) = (aI + bA)(I + gA)⁻¹`` with coefficients from engine/spectral/freon_coefficients.py and
drives the Gram by ``A ← A u(A)^p``. Everything is a function of A₀, so everything commutes and

    A₀^(−c) X₀ = F · C · A_T^(−c) · X₁,

where the QR phase moves ``X ← u(A)^(p/2) X`` and accumulates ``F = ∏ u^(p(2c−1)/2)`` (±1 per
step for the supported c), and the Cholesky phase, on the m×m Gram of X₁, accumulates
``C = ∏ u^(cp)`` (for c = ½ it may move X instead). The exponents are integers by the choice of
p per c, so the identity holds for *any* coefficients: coefficient quality buys speed, never
correctness. ``A_T`` ends within the stopping tolerance of a multiple of I and its ``−c`` power
is a binomial series with as many terms as the dtype needs.

The QR phase never forms X Xᵀ: with ``[√g Xᵀ; I] = [Q₁; Q₂] R`` one has ``(I + gA)⁻¹ = Q₂ Q₂ᵀ``
and ``(I + gA)⁻ʲ X = Q₂ (Q₂ᵀ Q₂)^(j−1) Q₁ᵀ / √g``. The floor δ is exact: the iteration runs on
``[X, δI]`` (whose Gram is A + δ²I) and the first n columns are kept. ``c = 1`` is one
least-squares QR. ``c = 0`` is the identity. Derivation and measurements: docs/freon.md.

The code follows a call's phases, top to bottom: the options (declared once, :class:`FreonOptions`)
are checked (:func:`_check_call`); for 0 < c < 1 G is scaled (:func:`_scale`), the steps are
planned from the options alone (:func:`_plan`, a cached lookup), the QR phase runs
(:func:`_qr_phase`, with its speculative first step) and one of two finishes assembles the answer
(:func:`_eigh_finish`, or :func:`_cholesky_finish`); the kernels they share come last.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor

from approximant.engine.errors import MapError
from approximant.engine.spectral.common import (
    check_matrix,
    check_null,
    drop_null,
    empty_result,
    from_wide,
    map_errors,
    null_tolerance,
    pow2,
    pow2_exponent,
    safe_scale,
    scaled_to,
    stacked_q,
    times_pow2,
    to_wide,
    work_dtype,
)
from approximant.engine.spectral.freon_coefficients import (
    ORDERS,
    FreonStep,
    freon_schedule,
    minimax_step,
)

SUPPORTED_C = (Fraction(0), *sorted(ORDERS), Fraction(1))

# Default lower bounds on σ_min/σ_max (the user's assertion about the input): components below
# them are only partly converged, which acts as a soft floor. Default stopping tolerances on
# 1 − L: the series finish then needs at most 4 terms (fp32) or 2 (fp64) to reach the dtype's
# resolution, which is cheaper than the Cholesky step it replaces.
_DEFAULT_L0 = {torch.float32: 1e-6, torch.float64: 1e-10}
_DEFAULT_TOL = {torch.float32: 5e-2, torch.float64: 1e-5}
# The series finish costs J − 1 GEMMs of m×m, a Cholesky step about six: past this order a
# further step is cheaper (and a caller's loose ``tol`` is only served this far).
_MAX_FINISH_ORDER = 6
# Below this Gram lower bound the QR form is used: the Cholesky form needs cond(A) ≲ 1e3.
QR_SWITCH = 1e-3
FINISHES = ("auto", "eigh", "cholesky")  # what follows the QR phase (see freon_power)

# The speculative step aims at L ≥ LANDING_TARGET·QR_SWITCH and the certificate shifts the
# Gram by LANDING_SHIFT·QR_SWITCH: success proves λ_min ≥ 1.25·10⁻³ minus the Gram's
# rounding (≈ √n·eps relative: 1e-5 in fp32, 1e-14 in fp64), so the finish may start
# from QR_SWITCH; the gap to the target leaves room for that rounding many times over.
LANDING_TARGET = 2.0
LANDING_SHIFT = 1.25


@dataclass(frozen=True, kw_only=True)
class FreonOptions:
    """The options of :func:`freon_power`, :func:`freon` and :func:`warm_freon`, declared here
    once with their defaults; :func:`freon_power` says what each means.

    The dataclass only holds them. Each is checked where a call first needs it:
    :func:`_check_call` for every c, :func:`_bound_scale` and :func:`_schedule_for` for
    0 < c < 1 only. That keeps the errors, and their order, what they were with three
    keyword-only signatures (tests and lab specs match the messages), and c = 0 or 1 never
    reads ``l0``, ``tol``, ``norm_bound`` or ``probe``.
    """

    c: float | Fraction
    delta: float = 0.0
    l0: float | None = None
    dtype: torch.dtype | None = None
    tol: float | None = None
    max_steps: int = 8
    norm_bound: float | None = None
    probe: bool = True
    finish: str = "auto"
    null: str = "keep"

    @classmethod
    def from_keywords(cls, caller: str, options: dict[str, Any]) -> FreonOptions:
        """``options`` as passed to ``caller``. A name that is no field, or a missing ``c``,
        raises the ``TypeError`` Python raised for the keyword-only signature: lab specs show
        its message to the user."""
        for key in options:
            if key not in _OPTION_NAMES:
                raise TypeError(f"{caller}() got an unexpected keyword argument {key!r}")
        if "c" not in options:
            raise TypeError(f"{caller}() missing 1 required keyword-only argument: 'c'")
        return cls(**options)


_OPTION_NAMES = frozenset(f.name for f in fields(FreonOptions))


@dataclass(frozen=True)
class FreonInfo:
    """Factorisations used (the cost driver) and the coefficient schedule that was applied."""

    qr_steps: int
    cholesky_steps: int
    schedule: tuple[FreonStep, ...]
    probes: int = 0  # certificates of a larger ℓ₀ that were paid for (see ``probe``)
    eigh_steps: int = 0  # 1 when the eigh finish ran

    @property
    def factorisations(self) -> int:
        return self.qr_steps + self.cholesky_steps + self.probes + self.eigh_steps

    @property
    def finish(self) -> str:
        return "eigh" if self.eigh_steps else "cholesky"


def as_fraction(c: float | Fraction) -> Fraction:
    """``c`` as one of the supported fractions, or ``ValueError`` naming them."""
    frac = Fraction(c).limit_denominator(12)
    if abs(float(frac) - float(c)) > 1e-9 or frac not in SUPPORTED_C:
        allowed = ", ".join(str(k) for k in SUPPORTED_C)
        raise ValueError(f"c: the rational iteration supports {allowed} (got {c})")
    return frac


def _quantise_l0(l0: float) -> float:
    """Round ℓ₀ *down* to the grid 10^(k/4): still a lower bound, and the cache key repeats."""
    return 10.0 ** (math.floor(4.0 * math.log10(l0)) / 4.0)


def freon_power(G: Tensor, **options: Any) -> tuple[Tensor, FreonInfo]:
    """``(G Gᵀ + δ² I)^(−c) G`` in ``dtype`` (G's shape) and the iteration record.

    ``options``: the fields of :class:`FreonOptions` (defaults there), by keyword; an unknown
    one is a ``TypeError``. ``c`` is required, one of ``SUPPORTED_C``; ``delta`` is δ; ``tol``
    is the stopping tolerance on 1 − L (default 5e-2 in fp32, 1e-5 in fp64); the rest below.

    ``l0`` is a lower bound on σ_min/σ_max of ``[G, δI]`` (default 1e-6 in fp32, 1e-10 in fp64);
    ``max_steps`` caps the factorisations. ``δ = 0`` with c > ½ on a rank-deficient G is
    undefined; the QR phase then maps null directions through u's finite slope, so pass δ > 0.

    ``norm_bound``: a caller-known upper bound on ‖G‖_F (1 after Frobenius prescaling). Then
    the scale is ``√(norm_bound² + mδ²)`` with no power iteration and, when δ > 0 and ``l0`` is
    None, ``l0`` is the rigorous ``δ / scale``: everything is known from shapes, no host sync.

    ``finish``: what follows the QR phase once the Gram is well conditioned (λ ≥ 10⁻³).
    ``"cholesky"``: the rational iteration goes on with Cholesky steps and a binomial series.
    ``"eigh"``: one symmetric eigendecomposition of that Gram (cond ≤ 10³, so κ is no longer
    squared) and its exact −c power; on a CPU this costs less than the Cholesky steps and the
    iteration's speculative step certifies itself with it, at fp32 accuracy a few 1e-4 rather
    than a few 1e-5 (docs/freon.md). ``"auto"``: eigh on a CPU, Cholesky elsewhere (GPU
    eigensolvers are slow). It falls back to Cholesky steps when ``max_steps`` leaves no room.

    ``probe``: when ℓ₀ would be the default, the first QR step speculates: it uses the
    coefficients of the larger bound from which one step lands the Gram at L ≥ 2·10⁻³, then a
    certificate (one fp32 Cholesky of ``A − 1.25·10⁻³ I``, or the finishing eigh itself) proves
    that it did; if it fails, the step still was an exact step of the iteration (the invariant
    holds for any coefficients) and the QR phase goes on from the rigorous bound it leaves. It
    saves a QR step when κ ≲ 2e4 (c ≠ ½) or ≲ 2e5 (c = ½) in fp32; otherwise it costs the
    certificate. It counts in ``factorisations`` (an eigh certificate only when it failed), is
    skipped when ``max_steps`` leaves no room or when a failure would add a QR step (fp64's
    default ℓ₀ is too low for that), and costs one host sync; ``probe=False`` gives a
    data-independent path.

    Scale: without ``norm_bound``, G and δ are divided by one power of two first (exact), so
    any finite G works and the answer comes back wherever it is representable; with it, G is
    the caller's prescaled matrix and is used as it is (the optimizer's fast path).

    ``c = 1`` with δ = 0 is one QR: a zero G gives zero, and a rank-deficient G, whose
    ``(GGᵀ)⁻¹`` does not exist, raises ``MapError`` (pass δ > 0, or use ``spectral_power``,
    which maps the null space to zero). ``null``: as in ``qdwh``, "keep" leaves numerically-
    null directions (σ ≤ max(m, n)·eps·σ_max) at what the iteration makes of them (exact
    zeros stay zero; noise below ℓ₀ is only partly mapped), "zero" projects them out as the
    SVD maps do; it applies to 0 < c ≤ ½ with δ = 0 (a floor already defines the answer).
    For ½ < c < 1 with δ = 0 a numerically rank-deficient G has no stable answer here: the
    partly converged factor reaches ℓ₀^(−2c) and its rounding (≈ 100 in fp32 at c = ¾)
    lands in every direction, so pass δ > 0 (as the optimizer does) or use spectral_power.
    """
    return _freon_power(G, FreonOptions.from_keywords("freon_power", options))


def freon(G: Tensor, **options: Any) -> Tensor:
    """``(G Gᵀ + δ² I)^(−c) G`` by Freon's rational iteration (see :func:`freon_power`)."""
    return _freon_power(G, FreonOptions.from_keywords("freon", options))[0]


def warm_freon(shape: tuple[int, ...], **options: Any) -> None:
    """Solve and cache the schedules a call with these options on ``shape`` may use.

    Optimizers call this at construction so that a training step only looks the schedule up.
    Schedules that depend on the data (no ``norm_bound`` with δ > 0 still uses ``l0``) are
    covered too, because the schedule never depends on the values of G, only on options.
    ``options``: as for :func:`freon_power`.
    """
    opts = FreonOptions.from_keywords("warm_freon", options)
    frac = as_fraction(opts.c)
    check_null(opts.null)
    if frac in (0, 1):
        return
    d = opts.dtype if opts.dtype in (torch.float32, torch.float64) else torch.float32
    m = min(shape[-2], shape[-1])
    # Validates; "auto" picks by device, so warm both finishes.
    resolve_finish(opts.finish, torch.device("cpu"))
    for fin in ("eigh", "cholesky") if opts.finish == "auto" else (opts.finish,):
        _plan(opts, frac, m, d, fin)


# ----------------------------------------------------------------- check the call, dispatch


@dataclass(frozen=True)
class _Call:
    """A checked call: its options, c as a supported fraction, the working dtype and the
    finish decided for G's device, so that no phase decides them again."""

    options: FreonOptions
    frac: Fraction
    dtype: torch.dtype
    finish: str  # "eigh" or "cholesky" ("auto" resolved); the plan may still fall back


def _show_options(fn: Callable[..., Any]) -> None:
    """Give ``fn(first, **options)`` the signature of its options (FreonOptions' fields,
    keyword-only, with their defaults): what ``help`` shows and what the lab's option table is
    checked against (tests/engine/test_approx.py), declared nowhere but in FreonOptions."""
    sig = inspect.signature(fn)
    first = next(iter(sig.parameters.values()))
    keywords = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=f.type,
                          default=inspect.Parameter.empty if f.default is MISSING else f.default)
        for f in fields(FreonOptions)
    ]
    fn.__signature__ = sig.replace(parameters=[first, *keywords])


for _fn in (freon_power, freon, warm_freon):
    _show_options(_fn)


def _check_call(G: Tensor, opts: FreonOptions) -> _Call:
    """Check what every c needs and decide c, the dtype and the finish once. The order of the
    checks is the order in which a caller with several bad options meets the errors; ``l0``,
    ``tol`` and ``norm_bound`` are checked only when the iteration reads them."""
    check_matrix(G)
    if not opts.delta >= 0:
        raise ValueError(f"delta: must be >= 0 (got {opts.delta})")
    if not 1 <= opts.max_steps <= 50:
        raise ValueError(f"max_steps: must be in [1, 50] (got {opts.max_steps})")
    check_null(opts.null)
    frac = as_fraction(opts.c)
    if opts.null == "zero" and opts.delta == 0 and frac > Fraction(1, 2):
        raise ValueError(
            f"null: 'zero' is for c <= 1/2 (got c = {frac}); for c > 1/2 without a floor the "
            "numerically-null directions are amplified rounding, not a function of G: pass "
            "delta > 0, or use spectral_power")
    d = work_dtype(G, opts.dtype)
    return _Call(opts, frac, d, resolve_finish(opts.finish, G.device))


def _freon_power(G: Tensor, opts: FreonOptions) -> tuple[Tensor, FreonInfo]:
    """:func:`freon_power` once the keywords are options: c = 0 is a cast, c = 1 one QR, the
    rest the iteration; ``null="zero"`` then projects the numerical null space out."""
    call = _check_call(G, opts)
    if (empty := empty_result(G, call.dtype)) is not None:
        return empty, FreonInfo(0, 0, ())
    if call.frac == 0:
        return G.to(call.dtype), FreonInfo(0, 0, ())
    with map_errors("freon", G):
        if call.frac == 1:
            Y, info = _freon_one(G, opts.delta, call.dtype)
        else:
            Y, info = _freon_iterate(G, call)
    if opts.null == "zero" and opts.delta == 0 and call.frac < 1:
        Y = drop_null(G.to(call.dtype), Y, float(call.frac))
    return Y, info


def resolve_finish(finish: str, device: torch.device) -> str:
    """``finish`` with "auto" decided for ``device``: eigh on a CPU, Cholesky steps elsewhere."""
    if finish not in FINISHES:
        raise ValueError(f"finish: must be one of {', '.join(FINISHES)} (got {finish!r})")
    if finish == "auto":
        return "eigh" if device.type == "cpu" else "cholesky"
    return finish


def _freon_one(G: Tensor, delta: float, d: torch.dtype) -> tuple[Tensor, FreonInfo]:
    """c = 1: ``(GGᵀ + δ²I)⁻¹G`` by one least-squares QR. Nothing is squared (Householder QR
    scales its own norms), so G is used as it is; only a cast to a narrower dtype, where G
    might not fit, goes through a power of two (the answer scales as 1/G)."""
    e = pow2_exponent(G, delta) if G.dtype != d else torch.zeros((), dtype=torch.int32)
    X, transposed = to_wide(scaled_to(G, e, d) if G.dtype != d else G)
    m, n = X.shape[-2], X.shape[-1]
    if delta > 0:
        dh = (delta * pow2(-e, torch.float64)).to(d)  # δ/2^e ≤ 1
        eye = torch.eye(m, dtype=d, device=X.device)
        X = torch.cat([X, dh * eye.expand(*X.shape[:-2], m, m)], dim=-1)  # A + δ²I
    Y, R = _inverse_by_qr(X)
    if delta == 0:
        # Without a floor the answer exists only for full row rank; a zero G (a zero
        # gradient) is the one rank-deficient input with an obvious answer, zero.
        rd = R.diagonal(dim1=-2, dim2=-1).abs()  # (…, m)
        top = rd.amax(dim=-1, keepdim=True)
        zero = top == 0
        singular = (rd <= null_tolerance(top, m, n, d)).any(dim=-1, keepdim=True) & ~zero
        if bool(singular.any()):
            raise MapError("freon", tuple(G.shape),
                           "(GGᵀ)^(−1)G does not exist for a rank-deficient G (c = 1 with no "
                           "floor); pass delta > 0 for (GGᵀ + δ²I)^(−1)G, or use "
                           "spectral_power, which maps the null space to 0")
        if bool(zero.any()):
            Y = Y.masked_fill(zero[..., None], 0.0)
    Y = Y[..., :n] if G.dtype == d else times_pow2(Y[..., :n], -e)
    return from_wide(Y, transposed), FreonInfo(1, 0, ())


def _freon_iterate(G: Tensor, call: _Call) -> tuple[Tensor, FreonInfo]:
    """The rational iteration for 0 < c < 1 (see :func:`freon_power`), one phase per call:
    scale G, look the plan up, run the QR phase, then the finish the plan chose."""
    s = _scale(G, call)
    plan = _plan(call.options, call.frac, s.m, call.dtype, call.finish)
    qr = _qr_phase(s.Xt, s.floor, plan, call.frac)
    L_T = qr.schedule[-1].L_next if qr.schedule else plan.L0
    # Only lower triangles feed the factorisations, so the Grams below are never symmetrised
    # (the rounding asymmetry of a GEMM is harmless there and in the finish).
    A = qr.A if qr.A is not None else qr.Xt @ qr.Xt.mT  # (…, m, m)
    if plan.finish == "eigh":
        Y = _eigh_finish(A, qr, L_T, s, float(call.frac))
        info = FreonInfo(qr.qr_steps, 0, qr.schedule, qr.probes, eigh_steps=1)
    else:
        Y, chol_steps = _cholesky_finish(A, qr, L_T, s, call)
        info = FreonInfo(qr.qr_steps, chol_steps, qr.schedule, qr.probes)
    return from_wide(Y[..., : s.n], s.transposed), info  # the floor's m columns dropped


# ------------------------------------------------------------------------------ scale


@dataclass(frozen=True)
class _Scaled:
    """G in the iteration's frame (wide, ‖[Xt, floor·I]‖₂ ≤ 1) and what brings the answer
    back to G's units."""

    Xt: Tensor  # (…, m, n): X/α
    transposed: bool  # G was tall: the answer goes back transposed
    n: int  # columns of the wide G: the answer keeps these, not the floor's m
    alpha: Tensor | float  # the bound on ‖[X, δI]‖₂ divided out: (…, 1, 1), or a number
    gain: Tensor | float  # 2^(e(1−2c)): the power-of-two prescale's share of the answer
    floor: Tensor | float | None  # δ/α, pending until the first QR step; None when δ = 0

    @property
    def m(self) -> int:
        """Rows of the wide form: the Gram is m×m."""
        return self.Xt.shape[-2]


def _scale(G: Tensor, call: _Call) -> _Scaled:
    """Bring ``[G, δI]`` to spectral norm ≤ 1 in the wide orientation: the schedule's
    coefficients are minimax for a Gram spectrum in [ℓ₀², 1]. With ``norm_bound`` the caller's
    bound is the scale (no reduction, no host sync); without it G is divided by a power of two
    first (exact, so any finite G works) and then by a spectral-norm bound."""
    delta, d = call.options.delta, call.dtype
    if call.options.norm_bound is not None:
        X, transposed = to_wide(G.to(d))
        alpha: Tensor | float = _bound_scale(call.options.norm_bound, delta, X.shape[-2])
        dh: Tensor | float = delta
        gain: Tensor | float = 1.0
    else:
        e = pow2_exponent(G, delta)  # max(max|G|, δ) ∈ [2^(e−1), 2^e), (…, 1, 1)
        X, transposed = to_wide(scaled_to(G, e, d))
        alpha = safe_scale(X)
        dh = (delta * pow2(-e, torch.float64)).to(d)
        if delta > 0:
            alpha = (alpha**2 + dh**2).sqrt()  # ‖[X, δI]‖₂² = ‖X‖₂² + δ²
        # The power of two comes back as 2^(e(1−2c)): |e(1−2c)| ≤ e/2 for the c here, so it is
        # representable whenever the answer is.
        gain = torch.exp2(e.double() * (1 - 2 * float(call.frac))).to(d)
    # The floor: the iteration runs on [X, δI] (Gram A + δ²I). Until the first QR step, Xt
    # stands for that with ``floor`` = δ/α pending: that step takes the floor through its
    # stack's identity block, and only its result is widened (see _qr_step).
    floor = dh / alpha if delta > 0 else None
    return _Scaled(X / alpha, transposed, X.shape[-1], alpha, gain, floor)


def _bound_scale(norm_bound: float, delta: float, m: int) -> float:
    """``‖[G, δI]‖₂`` bounded from the caller's ``‖G‖_F ≤ norm_bound``; checks ``norm_bound``,
    which only the iteration reads."""
    if not norm_bound > 0:
        raise ValueError(f"norm_bound: must be > 0 (got {norm_bound})")
    # 1e-6 of slack absorbs rounding in a caller's Frobenius prescaling.
    return math.sqrt(norm_bound**2 + m * delta**2) * (1 + 1e-6)


# ------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Speculation:
    """A first QR step with optimistic coefficients, and what follows it: ``landed`` if the
    certificate proves the Gram reached the switch, ``fallback`` otherwise."""

    step: FreonStep
    landed: tuple[FreonStep, ...]
    fallback: tuple[FreonStep, ...]


@dataclass(frozen=True)
class Plan:
    """What a call will do: the steps without speculation (QR steps only for the eigh finish),
    the starting Gram bound, the finish, and the speculation if one pays."""

    schedule: tuple[FreonStep, ...]
    L0: float
    finish: str
    speculation: Speculation | None


def _plan(opts: FreonOptions, frac: Fraction, m: int, d: torch.dtype, finish: str) -> Plan:
    """The plan for these options (``finish`` already resolved): pure Python on the options
    and m, never the values of G, so :func:`warm_freon` can solve it ahead. The eigh finish
    falls back to Cholesky steps when ``max_steps`` cannot reach the switch and pay for the
    eigh; the speculation is None when ℓ₀ is not the default (or ``probe`` is off), and see
    :func:`_speculation`."""
    schedule, L0, tol = _schedule_for(opts, frac, m, d)
    if finish == "eigh":
        qr_only = _eigh_steps(frac, L0, tol, opts.max_steps)
        if qr_only is None:
            finish = "cholesky"
        else:
            schedule = qr_only
    default_l0 = opts.l0 is None and not (opts.delta > 0 and opts.norm_bound is not None)
    if not (opts.probe and default_l0):
        return Plan(schedule, L0, finish, None)
    return Plan(schedule, L0, finish, _speculation(frac, L0, tol, opts.max_steps, finish,
                                                   schedule))


def _schedule_for(
    opts: FreonOptions, frac: Fraction, m: int, d: torch.dtype,
) -> tuple[tuple[FreonStep, ...], float, float]:
    """The cached schedule for these options, its starting Gram bound L0 and the stopping
    tolerance (a lookup once warm: pure Python, never touching the tensor). Checks ``l0`` and
    ``tol``, which only the iteration reads."""
    if opts.l0 is None and opts.delta > 0 and opts.norm_bound is not None:
        lo = opts.delta / _bound_scale(opts.norm_bound, opts.delta, m)
    else:
        lo = opts.l0 if opts.l0 is not None else _DEFAULT_L0[d]
    if not 0 < lo <= 1:
        raise ValueError(f"l0: must be in (0, 1] (got {opts.l0})")
    tol = opts.tol if opts.tol is not None else _DEFAULT_TOL[d]
    if not 0 < tol < 1:
        raise ValueError(f"tol: must be in (0, 1) (got {opts.tol})")
    L0 = _quantise_l0(lo) ** 2
    return freon_schedule(frac, L0, tol, QR_SWITCH, opts.max_steps), L0, tol


def _eigh_steps(frac: Fraction, L0: float, tol: float, budget: int
                ) -> tuple[FreonStep, ...] | None:
    """The QR steps that take [L0, 1] to L ≥ QR_SWITCH, if they and the eigh fit ``budget``."""
    if budget < 1:
        return None
    qr = tuple(st for st in freon_schedule(frac, L0, tol, QR_SWITCH, budget) if st.kind == "qr")
    if (qr[-1].L_next if qr else L0) < QR_SWITCH or len(qr) + 1 > budget:
        return None
    return qr


def _speculation(frac: Fraction, L0: float, tol: float, max_steps: int, finish: str,
                 schedule: tuple[FreonStep, ...]) -> Speculation | None:
    """The optimistic first QR step and the schedules after its certificate, or None when it
    could not save a QR step (``schedule`` has fewer than two, or the default ℓ₀ already
    lands) or when its fallback would not fit ``max_steps`` or would add a QR step."""
    qr = sum(st.kind == "qr" for st in schedule)
    if qr < 2:
        return None
    p = ORDERS[frac][0]
    L_spec = landing_bound(p, LANDING_TARGET * QR_SWITCH)
    if L_spec <= L0:
        return None
    a, b, g, L_next = minimax_step(p, L_spec)
    step = FreonStep("qr", p, a, b, g, L_spec, L_next)
    # Without the certificate only λ ≥ L0 is known; h(λ) = λ u(λ)^p rises on [L0, L_spec]
    # and stays ≥ L_next above it, so min(h(L0), L_next) bounds the new Gram from below.
    h_L0 = L0 * ((a + b * L0) / (1 + g * L0)) ** p
    L_fb = min(h_L0, L_next)
    L_fb = _quantise_l0(L_fb)  # down to the cache grid (the same 10^(k/4) rounding)
    if finish == "eigh":
        # Landed: the certifying eigh is the finish (2 factorisations). Failed: the wasted
        # eigh, the fallback's QR steps and the final eigh.
        fb = _eigh_steps(frac, L_fb, tol, max_steps - 2)
        if max_steps < 2 or fb is None or 1 + len(fb) > qr:
            return None
        return Speculation(step, (), fb)
    budget = max_steps - 2  # the speculative step and its certificate
    landed = freon_schedule(frac, QR_SWITCH, tol, QR_SWITCH, budget)
    fallback = freon_schedule(frac, L_fb, tol, QR_SWITCH, budget)
    fits = budget >= 1 and 1 - fallback[-1].L_next <= tol and 1 - landed[-1].L_next <= tol
    # A failed certificate must not cost a QR step: the fallback may not add one.
    if not fits or 1 + sum(st.kind == "qr" for st in fallback) > qr:
        return None
    return Speculation(step, landed, fallback)


@functools.lru_cache(maxsize=16)
def landing_bound(p: int, target: float) -> float:
    """The smallest L on the grid 10^(k/4) from which one order-p step lands at ≥ ``target``.
    Solved on first use, never at import."""
    for k in range(-80, 1):
        L = 10.0 ** (k / 4)
        if minimax_step(p, L)[3] >= target:
            return L
    return 1.0


# --------------------------------------------------------------------------- QR phase


@dataclass(frozen=True)
class _QRPhase:
    """Where the QR phase leaves the iteration: the Gram of ``Xt`` is now well conditioned
    (λ ≥ QR_SWITCH unless ``max_steps`` cut the phase short)."""

    Xt: Tensor  # (…, m, n′): X moved by the QR steps; n′ = n + m once the floor is in
    Y: Tensor | None  # the output accumulator F·X (None: Y = Xt, as for c = ½)
    schedule: tuple[FreonStep, ...]  # the QR steps taken, then the Cholesky steps planned
    qr_steps: int
    probes: int  # certificates paid for beyond the finish (see FreonInfo)
    A: Tensor | None  # Xt Xtᵀ when the certificate formed it and no step moved Xt since
    eig: tuple[Tensor, Tensor] | None  # A's eigh when that was the (landed) certificate


def _qr_phase(Xt: Tensor, floor: Tensor | float | None, plan: Plan, frac: Fraction
              ) -> _QRPhase:
    """Take the plan's QR steps, which raise the Gram's λ_min towards QR_SWITCH without ever
    forming the ill-conditioned X Xᵀ: the speculative step first when the plan has one, then
    the schedule its certificate picks. The floor rides in the first step's stack; when no
    step runs, X is widened here so that the finish sees ``[X, δI]``."""
    Y: Tensor | None = None
    done: list[FreonStep] = []
    rest = plan.schedule
    cert: _Certificate | None = None
    if (spec := plan.speculation) is not None:
        Xt, Y = _qr_step(Xt, Y, spec.step, frac, floor)
        floor = None
        done.append(spec.step)
        cert = _certify(Xt @ Xt.mT, plan.finish)  # (…, m, m)
        rest = spec.landed if cert.landed else spec.fallback
    # A failed certificate's Gram is that of a step the fallback does not trust: recompute.
    A, eig = (cert.A, cert.eig) if cert is not None and cert.landed else (None, None)
    while rest and rest[0].kind == "qr":
        Xt, Y = _qr_step(Xt, Y, rest[0], frac, floor)
        floor = None
        done.append(rest[0])
        rest, A = rest[1:], None
    if floor is not None:  # no QR step ran: widen X for the Gram
        Xt = _widen(Xt, floor)
    probes = cert.probes if cert is not None else 0
    return _QRPhase(Xt, Y, (*done, *rest), len(done), probes, A, eig)


@dataclass(frozen=True)
class _Certificate:
    """What the speculative step's certificate found: whether the Gram landed, the
    factorisations it cost beyond the finish, and the Gram (and its eigh) for the finish."""

    landed: bool
    probes: int
    A: Tensor  # (…, m, m)
    eig: tuple[Tensor, Tensor] | None


def _certify(A: Tensor, finish: str) -> _Certificate:
    """Prove λ_min(A) ≥ LANDING_SHIFT·QR_SWITCH, or fail to (one host sync either way). With
    the eigh finish the eigendecomposition is the proof and, when it lands, the finish itself,
    so it is a paid probe only when it fails; otherwise one Cholesky of the shifted Gram is."""
    threshold = LANDING_SHIFT * QR_SWITCH
    if finish == "eigh":
        eig = torch.linalg.eigh(A)
        landed = bool((eig[0][..., 0] >= threshold).all())
        return _Certificate(landed, 0 if landed else 1, A, eig)
    shifted = _add_diag(A.clone(), -threshold)
    return _Certificate(bool((torch.linalg.cholesky_ex(shifted).info == 0).all()), 1, A, None)


def _widen(Xt: Tensor, floor: Tensor | float) -> Tensor:
    """``[Xt, floor·I]`` (…, m, n + m): the floor's columns made explicit, Gram A + floor²I."""
    m = Xt.shape[-2]
    eye = torch.eye(m, dtype=Xt.dtype, device=Xt.device)
    return torch.cat([Xt, floor * eye.expand(*Xt.shape[:-2], m, m)], dim=-1)


# ----------------------------------------------------------------------------- finish


def _eigh_finish(A: Tensor, qr: _QRPhase, L_T: float, s: _Scaled, cf: float) -> Tensor:
    """``A^(−c)`` applied to the accumulator by one eigh of the now well-conditioned Gram
    (cond ≤ 1/QR_SWITCH, so κ is no longer squared): exact, and on a CPU cheaper than the
    Cholesky steps. Reuses the certificate's eigh when it landed. Wide, floor columns kept."""
    lam, V = qr.eig if qr.eig is not None else torch.linalg.eigh(A)
    # λ ≥ L_T in exact arithmetic; the clamp only keeps rounding from reaching 0. The
    # scale α^(1−2c) rides on the eigenvalues (m numbers, not an m×n′ pass).
    gain = lam.clamp_min(0.5 * L_T) ** -cf * _as_column(s.alpha ** (1 - 2 * cf) * s.gain)
    return ((V * gain[..., None, :]) @ V.mT) @ (qr.Xt if qr.Y is None else qr.Y)


def _cholesky_finish(A: Tensor, qr: _QRPhase, L_T: float, s: _Scaled, call: _Call
                     ) -> tuple[Tensor, int]:
    """The finish without eigh: the plan's Cholesky steps bring the Gram within ``tol`` of a
    multiple of I, and a binomial series (a few m×m GEMMs) does the rest, cheaper there than
    another factorisation. The answer (wide, floor columns kept) and the steps taken."""
    cf = float(call.frac)
    steps = qr.schedule[qr.qr_steps:]
    Xt, A, C = _cholesky_steps(A, qr.Xt, qr.Y, steps, call.frac, call.dtype)
    # Finish: A_T = s(I + E) with s the middle of its bound [L_T, 1]; (I + E)^(−c) by its
    # binomial series, as many terms as the dtype needs (none when E is below its resolution).
    mid = 0.5 * (1.0 + L_T)
    W = C
    J = _finish_order(L_T, cf, call.dtype)
    if J > 0:
        S = _binomial_series(A, mid, J, cf)
        W = S if W is None else W @ S
    out = Xt if qr.Y is None else qr.Y
    scale = mid**-cf * s.alpha ** (1 - 2 * cf) * s.gain
    out = out * scale if W is None else (W * scale) @ out  # scale the smaller factor
    return out, len(steps)


def _cholesky_steps(A: Tensor, Xt: Tensor, Y: Tensor | None, steps: tuple[FreonStep, ...],
                    frac: Fraction, d: torch.dtype) -> tuple[Tensor, Tensor, Tensor | None]:
    """The Cholesky phase on the m×m Gram: ``A ← A u(A)^p`` and ``C ← C u(A)^(cp)`` per step
    (safe once cond(A) ≲ 1e3). Returns X (moved only in the c = ½ shortcut), A and C (None:
    the identity)."""
    cf = float(frac)
    C: Tensor | None = None
    # c = ½ (QDWH) needs no accumulated factor if X itself moves (X ← U X, A = XXᵀ afresh):
    # two m×m×n′ GEMMs a step instead of three m×m×m ones plus a final W·X, cheaper while
    # n′ < 2m.
    move_x = Y is None and frac == Fraction(1, 2) and Xt.shape[-1] < 2 * Xt.shape[-2]
    for idx, st in enumerate(steps):
        K, U = _rational_factor(A, st)
        need_A = idx < len(steps) - 1 or _finish_order(st.L_next, cf, d) > 0
        if move_x:
            Xt = U @ Xt
            if need_A:
                A = Xt @ Xt.mT
            continue
        cp = int(frac * st.p)
        powers = _powers(U, {st.p - 1, cp})
        if need_A:
            A = _gram_step(A, K, st, powers)
        C = powers[cp] if C is None else C @ powers[cp]
    return Xt, A, C


def _rational_factor(A: Tensor, st: FreonStep) -> tuple[Tensor, Tensor]:
    """``K = (I + gA)⁻¹`` by Cholesky and ``u(A) = βI + dK`` (β = b/g, d = a − b/g): the
    step's rational function without a solve against X."""
    beta, dd = st.b / st.g, st.a - st.b / st.g
    Lc = torch.linalg.cholesky(_add_diag(st.g * A, 1.0))
    # cholesky_inverse (LAPACK potri), not cholesky_solve against I: 3.2× faster at 1024²
    # and 512² on the development CPU (1 and 2 threads, torch 2.13).
    K = torch.cholesky_inverse(Lc)  # (I + gA)⁻¹, symmetric: potri fills both triangles
    return K, _add_diag(dd * K, beta)


def _gram_step(A: Tensor, K: Tensor, st: FreonStep, powers: dict[int, Tensor]) -> Tensor:
    """The next Gram ``A u(A)^p`` from ``K`` and ``u^(p−1)`` (in ``powers``)."""
    beta, dd = st.b / st.g, st.a - st.b / st.g
    # A·U = βA + (d/g)(I − K) needs no GEMM (A K = (I − K)/g); the cancellation in
    # I − K costs ≤ eps·(1 + gL)/(gL) relative, ≤ 15 eps for these schedules
    # (gL ≥ 0.08 in every Cholesky step; tested).
    AU = _add_diag(beta * A - (dd / st.g) * K, dd / st.g)
    return AU @ powers[st.p - 1] if st.p > 1 else AU


def _binomial_series(A: Tensor, mid: float, J: int, cf: float) -> Tensor:
    """``(A/mid)^(−c) = (I + E)^(−c)`` to order J ≥ 1 by Horner in E: the Gram ends within
    ``tol`` of mid·I, where J − 1 GEMMs are cheaper than another Cholesky step."""
    E = _add_diag(A / mid, -1.0)
    coef = [_binom(-cf, j) for j in range(J + 1)]
    S = _add_diag(coef[J] * E, coef[J - 1])  # Horner in E
    for j in range(J - 2, -1, -1):
        S = _add_diag(S @ E, coef[j])
    return S


# ---------------------------------------------------------------------------- kernels


def _qr_step(Xt: Tensor, Y: Tensor | None, st: FreonStep, frac: Fraction,
             floor: Tensor | float | None = None) -> tuple[Tensor, Tensor | None]:
    """One QR-phase step: ``X ← u(A)^k X`` (k = p/2) and the output accumulator
    ``Y ← u(A)^(k+s) Y`` with s = k(2c − 1) ∈ {−1, 0, 1} (Y = None stands for Y = X).

    ``(I + gA)⁻ʲ X`` comes from the Q-product form: ``T₁ = Q₂Q₁ᵀ/√g`` and ``Tⱼ = K Tⱼ₋₁`` with
    ``K = Q₂Q₂ᵀ = (I + gA)⁻¹`` (norm ≤ 1), and ``u^k X = β^k X + Σⱼ C(k, j) β^(k−j) dʲ Tⱼ``;
    the ill-conditioned Gram XXᵀ is never formed. On the first step Y = X and both come from
    the same Tⱼ; later, Y moves by (βI + dK) applied k + s times.

    ``floor`` = δ (not None) says Xt stands for ``[Xt, δI]``. The stack ``[√g Xᵀ; ρI]`` with
    ``ρ² = 1 + gδ²`` has the Gram ``I + g(A + δ²I)`` of the widened stack ``[√g Xᵀ; √g δI; I]``
    at two thirds of its height (for a square X), so ``K = Q₂Q₂ᵀ/ρ²`` and ``T₁ = Q₂Q₁ᵀ/(ρ√g)``;
    the floor's columns of the result, ``δu^k``, come from the powers of K, and X is returned
    widened for the steps after.
    """
    m = Xt.shape[-2]
    k = st.p // 2
    s = int(k * (2 * frac - 1))
    beta, dd, rg = st.b / st.g, st.a - st.b / st.g, math.sqrt(st.g)
    floored = floor is not None
    rho = (1.0 + st.g * floor**2) ** 0.5 if floored else 1.0  # type: ignore[operator]
    Q = stacked_q(Xt, rg, rho)  # (…, n′+m, m)
    Q1, Q2 = Q[..., :-m, :], Q[..., -m:, :]
    if floored:
        Q2 = Q2 / rho
    first_y = s != 0 and Y is None
    top = max(k, k + s) if first_y else k
    T = [(Q2 / rg) @ Q1.mT]  # (I + gA)⁻¹ X
    need_k = top > 1 or (s != 0 and Y is not None) or floored
    K = Q2 @ Q2.mT if need_k else None
    while len(T) < top:
        T.append(K @ T[-1])  # type: ignore[operator]
    X_next = _u_power(k, Xt, T, beta, dd)
    if floored:
        # δu^k = δ(β^k I + Σⱼ C(k, j) β^(k−j) dʲ Kʲ): the floor's m columns, explicit.
        D = K * (k * beta ** (k - 1) * dd)  # type: ignore[operator]
        Kj = K
        for j in range(2, k + 1):
            Kj = Kj @ K  # type: ignore[operator]
            D.add_(Kj, alpha=math.comb(k, j) * beta ** (k - j) * dd**j)
        D = _add_diag(D, beta**k) * floor  # floor: a number or (…, 1, 1)
        X_next = torch.cat([X_next, D], dim=-1)
    if s == 0:
        return X_next, Y
    if Y is None:
        return X_next, _u_power(k + s, Xt, T, beta, dd)
    for _ in range(k + s):
        Y = (K @ Y).mul_(dd).add_(Y, alpha=beta)  # type: ignore[operator]
    return X_next, Y


def _u_power(j: int, X: Tensor, T: list[Tensor], beta: float, dd: float) -> Tensor:
    """``u^j X = β^j X + Σ_{i=1..j} C(j, i) β^(j−i) dⁱ Tᵢ`` (Tᵢ = (I + gA)⁻ⁱ X)."""
    out = X * beta**j
    for i in range(1, j + 1):
        out.add_(T[i - 1], alpha=math.comb(j, i) * beta ** (j - i) * dd**i)
    return out


def _as_column(alpha: Tensor | float) -> Tensor | float:
    """A per-matrix scale shaped (…, 1, 1) as (…, 1), to multiply a (…, m) vector."""
    return alpha[..., 0] if isinstance(alpha, Tensor) else alpha


def _add_diag(M: Tensor, s: float) -> Tensor:
    """``M + s·I`` in place on a fresh ``M`` (one pass over the diagonal, not over M)."""
    M.diagonal(dim1=-2, dim2=-1).add_(s)
    return M


def _powers(U: Tensor, wanted: set[int]) -> dict[int, Tensor]:
    """``{e: U^e}`` for the exponents in ``wanted`` (1–4), sharing the square."""
    out = {1: U}
    if max(wanted) >= 2:
        out[2] = U @ U
    if 3 in wanted:
        out[3] = out[2] @ U
    if 4 in wanted:
        out[4] = out[2] @ out[2]
    return out


def _binom(x: float, j: int) -> float:
    """The generalised binomial coefficient C(x, j) for real x."""
    out = 1.0
    for i in range(j):
        out *= (x - i) / (i + 1)
    return out


def _finish_order(L_T: float, c: float, d: torch.dtype) -> int:
    """Terms J of the series for ``(I + E)^(−c)``, ‖E‖ ≤ e = (1 − L_T)/(1 + L_T), so that the
    remainder ``|C(−c, J+1)| e^(J+1)/(1 − e)`` is within the dtype's resolution (0: the
    scalar alone is)."""
    e = (1.0 - L_T) / (1.0 + L_T)
    eps = torch.finfo(d).eps
    for J in range(_MAX_FINISH_ORDER + 1):
        if abs(_binom(-c, J + 1)) * e ** (J + 1) / (1.0 - e) <= eps:
            return J
    return _MAX_FINISH_ORDER


def _inverse_by_qr(X: Tensor) -> tuple[Tensor, Tensor]:
    """``(X Xᵀ)⁻¹ X`` for wide X by one least-squares QR: ``Xᵀ = Q R`` ⇒ it is ``R⁻¹ Qᵀ``;
    and R, whose diagonal says whether X has full row rank."""
    Q, R = torch.linalg.qr(X.mT)
    return torch.linalg.solve_triangular(R, Q.mT, upper=True), R
