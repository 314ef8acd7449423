"""A reproduction report: each claim of *Muon is Not That Special* (arXiv 2605.11181) as a
sentence, the measured numbers and the figure that bear on it in the studies given, and a
verdict: supported, contradicted, or not resolved at this scale.

The rules are fixed in advance and stated in the report (``PROTOCOL``), so a verdict is a
computation on the studies, not a judgement: every comparison is on the final validation loss;
"as good as Muon" is a non-inferiority test with a margin of ``MARGIN`` of Muon's loss; a
difference counts when its 95 % interval excludes zero. ``approximant report`` writes the
Markdown and SVG files; the study page offers the same report as a zip.
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd

from approximant.app import charts, labels
from approximant.app.labels import MISSING, fmt
from approximant.storage import analytics as an
from approximant.storage import stats
from approximant.storage.db import Database
from approximant.storage.queries import Queries

METRIC = "val_loss"
MEASURE = "final"
MARGIN = 0.02  # "as good as": the 95 % interval of Δ stays below 2 % of Muon's mean loss
MARGIN_TEXT = f"{MARGIN * 100:g} %"
LEVEL = 0.95
BURN_IN = 0.1  # share of the diagnosed steps left out of step-size statistics (the transient)
SUPPORTED, CONTRADICTED, UNRESOLVED = "supported", "contradicted", "not resolved at this scale"
SVG_WIDTH = 620
IMG_PREFIX = "repro-"


# --- what one study offers the report ---------------------------------------------------------

@dataclass
class Family:
    """An optimizer config without its lr, at its best lr (lowest mean final loss over seeds
    among the lrs at which no seed diverged or failed)."""

    key: str
    title: str
    optimizer: str
    hparams: dict
    trials: np.ndarray  # every (lr, seed) run's value, a failed one at the penalty
    grid: list[float]  # the lrs tried, sorted
    lr: float | None = None
    values: np.ndarray = field(default_factory=lambda: np.empty(0))  # seeds at the best lr
    run_ids: list[str] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(self.values.mean()) if self.values.size else math.nan

    @property
    def lr_text(self) -> str:
        """The best lr, flagged when it is an end of the grid: the optimum may lie beyond it,
        and the optimizer is then judged below its best."""
        if self.lr is None:
            return MISSING
        edge = len(self.grid) > 1 and self.lr in (self.grid[0], self.grid[-1])
        return f"{fmt(self.lr)} (grid edge)" if edge else fmt(self.lr)


@dataclass
class Source:
    study: dict
    a: an.Analytics
    runs: pd.DataFrame
    metrics: list[str]
    families: dict[str, Family]
    curves: pd.DataFrame
    summary: pd.DataFrame
    elapsed_s: float = math.nan  # first run's start to last run's end, on the wall clock

    @property
    def name(self) -> str:
        return str(self.study["name"])

    @property
    def k(self) -> int:
        return int(self.summary["k"].iloc[0]) if not self.summary.empty else 0

    def find(self, test: Callable[[Family], bool]) -> list[Family]:
        return [f for f in self.families.values() if test(f)]

    def muon(self) -> Family | None:
        found = [f for f in self.find(lambda f: f.optimizer == "muon") if f.values.size]
        return found[0] if found else None

    def seeds(self) -> str:
        return "seeds " + ", ".join(map(str, self.study["spec"].get("seeds", [])))

    @property
    def workload(self) -> str:
        return str(self.study["spec"]["workload"]["name"])


def load(db: Database, study_id: str) -> Source:
    """Everything the report reads about one study, from the DuckDB file."""
    a = an.Analytics(db)
    q = Queries(db)
    study = q.study(study_id)
    if study is None:
        raise ValueError(f"no study {study_id!r}")
    status = q.runs(study_id)
    elapsed = (status["finished_at"].max() - status["started_at"].min()).total_seconds() \
        if not status.empty and status["finished_at"].notna().any() else math.nan
    runs = a.runs([study_id])
    finals = a.finals([study_id], METRIC)
    empty = pd.DataFrame()
    if runs.empty or finals.empty:
        return Source(study, a, runs, a.metric_names([study_id]), {}, empty, empty, elapsed)
    firsts = an.first_values(a, [study_id], METRIC)
    trials, _ = an.budget_trials(runs, finals, firsts, MEASURE)
    curves, summary = an.tuning_budget(runs, finals, firsts, MEASURE)
    titles = _titles(list(dict.fromkeys(an.family_key(runs))))
    families = {}
    keyed = runs.assign(family=an.family_key(runs))
    for key, g in trials.groupby("family", sort=False):
        first = keyed[keyed["family"] == key].iloc[0]
        hp = {k: v for k, v in first["hparams"].items() if k not in ("lr", "seed")}
        fam = Family(key, titles.get(key, key), first["optimizer"], hp,
                     g["value"].to_numpy(dtype=float), sorted(g["lr"].dropna().unique()))
        _best_lr(fam, g)
        families[key] = fam
    return Source(study, a, runs, a.metric_names([study_id]), families, curves, summary,
                  elapsed)


def _best_lr(fam: Family, trials: pd.DataFrame) -> None:
    clean = trials.groupby("lr").filter(lambda g: not g["failed"].any())
    if clean.empty:
        return
    means = clean.groupby("lr")["value"].mean()
    fam.lr = float(means.idxmin())
    at = clean[clean["lr"] == fam.lr]
    fam.values = at["value"].to_numpy(dtype=float)
    fam.run_ids = list(at["run_id"])


# --- findings ---------------------------------------------------------------------------------

@dataclass
class Finding:
    """What one study says about one claim."""

    study: str
    verdict: str
    why: str  # one or two sentences with the deciding numbers
    test: str  # the statistical test, the seeds and the budget behind the verdict
    table: pd.DataFrame | None = None
    figure: tuple[str, alt.TopLevelMixin] | None = None  # (file stem, chart)


@dataclass(frozen=True)
class Claim:
    key: str
    sentence: str
    source: str
    evaluate: Callable[[Source], Finding | None]
    workloads: tuple[str, ...] = ()  # the workloads the claim is about; () for any

    def finding(self, src: Source) -> Finding | None:
        if self.workloads and src.workload not in self.workloads:
            return None
        return self.evaluate(src)


def _welch(x: Family, base: Family) -> stats.Comparison:
    return stats.compare(x.values, base.values, LEVEL)


def _versus_row(x: Family, base: Family, src: Source) -> dict:
    """One row of "x against base": Welch at the best lrs, and the equal-budget Δ at K."""
    c = _welch(x, base)
    b = stats.best_of_k_difference(x.trials, base.trials, src.k, level=LEVEL) if src.k else {}
    return {"optimizer": x.title, "best lr": x.lr_text, "seeds": str(x.values.size),
            "mean at best lr": fmt(x.mean), f"Δ vs {base.title}": fmt(c.diff, 3),
            "Welch 95 % CI": f"[{fmt(c.diff_lo, 3)}, {fmt(c.diff_hi, 3)}]",
            "Welch p": fmt(c.p_value, 2),
            f"E[best of {src.k}] Δ (bootstrap 95 %)":
                f"{fmt(b.get('diff'), 3)} [{fmt(b.get('lo'), 3)}, {fmt(b.get('hi'), 3)}]"}


def _non_inferior(x: Family, muon: Family) -> str:
    """SUPPORTED when the Welch interval of Δ = x − Muon lies below the margin (x is at least
    as good, within ``MARGIN``), CONTRADICTED when x is worse with the interval above zero and
    beyond the margin's reach, else UNRESOLVED."""
    c = _welch(x, muon)
    if x.values.size < stats.MIN_SEEDS or muon.values.size < stats.MIN_SEEDS or \
            math.isnan(c.diff_hi):
        return UNRESOLVED
    margin = MARGIN * abs(muon.mean)
    if c.diff_hi < margin:
        return SUPPORTED
    if c.diff_lo > 0:
        return CONTRADICTED
    return UNRESOLVED


