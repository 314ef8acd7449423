"""Statistics of a comparison study: seed bands, tests against a baseline, tuneability,
time-to-target and performance profiles.

Pure numpy/scipy on small arrays (per group, per grid point): the heavy lifting — reducing
millions of metric rows — happens in SQL before anything here runs. Randomised estimates
(bootstrap) take a seed so the same data always draws the same band. docs/analytics.md says
what each number is and why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as _sps

BANDS = ("std", "sem", "t", "minmax", "bootstrap", "none")
CENTERS = ("mean", "median")
BOOT_SAMPLES = 1000
BOOT_SEED = 0


def _as_array(values) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    return a[np.isfinite(a)]


def all_positive(values) -> bool:
    """The rule for multiplicative bands: every finite value is > 0 (a loss, a time, a norm).

    Decided on the values that enter the band, not on the metric's name, so a diagnostic that
    can be ≤ 0 (alignment γ, a difference) keeps additive bands as soon as one value is ≤ 0.
    """
    a = _as_array(values)
    return bool(a.size) and bool((a > 0).all())


def band_frame(frame: pd.DataFrame, keys: list[str], value: str = "value",
               center: str = "mean", band: str = "std", level: float = 0.95,
               n_boot: int = BOOT_SAMPLES, seed: int = BOOT_SEED,
               positive: bool | None = None) -> pd.DataFrame:
    """Per group of ``keys``: centre, band ``lo``/``hi`` and ``n`` (finite values that entered).

    Bands: ``std`` (mean ± sample std), ``sem`` (± standard error), ``t`` (Student-t
    interval of the mean at ``level``; none for a single value), ``minmax``, ``bootstrap``
    (percentile interval of the mean at ``level``) or ``none``. With the 2–5 seeds studies
    usually have, the percentile bootstrap covers far less than its nominal level (about 52 %
    at n = 2 and 85 % at n = 5 for normal data); the t interval is the honest one there.

    ``positive`` (default: ``all_positive`` of the finite values) makes the ± bands
    multiplicative: the half-width ``h`` is applied on the log scale as a fraction of the
    centre, ``c·exp(∓h/c)``, so the band of a loss stays above 0 (the delta-method log
    interval). It agrees with ``c ± h`` to first order when ``h ≪ c``. ``minmax`` and
    ``bootstrap`` are ranges of values or of resampled means and never leave the values' sign.

    Non-finite values (a diverged seed) are left out of the band and are not counted in ``n``;
    the caller counts them separately.
    """
    if center not in CENTERS:
        raise ValueError(f"center must be one of {CENTERS} (got {center!r})")
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS} (got {band!r})")
    finite = frame[np.isfinite(frame[value].astype(float))]
    if positive is None:
        positive = all_positive(finite[value])
    g = finite.groupby(keys, sort=True, observed=True)[value]
    out = g.agg(n="count", mean="mean", median="median", std="std", lo_mm="min", hi_mm="max")
    out["std"] = out["std"].fillna(0.0)  # one seed: no spread, not an unknown one
    c = out[center]
    half = None
    if band == "std":
        half = out["std"]
    elif band == "sem":
        half = out["std"] / np.sqrt(out["n"])
    elif band == "t":
        half = _sps.t.ppf(0.5 + level / 2, out["n"] - 1) * out["std"] / np.sqrt(out["n"])
        half = half.where(out["n"] > 1)  # one value: no interval, not a zero-width one
    elif band == "minmax":
        out["lo"], out["hi"] = out["lo_mm"], out["hi_mm"]
    elif band == "bootstrap":
        out["lo"], out["hi"] = _bootstrap_rows(finite, keys, value, out.index, level, n_boot,
                                               seed)
    else:
        out["lo"], out["hi"] = c, c
    if half is not None:
        out["lo"], out["hi"] = _spread(c, half, positive)
    out["center"] = c
    return out[["center", "lo", "hi", "n", "mean", "median", "std"]].reset_index()


def _spread(center, half, positive: bool):
    """``center ± half``, or its multiplicative form ``center ·/÷ exp(half / center)``."""
    if not positive:
        return center - half, center + half
    # A huge relative half-width (a median far below the mean) overflows to hi = inf, lo = 0:
    # unbounded above, which is what the data say.
    with np.errstate(over="ignore"):
        factor = np.exp(half / center)
    return center / factor, center * factor


def _bootstrap_rows(finite: pd.DataFrame, keys: list[str], value: str, index: pd.Index,
                    level: float, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # Groups of equal size share one draw of resampling indices, so thousands of grid points
    # cost a few vectorised gathers instead of a Python loop per point.
    lists = finite.groupby(keys, sort=True, observed=True)[value].agg(list).reindex(index)
    lo = np.empty(len(lists))
    hi = np.empty(len(lists))
    sizes = lists.map(len).to_numpy()
    rng = np.random.default_rng(seed)
    tail = (1 - level) / 2
    for n in np.unique(sizes):
        rows = np.flatnonzero(sizes == n)
        vals = np.array(lists.iloc[rows].tolist(), dtype=float).reshape(len(rows), n)
        if n == 1:
            lo[rows] = hi[rows] = vals[:, 0]
            continue
        idx = rng.integers(0, n, size=(n_boot, n))
        for start in range(0, len(rows), 256):  # bounds memory at 256 × n_boot × n
            chunk = vals[start:start + 256]
            means = chunk[:, idx].mean(axis=2)
            q = np.quantile(means, [tail, 1 - tail], axis=1)
            lo[rows[start:start + 256]], hi[rows[start:start + 256]] = q[0], q[1]
    return lo, hi


MIN_SEEDS = 3  # per side, for an interval or a test in the comparison table (docs/analytics.md)


@dataclass(frozen=True)
class Comparison:
    """A candidate against the baseline on one scalar per seed (lower is better).

    All inferential numbers come from one Welch model, so they cannot disagree: the interval
    excludes 0 exactly when ``p_value`` < 1 − level, and ``p_value = 2·min(P, 1 − P)`` with
    ``P = p_improve``.
    """

    n: int
    n_base: int
    diff: float  # mean(candidate) − mean(baseline); negative is an improvement
    diff_lo: float  # Welch–Satterthwaite t interval of ``diff`` at the requested level
    diff_hi: float
    p_improve: float  # F_ν(−diff / se): 1 − the one-sided Welch p of "not better"
    t: float
    df: float
    p_value: float  # Welch's two-sided t-test


def welch(n, mean, std, n_base, mean_base, std_base,
          level: float = 0.95) -> dict[str, np.ndarray]:
    """Welch's comparison of candidates against a baseline from summary statistics, vectorised
    over candidates (arguments broadcast): per candidate ``diff``, ``se``, ``df`` (Welch–
    Satterthwaite ν), ``t``, ``p_value`` (two-sided), ``p_improve`` and ``diff_lo``/``diff_hi``.

    ``p_improve = F_ν(−diff / se)`` with ``F_ν`` Student's t CDF: one minus the one-sided Welch
    p-value of "the candidate is not better", and Welch's approximation to the posterior
    probability that the candidate's true mean is below the baseline's (independent normal
    seeds, flat priors on each mean and log-variance: the Behrens–Fisher problem).

    Needs two values a side (NaN otherwise). Two constant samples have se = 0: the interval is
    the point ``diff``, p = 0 and P ∈ {0, 1} when the means differ, p and P NaN when equal.
    """
    n, mean, sd = (np.asarray(x, dtype=float) for x in (n, mean, std))
    nb, mb, sb = (np.asarray(x, dtype=float) for x in (n_base, mean_base, std_base))
    with np.errstate(divide="ignore", invalid="ignore"):
        va, vb = sd**2 / n, sb**2 / nb
        se2 = va + vb
        diff = mean - mb
        se = np.sqrt(se2)
        df = se2**2 / (va**2 / (n - 1) + vb**2 / (nb - 1))
        t = diff / se
        flat = se2 == 0
        p = np.where(flat, np.where(diff == 0, np.nan, 0.0), 2 * _sps.t.sf(np.abs(t), df))
        better = np.where(flat, np.where(diff == 0, np.nan, (diff < 0).astype(float)),
                          _sps.t.cdf(-t, df))
        half = np.where(flat, 0.0, _sps.t.ppf(0.5 + level / 2, df) * se)
    ok = (n >= 2) & (nb >= 2)
    nan = np.full(np.broadcast(ok, diff).shape, np.nan)
    return {"diff": diff, "se": np.where(ok, se, nan), "df": np.where(ok & ~flat, df, nan),
            "t": np.where(ok, t, nan), "p_value": np.where(ok, p, nan),
            "p_improve": np.where(ok, better, nan), "diff_lo": np.where(ok, diff - half, nan),
            "diff_hi": np.where(ok, diff + half, nan)}


def welch_t(a, b) -> tuple[float, float, float]:
    """Welch's t statistic, its Welch–Satterthwaite degrees of freedom and two-sided p-value.

    Needs two finite values per side; two constant samples give t = ±inf (p = 0) when their
    means differ and NaN when they are equal.
    """
    c = compare(a, b)
    return c.t, c.df, c.p_value


def prob_improvement(candidate, baseline) -> float:
    """P(better) of ``welch``: F_ν(−diff / se), lower is better. A side with a single value
    has no spread: NaN, not a confident 0 or 1."""
    return compare(candidate, baseline).p_improve


def compare(candidate, baseline, level: float = 0.95) -> Comparison:
    a, b = _as_array(candidate), _as_array(baseline)
    if not (a.size and b.size):
        return Comparison(int(a.size), int(b.size), *[math.nan] * 7)
    sd = [x.std(ddof=1) if x.size > 1 else 0.0 for x in (a, b)]
    w = welch(a.size, a.mean(), sd[0], b.size, b.mean(), sd[1], level)
    return Comparison(int(a.size), int(b.size), *(float(w[k]) for k in (
        "diff", "diff_lo", "diff_hi", "p_improve", "t", "df", "p_value")))


def tuneability(lrs, losses, within: float = 0.1) -> float:
    """Width, in decades of learning rate, of the contiguous grid range around the best lr
    whose loss stays within ``within`` (a fraction) of the best loss.

    A single good grid point gives 0; a NaN/inf loss (a diverged lr) breaks the range. Losses
    must be positive for "within x % of the best" to mean anything.
    """
    lr = np.asarray(lrs, dtype=float)
    loss = np.asarray(losses, dtype=float)
    if lr.size == 0 or not np.isfinite(loss).any():
        return math.nan
    order = np.argsort(lr)
    lr, loss = lr[order], loss[order]
    ok_loss = np.where(np.isfinite(loss), loss, np.inf)
    best = int(np.argmin(ok_loss))
    if ok_loss[best] <= 0:
        raise ValueError("tuneability needs positive losses")
    good = ok_loss <= ok_loss[best] * (1 + within)
    lo = hi = best
    while lo > 0 and good[lo - 1]:
        lo -= 1
    while hi < lr.size - 1 and good[hi + 1]:
        hi += 1
    return float(np.log10(lr[hi] / lr[lo]))


def censored_median(times) -> float:
    """Median of times to target where ``inf`` marks a run that never reached it.

    Censored runs count (as larger than any reached time), so the median is ``inf`` when half
    or more of the runs never got there.
    """
    a = np.asarray(times, dtype=float)
    a = a[~np.isnan(a)]
    # numpy's median averages the two middle values, so one inf among them gives inf.
    return float(np.median(a)) if a.size else math.nan


def performance_profile(costs: pd.DataFrame, taus, task: str = "task", solver: str = "solver",
                        cost: str = "cost") -> pd.DataFrame:
    """Dolan–Moré / AlgoPerf profile: for each solver and τ, the fraction of tasks on which its
    cost is within τ× of the best solver's cost on that task.

    Costs are positive and lower is better; ``inf`` (never reached the target, diverged) is
    never within any τ. A solver absent from a task counts as ``inf`` there.
    """
    wide = costs.pivot_table(index=task, columns=solver, values=cost, aggfunc="min")
    values = wide.to_numpy(dtype=float)
    values = np.where(np.isnan(values), np.inf, values)
    if (values <= 0).any():
        raise ValueError("performance profiles need positive costs")
    best = values.min(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(np.isfinite(best), values / best, np.inf)
    taus = np.asarray(taus, dtype=float)
    rho = (ratio[None, :, :] <= taus[:, None, None]).mean(axis=1)  # (tau, solver)
    out = pd.DataFrame(rho, index=pd.Index(taus, name="tau"), columns=wide.columns)
    return out.reset_index().melt(id_vars="tau", var_name=solver, value_name="rho")


def ema(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard-style debiased exponential moving average (weight 0 = no smoothing).

    Non-finite points stay as they are and do not enter the average, so a gap stays a gap
    without poisoning the rest of the curve.
    """
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing must be in [0, 1) (got {weight})")
    out = np.empty(len(values))
    acc, norm = 0.0, 0.0
    for i, v in enumerate(values):
        if not np.isfinite(v):
            out[i] = v
            continue
        acc = weight * acc + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out[i] = acc / norm
    return out


