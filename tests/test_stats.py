"""Statistics against values worked out by hand (and scipy as a peer for the t-test)."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from approximant.storage import stats


def _bootstrap_ci(values, level: float, n_boot: int = 1000, seed: int = 0):
    """An independent per-sample percentile bootstrap: the reference for the vectorised one."""
    a = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = [a[rng.integers(0, a.size, a.size)].mean() for _ in range(n_boot)]
    tail = (1 - level) / 2
    return tuple(np.quantile(means, [tail, 1 - tail]))


def test_std_and_sem_bands_by_hand():
    # Additive bands (positive=False); multiplicative ones for positive values are tested below.
    frame = pd.DataFrame({"g": ["a"] * 3 + ["b"], "value": [1.0, 2.0, 3.0, 5.0]})
    std = stats.band_frame(frame, ["g"], band="std", positive=False).set_index("g")
    assert std.loc["a", ["center", "lo", "hi", "n"]].tolist() == [2.0, 1.0, 3.0, 3]
    # One seed has no spread: the band collapses onto the value.
    assert std.loc["b", ["center", "lo", "hi", "n"]].tolist() == [5.0, 5.0, 5.0, 1]
    sem = stats.band_frame(frame, ["g"], band="sem", positive=False).set_index("g")
    assert sem.loc["a", "lo"] == pytest.approx(2 - 1 / math.sqrt(3))
    assert sem.loc["a", "hi"] == pytest.approx(2 + 1 / math.sqrt(3))


def test_student_t_interval_by_hand():
    frame = pd.DataFrame({"g": ["a"] * 3 + ["b"], "value": [1.0, 2.0, 3.0, 5.0]})
    out = stats.band_frame(frame, ["g"], band="t", positive=False).set_index("g")
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) · s / √n with s = 1
    assert out.loc["a", "lo"] == pytest.approx(2 - half) and out.loc["a", "hi"] == \
        pytest.approx(2 + half)
    assert math.isnan(out.loc["b", "lo"])  # one value: no interval


def test_minmax_median_and_diverged_seed_left_out():
    frame = pd.DataFrame({"g": ["a"] * 4, "value": [1.0, 2.0, 10.0, math.nan]})
    out = stats.band_frame(frame, ["g"], center="median", band="minmax").iloc[0]
    assert (out["center"], out["lo"], out["hi"], out["n"]) == (2.0, 1.0, 10.0, 3)


def test_bootstrap_interval_of_two_values():
    # Resampled means of {0, 1}: 0, ½, 1 with probabilities ¼, ½, ¼; the 95 % interval is [0, 1].
    frame = pd.DataFrame({"g": [1, 1, 2], "value": [0.0, 1.0, 4.0]})
    out = stats.band_frame(frame, ["g"], band="bootstrap").set_index("g")
    assert out.loc[1, ["lo", "hi"]].tolist() == [0.0, 1.0]
    assert out.loc[2, ["lo", "hi"]].tolist() == [4.0, 4.0]


def test_bootstrap_band_matches_the_scalar_interval_per_group():
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"g": np.repeat(np.arange(5), 6), "value": rng.normal(size=30)})
    out = stats.band_frame(frame, ["g"], band="bootstrap", level=0.9)
    for _, row in out.iterrows():
        vals = frame.loc[frame["g"] == row["g"], "value"]
        lo, hi = _bootstrap_ci(vals, level=0.9)
        assert lo <= row["mean"] <= hi
        assert row["lo"] == pytest.approx(lo, abs=0.15) and row["hi"] == pytest.approx(hi, abs=0.15)


def test_welch_by_hand_and_against_scipy():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0]
    t, df, p = stats.welch_t(a, b)
    # means 2.5 and 5, variances 5/3 and 20/3 → se² = 5/12 + 5/3 = 25/12
    assert t == pytest.approx(-2.5 / math.sqrt(25 / 12))
    assert df == pytest.approx((25 / 12) ** 2 / ((5 / 12) ** 2 / 3 + (5 / 3) ** 2 / 3))
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert p == pytest.approx(ref.pvalue, rel=1e-12)
    assert all(math.isnan(x) for x in stats.welch_t([1.0], b))
    assert stats.welch_t([1.0, 1.0], [2.0, 2.0])[2] == 0.0
    assert all(math.isnan(x) for x in stats.welch_t([1.0, 1.0], [1.0, 1.0]))


def test_probability_of_improvement():
    assert stats.prob_improvement([1.0, 1.0], [2.0, 2.0]) == 1.0  # se = 0, the means differ
    assert math.isnan(stats.prob_improvement([1.0], [2.0, 2.0]))  # one seed: no evidence
    assert stats.prob_improvement([3.0, 3.0], [2.0, 2.0]) == 0.0
    # Equal means: t = 0, so P = F(0) = ½ whatever the spread.
    assert stats.prob_improvement([1.0, 3.0], [2.0, 2.0]) == 0.5


def test_welch_interval_p_and_p_better_by_hand():
    # Candidate {1, 2, 3} against baseline {3, 4, 5}: means 2 and 4, both variances 1, so
    # se² = 1/3 + 1/3 = 2/3 and ν = (2/3)² / ((1/3)²/2 + (1/3)²/2) = 4; t = −2/√(2/3) = −√6.
    # Student t with 4 df: F(t) = ½ + ⅜ · x · (1 − t²/(12(1 + t²/4))), x = t/√(1 + t²/4);
    # at t = −√6: x = −√2.4, bracket 0.8, F = ½ − 0.3·√2.4 = 0.0352420.
    # P(better) = F(√6) = 0.9647580; two-sided p = 2 · 0.0352420 = 0.0704840;
    # interval −2 ± t(0.975, 4) · √(2/3) = −2 ± 2.7764451 · 0.8164966 = −2 ± 2.2669579.
    c = stats.compare([1.0, 2.0, 3.0], [3.0, 4.0, 5.0])
    assert (c.n, c.n_base, c.diff, c.df) == (3, 3, -2.0, pytest.approx(4.0))
    assert c.t == pytest.approx(-math.sqrt(6))
    assert c.p_improve == pytest.approx(0.5 + 0.3 * math.sqrt(2.4), rel=1e-12)
    assert c.p_value == pytest.approx(1 - 0.6 * math.sqrt(2.4), rel=1e-12)
    assert c.diff_lo == pytest.approx(-2 - 2.7764451052 * math.sqrt(2 / 3), rel=1e-10)
    assert c.diff_hi == pytest.approx(-2 + 2.7764451052 * math.sqrt(2 / 3), rel=1e-10)
    # The three numbers tell one story: the interval holds 0, p > 0.05, P(better) < 0.975.
    assert c.p_value == pytest.approx(2 * min(c.p_improve, 1 - c.p_improve))
    # Swapping the sides mirrors everything.
    r = stats.compare([3.0, 4.0, 5.0], [1.0, 2.0, 3.0])
    assert r.p_improve == pytest.approx(1 - c.p_improve) and r.p_value == pytest.approx(c.p_value)
    assert (r.diff_lo, r.diff_hi) == (pytest.approx(-c.diff_hi), pytest.approx(-c.diff_lo))


def test_welch_interval_with_unequal_variances_against_scipy():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0]
    c = stats.compare(a, b, level=0.9)
    # ν = 75/17 from the test above (se² = 25/12); scipy supplies the t quantile.
    half = sps.t.ppf(0.95, 75 / 17) * math.sqrt(25 / 12)
    assert (c.diff_lo, c.diff_hi) == (pytest.approx(-2.5 - half), pytest.approx(-2.5 + half))
    assert c.p_value == pytest.approx(sps.ttest_ind(a, b, equal_var=False).pvalue)
    assert c.p_improve == pytest.approx(1 - sps.ttest_ind(a, b, equal_var=False,
                                                          alternative="less").pvalue)


def test_welch_is_vectorised_over_candidates():
    # Two candidates against one baseline {3, 4, 5}: the first is the hand case above, the
    # second has a single seed and gets a Δ but no inference.
    w = stats.welch([3, 1], [2.0, 1.0], [1.0, 0.0], 3, 4.0, 1.0)
    assert w["diff"].tolist() == [-2.0, -3.0]
    assert w["p_improve"][0] == pytest.approx(0.5 + 0.3 * math.sqrt(2.4))
    assert all(math.isnan(w[k][1]) for k in ("diff_lo", "diff_hi", "p_improve", "p_value"))


def test_constant_samples_give_a_point_interval():
    c = stats.compare([1.0, 1.0, 1.0], [2.0, 2.0, 2.0])
    assert (c.diff_lo, c.diff_hi, c.p_value, c.p_improve) == (-1.0, -1.0, 0.0, 1.0)
    same = stats.compare([1.0, 1.0], [1.0, 1.0])
    assert (same.diff_lo, same.diff_hi) == (0.0, 0.0)
    assert math.isnan(same.p_value) and math.isnan(same.p_improve)


def test_bands_of_positive_values_are_multiplicative():
    frame = pd.DataFrame({"g": ["a"] * 3 + ["b"] * 2, "value": [1.0, 2.0, 3.0, 1.0, 3.0]})
    std = stats.band_frame(frame, ["g"], band="std").set_index("g")
    # a: centre 2, s = 1 → 2·e^(∓1/2), not 2 ∓ 1.
    assert std.loc["a", "lo"] == pytest.approx(2 * math.exp(-0.5))
    assert std.loc["a", "hi"] == pytest.approx(2 * math.exp(0.5))
    t = stats.band_frame(frame, ["g"], band="t").set_index("g")
    # b: a loss of 1 and 3. The additive t interval 2 ± 12.7062 · √2/√2 reaches −10.7; the
    # multiplicative one is 2·e^(∓12.7062/2): wide, and positive.
    assert t.loc["b", "lo"] == pytest.approx(2 * math.exp(-12.7062047362 / 2))
    assert t.loc["b", "hi"] == pytest.approx(2 * math.exp(12.7062047362 / 2))
    assert (t["lo"] > 0).all()
    # Median centre: the half-width is a fraction of the median.
    med = stats.band_frame(frame, ["g"], center="median", band="sem").set_index("g")
    assert med.loc["a", "hi"] == pytest.approx(2 * math.exp(1 / math.sqrt(3) / 2))


def test_a_value_at_or_below_zero_keeps_bands_additive():
    # γ-like diagnostic: one value ≤ 0 anywhere in the frame makes every band additive.
    frame = pd.DataFrame({"g": ["a"] * 3 + ["b"] * 2, "value": [1.0, 2.0, 3.0, -1.0, 1.0]})
    std = stats.band_frame(frame, ["g"], band="std").set_index("g")
    assert std.loc["a", ["lo", "hi"]].tolist() == [1.0, 3.0]
    assert std.loc["b", "lo"] == pytest.approx(-math.sqrt(2))
    assert not stats.all_positive([1.0, 0.0]) and stats.all_positive([1.0, math.inf, 2.0])
    assert not stats.all_positive([math.nan])


def test_tuneability_counts_decades_of_the_contiguous_good_range():
    lrs = [1e-3, 1e-2, 1e-1, 1.0]
    assert stats.tuneability(lrs, [1.05, 1.0, 1.08, 2.0], within=0.1) == pytest.approx(2.0)
    assert stats.tuneability(lrs, [math.nan, 1.0, 1.08, 2.0], within=0.1) == pytest.approx(1.0)
    assert stats.tuneability(lrs, [1.5, 1.0, 1.5, 1.0001], within=0.01) == 0.0  # not contiguous
    assert stats.tuneability(list(reversed(lrs)), [2.0, 1.08, 1.0, 1.05]) == pytest.approx(2.0)


def test_censored_median():
    assert stats.censored_median([10, 20, math.inf]) == 20
    assert stats.censored_median([10, math.inf]) == math.inf
    assert stats.censored_median([10, 20, math.inf, math.inf]) == math.inf
    assert stats.censored_median([10, 20, 30, math.inf]) == 25


def test_performance_profile_by_hand():
    costs = pd.DataFrame({
        "task": ["A", "B", "A", "B", "A", "B"],
        "solver": ["s1", "s1", "s2", "s2", "s3", "s3"],
        "cost": [1.0, 4.0, 2.0, 2.0, math.inf, 2.0],
    })
    prof = stats.performance_profile(costs, [1.0, 1.5, 2.0, 100.0])
    rho = prof.pivot(index="tau", columns="solver", values="rho")
    assert rho["s1"].tolist() == [0.5, 0.5, 1.0, 1.0]
    assert rho["s2"].tolist() == [0.5, 0.5, 1.0, 1.0]
    assert rho["s3"].tolist() == [0.5, 0.5, 0.5, 0.5]  # never reached A: never within τ


def test_ema_is_debiased_and_skips_gaps():
    assert stats.ema(np.array([1.0, 3.0]), 0.5).tolist() == pytest.approx([1.0, 1.75 / 0.75])
    out = stats.ema(np.array([1.0, math.nan, 3.0]), 0.0)
    assert out[0] == 1.0 and math.isnan(out[1]) and out[2] == 3.0
    with pytest.raises(ValueError, match="smoothing"):
        stats.ema(np.array([1.0]), 1.0)


def test_bad_band_name_is_named():
    with pytest.raises(ValueError, match="band must be one of"):
        stats.band_frame(pd.DataFrame({"g": [1], "value": [1.0]}), ["g"], band="iqr")


def test_expected_best_of_k_by_hand():
    # Sorted 1 ≤ 2 ≤ 3, k = 2 draws with replacement: the minimum is 1 unless both draws miss
    # it (1 − (2/3)² = 5/9), is 3 only if both draws are 3 ((1/3)² = 1/9), else 2 (3/9):
    # E = 5/9 + 6/9 + 3/9 = 14/9. k = 1 is the mean; k = 3: 1·19/27 + 2·7/27 + 3·1/27 = 36/27.
    got = stats.expected_best_of_k([3.0, 1.0, 2.0])
    assert got == pytest.approx([2.0, 14 / 9, 36 / 27])
    # An accuracy is maximised: E[max of 2] = 1·1/9 + 2·3/9 + 3·5/9 = 22/9.
    assert stats.expected_best_of_k([3, 1, 2], 2, lower_is_better=False)[1] == \
        pytest.approx(22 / 9)


def test_expected_best_of_k_against_simulation_and_limits():
    values = np.array([0.9, 1.4, 1.1, 2.5, 1.0, 3.0])
    rng = np.random.default_rng(1)
    draws = values[rng.integers(0, values.size, size=(200_000, 4))].min(axis=1)
    # 200 000 draws: the simulation's standard error is about 0.0006 here.
    assert stats.expected_best_of_k(values, 4)[3] == pytest.approx(draws.mean(), abs=0.003)
    far = stats.expected_best_of_k(values, 400)
    assert far[-1] == pytest.approx(0.9)  # many trials find the best value
    assert (np.diff(far) <= 1e-12).all()  # more budget never hurts in expectation
    assert stats.best_of_k_weights(6, 5).sum(axis=0) == pytest.approx(np.ones(5))


def test_best_of_k_with_a_failed_trial_and_nan():
    # A trial worth inf keeps weight (1/n)^k at every k: the expectation is infinite.
    assert np.isinf(stats.expected_best_of_k([1.0, math.inf], 3)).all()
    with pytest.raises(ValueError, match="NaN"):
        stats.expected_best_of_k([1.0, math.nan])


def test_best_of_k_band_is_a_bootstrap_around_the_curve():
    values = [2.0, 1.0, 3.0, 1.5, 2.5]
    mean, lo, hi = stats.best_of_k_band(values, seed=3)
    assert mean == pytest.approx(stats.expected_best_of_k(values))
    assert (lo <= mean + 1e-12).all() and (mean <= hi + 1e-12).all()
    assert lo[-1] >= 1.0 and hi[0] <= 3.0  # resampled curves stay within the values
    again = stats.best_of_k_band(values, seed=3)
    assert all((a == b).all() for a, b in zip((mean, lo, hi), again, strict=True))
    one = stats.best_of_k_band([4.0], 3)
    assert [x.tolist() for x in one] == [[4.0] * 3] * 3