def _combine(verdicts: list[str]) -> str:
    if verdicts and all(v == SUPPORTED for v in verdicts):
        return SUPPORTED
    if CONTRADICTED in verdicts:
        return CONTRADICTED
    return UNRESOLVED


def _welch_test(src: Source, muon: Family) -> str:
    return (f"Welch two-sided t-test on the final {labels.metric_title(METRIC).lower()} at "
            f"each optimizer's best lr, {muon.values.size} seeds a side ({src.seeds()}); "
            f"non-inferiority margin {MARGIN_TEXT} of Muon's mean; equal-budget Δ at k = {src.k} "
            "with a bootstrap over trials")


def _forest(rows: list[tuple[Family, Family]], stem: str) -> tuple[str, alt.TopLevelMixin]:
    """Each row's Δ against its base with the Welch 95 % interval."""
    frame = pd.DataFrame([{"group": x.title, **{k: getattr(_welch(x, b), k) for k in (
        "diff", "diff_lo", "diff_hi")}} for x, b in rows])
    base = rows[0][1].title
    return stem, charts.forest_chart(frame, base, f"final {labels.metric_title(METRIC).lower()}",
                                     list(frame["group"]))


def _versus_claim(pick: Callable[[Family], bool], what: str, stem: str) -> Callable:
    """A claim of the form "these optimizers are as good as Muon", as an evaluator."""

    def evaluate(src: Source) -> Finding | None:
        muon = src.muon()
        found = [f for f in src.find(pick) if f.values.size]
        if muon is None or not found:
            return None
        verdicts = {f.title: _non_inferior(f, muon) for f in found}
        verdict = _combine(list(verdicts.values()))
        table = pd.DataFrame([{**_versus_row(f, muon, src), "verdict": verdicts[f.title]}
                              for f in found])
        parts = "; ".join(f"{t}: {v}" for t, v in verdicts.items())
        why = (f"Against Muon ({fmt(muon.mean)} at lr {fmt(muon.lr)}), {what} — {parts}.")
        return Finding(src.name, verdict, why, _welch_test(src, muon), table,
                       _forest([(f, muon) for f in found], stem))

    return evaluate