def best_of_k_weights(n: int, k_max: int) -> np.ndarray:
    """``w[i, k−1]``: the probability that the i-th smallest of ``n`` values is the smallest of
    ``k`` draws with replacement, for k = 1…``k_max`` (Dodge et al. 2019, "Show your work").

    The smallest of k draws is at rank ≥ i with probability ((n − i + 1)/n)^k, so rank i exactly
    with ((n − i + 1)/n)^k − ((n − i)/n)^k. Each column sums to 1; the weights depend only on the
    ranks, never on the values, so one matrix serves every bootstrap resample.
    """
    if n < 1 or k_max < 1:
        raise ValueError(f"best-of-k needs n ≥ 1 and k_max ≥ 1 (got n={n}, k_max={k_max})")
    above = (np.arange(n, 0, -1, dtype=float) / n)[:, None]  # (n − i + 1)/n for i = 1…n
    k = np.arange(1, k_max + 1, dtype=float)[None, :]
    return above**k - (above - 1 / n) ** k


def expected_best_of_k(values, k_max: int | None = None,
                       lower_is_better: bool = True) -> np.ndarray:
    """Expected best of k trials drawn at random with replacement from ``values``, k =
    1…``k_max`` (default: as many as there are values): Dodge et al.'s expected validation
    performance, E[min] for a loss (``lower_is_better``), E[max] for an accuracy.

    With v₍₁₎ ≤ … ≤ v₍ₙ₎ sorted, E[min of k] = Σᵢ v₍ᵢ₎ · (((n − i + 1)/n)^k − ((n − i)/n)^k).
    By hand for {1, 2, 3} and k = 2: 1·5/9 + 2·3/9 + 3·1/9 = 14/9. At k = 1 it is the mean; it
    falls towards the best value as k grows. ``inf`` is a legal value and makes every
    expectation it has weight in infinite (the caller decides what a failed trial is worth);
    NaN is refused, since no rank can be given to it.
    """
    v = np.asarray(values, dtype=float).ravel()
    if np.isnan(v).any():
        raise ValueError("best-of-k: a trial's value is NaN; give a failed trial a value "
                         "(its worst) instead")
    k_max = v.size if k_max is None else k_max
    sign = 1.0 if lower_is_better else -1.0
    return sign * _weighted(np.sort(sign * v)[None], best_of_k_weights(v.size, k_max))[0]