def _c(f: Family) -> float | None:
    c = f.hparams.get("c")
    return float(c) if f.optimizer == "freon" and c is not None else None


def _freon_c(src: Source) -> Finding | None:
    freons = [f for f in src.find(lambda f: _c(f) is not None) if f.values.size]
    above = [f for f in freons if _c(f) > 0.5 + 1e-9]
    below = [f for f in freons if _c(f) <= 0.5 + 1e-9]
    muon = src.muon()
    below += [muon] if muon is not None else []
    if not above or not below:
        return None
    best_above = min(above, key=lambda f: f.mean)
    best_below = min(below, key=lambda f: f.mean)
    c = _welch(best_above, best_below)
    by_budget = src.summary.set_index("family")
    rows = []
    for f in [*sorted(freons, key=_c), *([muon] if muon else [])]:
        at_k = by_budget.loc[f.key] if f.key in by_budget.index else None
        rows.append({"optimizer": f.title, "best lr": f.lr_text, "seeds": str(f.values.size),
                     "mean at best lr": fmt(f.mean),
                     "sd": fmt(float(f.values.std(ddof=1)) if f.values.size > 1 else math.nan,
                                2),
                     f"E[best of {src.k}]": fmt(at_k["at_k"]) if at_k is not None else MISSING,
                     f"rank at k = {src.k}": str(at_k["rank"]) if at_k is not None else MISSING})
    enough = min(best_above.values.size, best_below.values.size) >= stats.MIN_SEEDS
    if enough and c.diff_hi < 0:
        verdict = SUPPORTED
    elif enough and c.diff_lo > 0:
        verdict = CONTRADICTED
    else:
        verdict = UNRESOLVED
    lead = best_above if best_above.mean < best_below.mean else best_below
    why = (f"The lowest loss at its best lr is {lead.title}'s ({fmt(lead.mean)}). Best with "
           f"c > ½: {best_above.title} ({fmt(best_above.mean)}); best with c ≤ ½ (Muon "
           f"included): {best_below.title} ({fmt(best_below.mean)}); Δ = {fmt(c.diff, 3)}, "
           f"Welch 95 % CI [{fmt(c.diff_lo, 3)}, {fmt(c.diff_hi, 3)}], p = "
           f"{fmt(c.p_value, 2)}.")
    test = (f"Welch two-sided t-test, best c > ½ against best c ≤ ½ at their best lrs, "
            f"{min(best_above.values.size, best_below.values.size)} seeds a side "
            f"({src.seeds()}); equal-budget ranks at k = {src.k}")
    return Finding(src.name, verdict, why, test, pd.DataFrame(rows),
                   _forest([(f, best_below) for f in above], "freon-c"))


def _budget(src: Source) -> Finding | None:
    muon = src.muon()
    if muon is None or src.summary.empty:
        return None
    spectral = ("freon", "kaon", "truncated_sgd")
    others = [f for f in src.find(lambda f: f.optimizer in spectral)]
    if not others:
        return None
    margin = MARGIN * abs(muon.mean)
    rows, verdicts = [], []
    for f in others:
        b = stats.best_of_k_difference(f.trials, muon.trials, src.k, level=LEVEL)
        if min(f.trials.size, muon.trials.size) < stats.MIN_SEEDS:
            v = UNRESOLVED  # a bootstrap of one or two trials is a point, not an interval
        else:
            v = SUPPORTED if b["hi"] < margin else CONTRADICTED if b["lo"] > 0 else UNRESOLVED
        verdicts.append(v)
        rows.append({"optimizer": f.title, "trials": str(f.trials.size), "best lr": f.lr_text,
                     f"E[best of {src.k}]": fmt(float(stats.expected_best_of_k(
                         f.trials, src.k)[-1])),
                     "Δ vs Muon": fmt(b["diff"], 3),
                     "bootstrap 95 %": f"[{fmt(b['lo'], 3)}, {fmt(b['hi'], 3)}]",
                     "P(better than Muon)": fmt(b["p_better"], 2), "as good as Muon": v})
    if SUPPORTED in verdicts:
        verdict = SUPPORTED
    elif all(v == CONTRADICTED for v in verdicts):
        verdict = CONTRADICTED
    else:
        verdict = UNRESOLVED
    ranks = src.summary.sort_values("rank")
    order = ", ".join(f"{src.families[r.family].title} {fmt(r.at_k)}"
                      for r in ranks.head(3).itertuples())
    muon_row = src.summary.set_index("family").loc[muon.key]
    good = sum(v == SUPPORTED for v in verdicts)
    why = (f"At an equal budget of k = {src.k} trials the best three are {order}; Muon ranks "
           f"{muon_row['rank']} of {len(src.summary)} ({fmt(muon_row['at_k'])}). "
           f"{good} of {len(others)} other spectral optimizers are as good as Muon within "
           f"{MARGIN_TEXT} at that budget.")
    test = (f"expected best of k = {src.k} random (lr, seed) trials (Dodge et al. 2019), "
            f"difference to Muon with a 95 % bootstrap interval over trials "
            f"({stats.BOOT_SAMPLES} resamples); {src.seeds()} × each lr grid")
    chart = charts.budget_chart(
        src.curves.assign(family=src.curves["family"].map(
            {f.key: f.title for f in src.families.values()})),
        f"final {labels.metric_title(METRIC).lower()}",
        [f.title for f in src.families.values()], src.k,
        log_y=bool((src.curves["expected"] > 0).all()))
    return Finding(src.name, verdict, why, test, pd.DataFrame(rows), ("budget", chart))


def _is_gd(f: Family) -> bool:
    return f.optimizer == "sgd" and float(f.hparams.get("momentum", 0.9)) == 0.0


def _oscillation(series: pd.DataFrame) -> pd.DataFrame:
    """Per run: the step-to-step variation of η* (mean |Δη*| / mean |η*|, 0 for a constant
    optimal step, large for one that zig-zags) and its coefficient of variation, after the
    first ``BURN_IN`` of the diagnosed steps."""
    out = []
    for run_id, g in series.groupby("run_id"):
        v = g["value"].to_numpy(dtype=float)
        v = v[int(len(v) * BURN_IN):]
        v = v[np.isfinite(v)]
        if v.size < 3:
            continue
        scale = np.abs(v).mean()
        out.append({"run_id": run_id, "oscillation": float(np.abs(np.diff(v)).mean() / scale),
                    "cv": float(v.std(ddof=1) / scale)})
    return pd.DataFrame(out, columns=["run_id", "oscillation", "cv"])