def _weighted(ranked: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Σᵢ ranked[·, i] · w[i, k] for sorted rows; a weight that underflowed to 0 (large k)
    contributes 0 even against an infinite value, where numpy would give inf · 0 = NaN."""
    with np.errstate(invalid="ignore"):
        return np.where(w[None] == 0, 0.0, ranked[:, :, None] * w[None]).sum(axis=1)


def best_of_k_band(values, k_max: int | None = None, lower_is_better: bool = True,
                   level: float = 0.95, n_boot: int = BOOT_SAMPLES,
                   seed: int = BOOT_SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``expected_best_of_k`` with a percentile bootstrap band: the n trials are resampled with
    replacement ``n_boot`` times (fixed ``seed``: the same data draw the same band) and the
    curve recomputed on each. Returns (expected, lo, hi), each of length ``k_max``.

    The band says how much the curve rests on the particular trials observed; with few
    trials it is wide, and at k near n it mostly reflects whether the resample kept the single
    best trial.
    """
    v = np.asarray(values, dtype=float).ravel()
    center = expected_best_of_k(v, k_max, lower_is_better)
    k_max = center.size
    if v.size < 2:
        return center, center.copy(), center.copy()
    sign = 1.0 if lower_is_better else -1.0
    rng = np.random.default_rng(seed)
    samples = np.sort(sign * v[rng.integers(0, v.size, size=(n_boot, v.size))], axis=1)
    curves = sign * _weighted(samples, best_of_k_weights(v.size, k_max))
    tail = (1 - level) / 2
    lo, hi = np.quantile(curves, [tail, 1 - tail], axis=0)
    return center, np.minimum(lo, hi), np.maximum(lo, hi)


def best_of_k_difference(candidate, baseline, k: int, lower_is_better: bool = True,
                         level: float = 0.95, n_boot: int = BOOT_SAMPLES,
                         seed: int = BOOT_SEED) -> dict[str, float]:
    """The candidate's expected best of ``k`` trials minus the baseline's (negative: the
    candidate is better for a loss), with a percentile bootstrap interval: each side's trials
    are resampled independently, ``n_boot`` times. ``p_better`` is the share of resamples in
    which the candidate comes out better (ties count half).

    It answers "which wins at an equal budget of k trials" with the uncertainty of having seen
    only these trials; like any bootstrap on a handful of values it is optimistic (too narrow)
    when each side has few trials.
    """
    a = np.asarray(candidate, dtype=float).ravel()
    b = np.asarray(baseline, dtype=float).ravel()
    sign = 1.0 if lower_is_better else -1.0
    diff = float(expected_best_of_k(a, k, lower_is_better)[k - 1]
                 - expected_best_of_k(b, k, lower_is_better)[k - 1])
    rng = np.random.default_rng(seed)

    def boot(v: np.ndarray) -> np.ndarray:
        samples = np.sort(sign * v[rng.integers(0, v.size, size=(n_boot, v.size))], axis=1)
        return sign * _weighted(samples, best_of_k_weights(v.size, k)[:, k - 1:k])[:, 0]

    with np.errstate(invalid="ignore"):
        d = boot(a) - boot(b)
    tail = (1 - level) / 2
    lo, hi = np.quantile(d, [tail, 1 - tail])
    better = sign * d < 0
    p_better = float(better.mean() + 0.5 * (d == 0).mean())
    return {"diff": diff, "lo": float(lo), "hi": float(hi), "p_better": p_better}


def rank_correlation(x, y) -> tuple[float, float]:
    """Spearman's ρ between paired values and its two-sided p-value (scipy's t approximation);
    NaN for fewer than three finite pairs or a constant side, where a rank correlation says
    nothing."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return math.nan, math.nan  # a constant side has no ranks to correlate
    res = _sps.spearmanr(a[ok], b[ok])
    return float(res.statistic), float(res.pvalue)