def _step_size(src: Source) -> Finding | None:
    muon = src.muon()
    gd = [f for f in src.find(_is_gd) if f.values.size]
    if muon is None or "diag_eta_opt" not in src.metrics:
        return None
    base = gd[0] if gd else next((f for f in src.find(lambda f: f.optimizer == "sgd")
                                  if f.values.size), None)
    if base is None:
        return None
    fams = [f for f in src.families.values() if f.values.size]
    series = an.metric_series(src.a, [r for f in fams for r in f.run_ids], "diag_eta_opt")
    per_run = _oscillation(series)
    by_run = per_run.set_index("run_id")
    rows, frames = [], []
    for f in fams:
        got = by_run.reindex(f.run_ids).dropna()
        rows.append({"optimizer": f.title, "best lr": f.lr_text, "seeds": str(len(got)),
                     "η* step-to-step variation": fmt(got["oscillation"].mean(), 3),
                     "η* coefficient of variation": fmt(got["cv"].mean(), 3)})
        s = series[series["run_id"].isin(f.run_ids)].assign(value=lambda d, lr=f.lr: d["value"]
                                                            * lr)
        frames.append(s.assign(group=f.title))
    # Two halves of one claim: Muon's η* is nearly constant (its coefficient of variation
    # over training is the smaller) and GD's oscillates (its step-to-step variation is the
    # larger). Supported only if both hold; contradicted if either is significantly reversed.
    parts = {}
    for column in ("oscillation", "cv"):
        parts[column] = stats.compare(by_run.reindex(muon.run_ids)[column].dropna(),
                                      by_run.reindex(base.run_ids)[column].dropna(), LEVEL)
    sides = [_direction(c) for c in parts.values()]
    verdict = SUPPORTED if all(d == "lower" for d in sides) else \
        CONTRADICTED if "higher" in sides else UNRESOLVED
    which = "GD (momentum 0)" if gd else f"{base.title} (no plain GD in this study)"
    words = {"oscillation": "step-to-step variation of η* (mean |Δη*| / mean |η*|)",
             "cv": "coefficient of variation of η* over training"}
    mean = {k: (by_run.reindex(muon.run_ids)[k].mean(), by_run.reindex(base.run_ids)[k].mean())
            for k in parts}
    why = " ".join(
        f"{words[k][0].upper()}{words[k][1:]}: Muon {fmt(mean[k][0], 3)}, {which} "
        f"{fmt(mean[k][1], 3)} "
        f"(Δ {fmt(c.diff, 3)}, Welch 95 % CI [{fmt(c.diff_lo, 3)}, {fmt(c.diff_hi, 3)}], "
        f"p = {fmt(c.p_value, 2)})." for k, c in parts.items())
    why += f" Both over the last {(1 - BURN_IN) * 100:g} % of the diagnosed steps."
    c = parts["oscillation"]
    test = (f"Welch two-sided t-tests on the per-seed variation and coefficient of variation "
            f"at each optimizer's best lr, {min(c.n, c.n_base)} seeds a side "
            f"({src.seeds()}); η* "
            "measured at every diagnosed step")
    # Every diagnosed step, not a thinned series: thinning to every other step would hide a
    # period-2 zig-zag, the very oscillation in question. No seed band, to keep the SVG light.
    keyed = pd.concat(frames).rename(columns={"step": "cell"})
    grouped = stats.band_frame(keyed, ["group", "cell"], band="none", center="median")
    grouped = grouped.rename(columns={"cell": "x"})
    chart = charts.series_chart(grouped, "Optimal step η* × lr through training (median over "
                                "seeds, each optimizer at its best lr)",
                                "optimal lr η* × lr", [f.title for f in fams], log_y=True,
                                band=False)
    return Finding(src.name, verdict, why, test, pd.DataFrame(rows), ("step-size", chart))


def _titles(keys: list[str]) -> dict[str, str]:
    """Family titles without the AdamW settings of the non-matrix parameters (``_short``),
    unless leaving them out would give two families one title."""
    short = {k: _short(k) for k in keys}
    if len(set(short.values())) == len(short):
        return short
    return labels.group_titles(keys)


def _adamw_settings(src: Source) -> str:
    """The AdamW settings the titles leave out, as a sentence; "" when there are none."""
    found = sorted({f"{k} = {fmt(float(v))}" for f in src.families.values()
                    for k, v in f.hparams.items()
                    if k.startswith("adamw_") and f"{k}=" in f.key})
    if not found:
        return ""
    return (f"In {src.name}, every optimizer that updates its matrices spectrally trains the "
            f"other parameters (embeddings, head, norms) with AdamW at {', '.join(found)}; "
            "titles leave that out.")


def _short(key: str) -> str:
    """A family's title without the AdamW settings every spectral optimizer shares, for a
    label beside a point: ``Freon (c = ⅔)``."""
    name, _, inner = key.partition("[")
    kept = [kv for kv in inner.rstrip("]").split(",") if kv and not kv.startswith("adamw_")]
    return labels.config_title(f"{name}[{','.join(kept)}]" if kept else name)


def _direction(c: stats.Comparison) -> str:
    """"lower" or "higher" when Muon's side differs from the baseline's with a 95 % Welch
    interval that excludes 0 and each side has the seeds for it, else "unclear"."""
    if c.n < stats.MIN_SEEDS or c.n_base < stats.MIN_SEEDS or math.isnan(c.diff_hi):
        return "unclear"
    return "lower" if c.diff_hi < 0 else "higher" if c.diff_lo > 0 else "unclear"


def _first_half_median(series: pd.DataFrame) -> pd.Series:
    out = {}
    for run_id, g in series.groupby("run_id"):
        v = g["value"].to_numpy(dtype=float)
        v = v[: max(1, len(v) // 2)]
        v = v[np.isfinite(v)]
        out[run_id] = float(np.median(v)) if v.size else math.nan
    return pd.Series(out, dtype=float)


def _potential(src: Source) -> Finding | None:
    need = {"diag_best_decrease", "diag_full_loss", "diag_gamma"}
    fams = [f for f in src.families.values() if f.values.size]
    if not need <= set(src.metrics) or len(fams) < 3:
        return None
    ids = [r for f in fams for r in f.run_ids]
    decrease = _first_half_median(an.metric_series(src.a, ids, "diag_best_decrease"))
    loss = _first_half_median(an.metric_series(src.a, ids, "diag_full_loss"))
    gamma = _first_half_median(an.metric_series(src.a, ids, "diag_gamma"))
    rows = []
    for f in fams:
        rel = (decrease.reindex(f.run_ids) / loss.reindex(f.run_ids)).mean()
        rows.append({"group": f.title, "short": _short(f.key), "x": float(rel),
                     "gamma": float(gamma.reindex(f.run_ids).mean()), "y": f.mean})
    frame = pd.DataFrame(rows)
    rho, p = stats.rank_correlation(frame["x"], frame["y"])
    rho_g, p_g = stats.rank_correlation(frame["gamma"], frame["y"])
    if math.isnan(p):
        verdict = UNRESOLVED
    else:
        verdict = SUPPORTED if rho < 0 and p < 1 - LEVEL else \
            CONTRADICTED if rho > 0 and p < 1 - LEVEL else UNRESOLVED
    why = (f"Across {len(frame)} optimizers at their best lr, Spearman ρ between the one-step "
           f"potential γ²Φ/(2L) (median over the first half of training) and the final loss is "
           f"{fmt(rho, 2)} (p = {fmt(p, 2)}); for alignment γ alone, ρ = {fmt(rho_g, 2)} "
           f"(p = {fmt(p_g, 2)}). A negative ρ means more potential, lower loss.")
    test = (f"Spearman rank correlation across optimizers (n = {len(frame)}), each the mean "
            f"over {src.seeds()} at its best lr")
    table = frame.rename(columns={"group": "optimizer", "x": "γ²Φ/(2L)", "gamma": "γ",
                                  "y": "final loss"}).drop(columns=["short"])
    table = table.assign(**{c: table[c].map(lambda v: fmt(v, 3))
                            for c in ("γ²Φ/(2L)", "γ", "final loss")})
    chart = charts.scatter_chart(frame, "One-step potential against the final loss",
                                 "γ²Φ/(2L), median over the first half of training",
                                 "final validation loss at the best lr", list(frame["group"]),
                                 log_x=bool((frame["x"] > 0).all()),
                                 log_y=bool((frame["y"] > 0).all()))
    return Finding(src.name, verdict, why, test, table, ("potential", chart))


CLAIMS = [
    Claim("freon-c", "The best Freon exponent lies above ½: inverting the singular-value order "
          "(c ≈ ⅔) trains a GPT better than Muon's c = ½.",
          "the paper as the team's design notes summarise it: the best c for GPT-2 lies "
          "above ½, at about ⅔", _freon_c, ("tiny_gpt",)),
    Claim("inverted", "Inverted spectra work just as well: Freon in the quasi-norm regime "
          "(c > ½), where the largest singular value gets the smallest step, is as good as "
          "Muon.", "the paper's title (\"Random or Inverted Spectra Work Just as Well\")",
          _versus_claim(lambda f: (_c(f) or 0) > 0.5 + 1e-9,
                        "Freon with an inverted spectrum", "inverted")),
    Claim("random", "Random spectra work just as well: Kaon, whose singular values are noise "
          "(a chaotic map, or i.i.d. draws from [a, b]), is as good as Muon.",
          "the paper's title; Kaon's two forms (the chaotic map costs what Muon's "
          "Newton–Schulz does; the i.i.d. form is the one its convergence result covers)",
          _versus_claim(lambda f: f.optimizer == "kaon", "Kaon", "random")),
    Claim("budget", "Muon is not special: at an equal tuning budget, some other member of the "
          "spectral family is as good as Muon.",
          "the question behind the paper (its title), asked as Dodge et al.'s equal-budget "
          "comparison", _budget),
    Claim("step-size", "In a random-feature teacher–student model, Muon's optimal step size "
          "stays nearly constant through training while GD's oscillates.",
          "the paper's \"step-size optimality\" result on a random-feature (teacher–student "
          "least-squares) model", _step_size, ("random_features",)),
    Claim("potential", "Alignment γ and descent potential Φ explain performance: an optimizer "
          "whose updates could remove more of the loss in one step (γ²Φ/2) ends lower.",
          "the paper's account of why the family works: alignment γ = ⟨G, D⟩/⟨G̃, D⟩ and "
          "descent potential Φ = ⟨G̃, D⟩²/⟨D, HD⟩ explain performance instead of geometry",
          _potential),
]

OUT_OF_SCOPE = [
    "Freon's rational (QDWH-style) iteration computes (GGᵀ)^(−c)G without an SVD at "
    "doubly-exponential speed: an engine claim, tested against fp64 SVD by the engine's tests "
    "and measurable in the Approximation lab (docs/freon.md, docs/lab.md), not by a training "
    "study.",
    "The anchor figures (modded-nanogpt's steps to 3.28 val loss on GPT-2 small, Moonlight's "
    "52 % of AdamW's flops) need GPT-2 scale on GPUs; nothing at CPU scale can speak to them.",
]

PROTOCOL = f"""\
* **Metric**: the final {labels.metric_title(METRIC).lower()} of each run (nats; lower is
  better), on the workload's fixed validation split.
* **An optimizer** is a config without its learning rate (Freon c = ⅔ and c = ¾ are two). Its
  **best lr** is the grid point with the lowest mean over seeds among those at which no seed
  diverged. Choosing the lr and testing on the same seeds flatters every optimizer alike.
* **Equal tuning budget** (Dodge et al. 2019): the expected best final loss after k trials
  drawn at random, with replacement, from the optimizer's (lr, seed) runs; a diverged run
  counts as the untrained model's loss. Read at k = the fewest trials any optimizer has. Its
  band and its differences are percentile bootstraps over the observed trials
  ({stats.BOOT_SAMPLES} resamples, fixed seed).
* **"As good as Muon"** is a non-inferiority test: the 95 % interval of Δ = optimizer − Muon
  lies below {MARGIN_TEXT} of Muon's mean loss. **Better/worse** means the 95 % interval of Δ
  excludes 0. Welch's interval and test need {stats.MIN_SEEDS} seeds a side.
* **Verdicts**: *supported* when the rule above holds; *contradicted* when the data hold the
  opposite with a 95 % interval that excludes the claim; otherwise *{UNRESOLVED}*: the
  direction is given, but the seeds, the budget or the scale here cannot decide it.
"""


# --- rendering --------------------------------------------------------------------------------

def _md_table(frame: pd.DataFrame) -> str:
    def cell(v: object) -> str:
        text = fmt(v) if isinstance(v, float) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(map(cell, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join([head, rule, *body])


_COORD = re.compile(r'( d="[^"]*"| transform="[^"]*")')
_LONG = re.compile(r"(\d\.\d)\d+")


def svg(chart: alt.TopLevelMixin) -> str:
    """A chart as a standalone SVG (vl-convert bundles Vega: no network), kept small for a
    repository: no ARIA labels (a tooltip's text per point, most of the file otherwise) and
    drawing coordinates to a tenth of a pixel; text and numbers shown are untouched."""
    import vl_convert as vlc

    spec = json.loads(chart.properties(width=SVG_WIDTH).to_json())
    spec["config"] = {**spec.get("config", {}), "aria": False}
    text = vlc.vegalite_to_svg(spec)
    return _COORD.sub(lambda m: _LONG.sub(r"\1", m.group(1)), text)


def _study_row(src: Source) -> dict:
    spec = src.study["spec"]
    counts = src.runs["status"].value_counts() if not src.runs.empty else pd.Series(dtype=int)
    return {"study": src.name, "id": src.study["study_id"],
            "workload": spec["workload"]["name"], "runs": str(len(src.runs)),
            "finished": str(int(counts.get("finished", 0))),
            "diverged/failed": str(int(counts.get("diverged", 0) + counts.get("failed", 0))),
            "seeds": str(len(spec.get("seeds", []))), "steps": str(spec.get("steps")),
            "optimizers": str(len(src.families)),
            "wall clock (min)": fmt(src.elapsed_s / 60, 3)}


def _headline(findings: list[Finding]) -> str:
    if not findings:
        return "not tested by these studies"
    verdicts = {f.verdict for f in findings}
    if len(verdicts) == 1:
        return findings[0].verdict
    return "; ".join(f"{f.verdict} ({f.study})" for f in findings)


def render(sources: list[Source], command: str = "",
           measured: str = "") -> tuple[str, dict[str, str]]:
    """The report as Markdown and its figures as ``{file name: SVG text}``; the Markdown
    links each figure as ``img/<file name>``."""
    images: dict[str, str] = {}
    out = ["# Reproduction report: *Muon is Not That Special* (arXiv 2605.11181) at this scale",
           "",
           f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M UTC} by Approximant from "
           f"{len(sources)} {'study' if len(sources) == 1 else 'studies'}.",
           ""]
    if command:
        out += ["Regenerate it with:", "", "```", command.strip(), "```", ""]
    out += ["## Studies", "", _md_table(pd.DataFrame([_study_row(s) for s in sources])), ""]
    out += [line for s in sources if (line := _adamw_settings(s))]
    out += [""] if out[-1] else []
    if measured:
        out += [measured.strip(), ""]
    out += ["## Protocol", "", PROTOCOL, "## Claims", ""]
    summary_rows = []
    verdicts: dict[int, list[Finding]] = {}
    for i, claim in enumerate(CLAIMS, 1):
        findings = [f for s in sources if (f := claim.finding(s)) is not None]
        verdicts[i] = findings
        summary_rows.append({"claim": f"{i}. {claim.sentence}", "verdict": _headline(findings)})
        out += [f"### {i}. {claim.sentence}", "", f"Source: {claim.source}.", ""]
        if not findings:
            where = f" on {' or '.join(claim.workloads)}" if claim.workloads else ""
            out += [f"*Not tested by these studies*: none{where} has the optimizers (and, "
                    "where needed, the diagnostics) this claim needs.", ""]
        for f in findings:
            out += [f"**{f.study}: {f.verdict}.** {f.why}", "", f"Test: {f.test}.", ""]
            if f.table is not None and not f.table.empty:
                out += [_md_table(f.table), ""]
            if f.figure is not None:
                stem, chart = f.figure
                slug = "".join(ch if ch.isalnum() else "-" for ch in f.study.lower())
                name = f"{IMG_PREFIX}{stem}-{slug}".replace("--", "-").strip("-")[:80] + ".svg"
                images[name] = svg(chart)
                out += [f"![{claim.key}: {f.study}](img/{name})", ""]
    out += ["## Not tested here", "", *[f"* {line}" for line in OUT_OF_SCOPE], ""]
    table = _md_table(pd.DataFrame(summary_rows))
    at = out.index("## Protocol")
    out[at:at] = ["## Verdicts at a glance", "", table, "", _not_reproduced(verdicts), ""]
    return "\n".join(out), images


def _not_reproduced(verdicts: dict[int, list[Finding]]) -> str:
    """One plain paragraph: which claims these studies support, and which they do not."""
    def said(kind: str) -> list[str]:
        return [f"{i} ({', '.join(f.study for f in found if f.verdict == kind)})"
                for i, found in verdicts.items() if any(f.verdict == kind for f in found)]

    untested = [str(i) for i, found in verdicts.items() if not found]
    parts = []
    for kind, text in ((SUPPORTED, "Supported"), (CONTRADICTED, "Contradicted"),
                       (UNRESOLVED, "Not resolved at this scale")):
        if items := said(kind):
            parts.append(f"{text}: claim {'; claim '.join(items)}.")
    if untested:
        parts.append(f"Not tested by these studies: claim {', '.join(untested)}.")
    return " ".join(parts)


def resolve(q: Queries, what: str) -> str:
    """A study id from its id, its exact name, or the name of a preset it was run from."""
    from approximant.app import presets
    from approximant.engine.specs import parse_study

    studies = q.studies()
    match = studies[(studies["study_id"] == what) | (studies["name"] == what)]
    if len(match) == 1:
        return str(match["study_id"].iloc[0])
    if what in presets.presets():
        sid = parse_study(presets.get(what).data()).study_id
        if sid in set(studies["study_id"]):
            return sid
    known = ", ".join(f"{r.study_id} ({r.name})" for r in studies.itertuples()) or "none"
    how = "is ambiguous" if len(match) > 1 else "matches no study (id, name or preset run)"
    raise ValueError(f"study {what!r} {how}; studies: {known}")


def write(db: Database, study_ids: list[str], out: Path, name: str = "report",
          command: str = "", measured: str = "") -> tuple[Path, list[Path]]:
    """``out/<name>.md`` and its figures ``out/img/repro-*.svg``; returns their paths."""
    text, images = render([load(db, sid) for sid in study_ids], command, measured)
    (out / "img").mkdir(parents=True, exist_ok=True)
    figures = []
    for file, content in images.items():
        figures.append(out / "img" / file)
        figures[-1].write_text(content)
    path = out / f"{name}.md"
    path.write_text(text)
    return path, figures


def zipped(db: Database, study_id: str) -> bytes:
    """One study's report as a zip (``report.md`` and ``img/*.svg``), for a download."""
    text, images = render([load(db, study_id)])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("report.md", text)
        for file, content in images.items():
            z.writestr(f"img/{file}", content)
    return buf.getvalue()
