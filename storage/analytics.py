"""Analytics over one study or a set of studies: seed-aggregated curves, final and best values,
time to a target, and the tables the statistics need.

Millions of metric rows are reduced in DuckDB (bucketed per run on a grid shared by the whole
selection); only per-run buckets — a few hundred per run — reach pandas, where seeds are
aggregated into bands by ``storage.stats``.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from approximant.storage import stats
from approximant.storage.db import Database
from approximant.storage.schema import run_order
from approximant.storage.stream import TERMINAL

# The x axes a person can choose, and the metric column behind each: ``tokens`` holds examples
# or tokens seen; ``wall_s`` is cumulative training time with evaluation excluded.
X_AXES = {"step": "step", "examples": "tokens", "wall": "wall_s"}
X_TITLES = {"step": "step", "examples": "examples / tokens seen", "wall": "training time (s)"}
GROUP_BYS = ("config", "optimizer")
MEASURES = ("final", "best")
# A run's final value is a result only once it finished; one that diverged or failed is a
# result too (a failure). Queued, running and cancelled runs are counted but not used.
DONE = ("finished",)
BROKEN = ("diverged", "failed")
CHART_ROWS = 2000  # a curve chart draws each row as a band, a line and a point: more costs
# the browser seconds on a 2-core machine and shows nothing a 1 000-pixel axis can resolve


def grid_points(n_groups: int, budget: int = CHART_ROWS) -> int:
    """Grid cells per run so that groups × cells stays within ``budget`` chart rows."""
    return int(min(200, max(5, budget // max(1, n_groups))))


def _check(name: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)} (got {value!r})")


def _in(ids: list[str]) -> str:
    return ", ".join("?" for _ in ids)


class Analytics:
    def __init__(self, db: Database) -> None:
        self.db = db

    def metric_names(self, study_ids: list[str]) -> list[str]:
        """Metrics recorded in the selection, by name."""
        if not study_ids:
            return []
        with self.db.read() as cur:
            rows = cur.execute(f"""
                SELECT DISTINCT m.name FROM metrics m
                JOIN runs r ON m.run_id = r.run_id AND m.attempt = r.attempt
                WHERE r.study_id IN ({_in(study_ids)}) ORDER BY 1
            """, study_ids).fetchall()
        return [r[0] for r in rows]

    def runs(self, study_ids: list[str]) -> pd.DataFrame:
        """Runs with their study, workload, status and hyper-parameters as columns."""
        with self.db.read() as cur:
            runs = cur.execute(f"""
                SELECT r.run_id, r.study_id, s.name AS study, s.workload, r.position, r.label,
                       r.optimizer, r.seed, r.status, r.attempt, r.last_step, r.steps,
                       r.message, r.hparams, r.spec
                FROM runs r JOIN studies s USING (study_id)
                WHERE r.study_id IN ({_in(study_ids)})
                ORDER BY s.created_at, r.study_id, {run_order('r')}
            """, study_ids).df() if study_ids else pd.DataFrame()
        if runs.empty:
            return runs
        runs["hparams"] = runs["hparams"].map(json.loads)
        runs["spec"] = runs["spec"].map(json.loads)
        return runs

    def varying_hparams(self, runs: pd.DataFrame, among: set[str] | None = None) -> list[str]:
        """Hyper-parameters whose value differs between the runs that have them (the columns
        worth showing), optionally only those in ``among`` (e.g. the study's grid axes)."""
        if runs.empty:
            return []
        wide = pd.DataFrame(runs["hparams"].tolist())
        return [c for c in wide.columns if wide[c].dropna().astype(str).nunique() > 1
                and c != "seed" and (among is None or c in among)]

    def run_curves(self, study_ids: list[str], metric: str, x: str = "step",
                   points: int = 200) -> pd.DataFrame:
        """Each run's ``metric`` (latest attempt) on a grid shared by every run of the selection.

        Grid cells are ``width`` wide and centred on multiples of it, ``width`` chosen so no run
        has more than ``points`` cells; a run's cell holds the mean of its values there and the
        mean x. Seeds therefore land in the same cells and can be aggregated pointwise.
        """
        _check("x", x, X_AXES)
        if not 2 <= points <= 5000:
            raise ValueError(f"points must be in [2, 5000] (got {points})")
        col = X_AXES[x]
        with self.db.read() as cur:
            return cur.execute(f"""
                WITH m AS (
                    SELECT m.run_id, m.{col}::DOUBLE AS x, m.value
                    FROM metrics m JOIN runs r ON m.run_id = r.run_id AND m.attempt = r.attempt
                    WHERE r.study_id IN ({_in(study_ids)}) AND m.name = ?
                ), per_run AS (
                    SELECT max(x) AS hi, count(*) AS n FROM m GROUP BY run_id
                ), grid AS (
                    SELECT greatest(max(hi), 1e-12) / greatest(1, least(?, max(n) - 1)) AS width
                    FROM per_run
                )
                SELECT run_id, round(x / width)::BIGINT AS cell, avg(x) AS x,
                       avg(value) AS value
                FROM m, grid
                GROUP BY run_id, cell
                ORDER BY run_id, cell
            """, [*study_ids, metric, points]).df()

    def finals(self, study_ids: list[str], metric: str) -> pd.DataFrame:
        """Per run: the last value of ``metric`` (``final``), its minimum (``best``) and the step
        and x of the last row. NaN/inf values (a diverging run) are kept, not filtered."""
        with self.db.read() as cur:
            return cur.execute(f"""
                SELECT m.run_id, arg_max(m.value, m.step) AS final,
                       min(m.value) FILTER (WHERE isfinite(m.value)) AS best,
                       max(m.step) AS last_step, max(m.tokens) AS last_tokens,
                       max(m.wall_s) AS last_wall
                FROM metrics m JOIN runs r ON m.run_id = r.run_id AND m.attempt = r.attempt
                WHERE r.study_id IN ({_in(study_ids)}) AND m.name = ?
                GROUP BY m.run_id
            """, [*study_ids, metric]).df()

    def time_to_target(self, study_ids: list[str], metric: str, target: float,
                       x: str = "step") -> pd.DataFrame:
        """Per run: the first x at which ``metric`` ≤ ``target``; ``inf`` for a run that never
        got there (censored — it stays in the table)."""
        _check("x", x, X_AXES)
        col = X_AXES[x]
        with self.db.read() as cur:
            out = cur.execute(f"""
                SELECT r.run_id, min(m.{col}::DOUBLE) FILTER (WHERE m.value <= ?) AS reached
                FROM runs r LEFT JOIN metrics m
                     ON m.run_id = r.run_id AND m.attempt = r.attempt AND m.name = ?
                WHERE r.study_id IN ({_in(study_ids)})
                GROUP BY r.run_id
            """, [target, metric, *study_ids]).df()
        out["reached"] = out["reached"].astype(float).fillna(math.inf)
        return out


def group_key(runs: pd.DataFrame, group_by: str) -> pd.Series:
    """The label a run is aggregated under: its optimizer config, or its optimizer."""
    _check("group_by", group_by, GROUP_BYS)
    return runs["label"] if group_by == "config" else runs["optimizer"]


def smooth_runs(curves: pd.DataFrame, smoothing: float, into: str = "value") -> pd.DataFrame:
    """``curves`` (``run_id, cell, value``…) with each run's values smoothed by the debiased
    EMA in column ``into``, in run and cell order; unsmoothed values when ``smoothing`` is 0."""
    if not smoothing or curves.empty:
        return curves.assign(**{into: curves["value"]})
    out = curves.sort_values(["run_id", "cell"])
    return out.assign(**{into: np.concatenate([
        stats.ema(g.to_numpy(dtype=float), smoothing)
        for _, g in out.groupby("run_id", sort=False)["value"]])})


def group_curves(curves: pd.DataFrame, runs: pd.DataFrame, group_by: str = "config",
                 center: str = "mean", band: str = "std", smoothing: float = 0.0) -> pd.DataFrame:
    """Seeds of a group aggregated per grid cell: ``group, cell, x, center, lo, hi, n`` and
    ``raw`` (the centre before smoothing, for a faint line under the smoothed one).

    Smoothing is a debiased EMA applied to each run's gridded curve before aggregation.
    """
    cols = ["group", "cell", "x", "center", "lo", "hi", "n", "raw"]
    if curves.empty:
        return pd.DataFrame(columns=cols)
    keyed = curves.merge(runs[["run_id"]].assign(group=group_key(runs, group_by)), on="run_id")
    keyed = smooth_runs(keyed, smoothing, into="smooth")
    out = stats.band_frame(keyed, ["group", "cell"], value="smooth", center=center, band=band)
    if smoothing:
        raw = stats.band_frame(keyed, ["group", "cell"], value="value", center=center,
                               band="none")
        out = out.merge(raw[["group", "cell", "center"]].rename(columns={"center": "raw"}),
                        on=["group", "cell"])
    else:
        out["raw"] = out["center"]  # unsmoothed: the raw centre is the centre
    xs = keyed.groupby(["group", "cell"], observed=True)["x"].mean().rename("x")
    return out.merge(xs, on=["group", "cell"])[cols]


COMPARISON = ["diff", "diff_lo", "diff_hi", "p_improve", "p_value"]


def group_table(runs: pd.DataFrame, finals: pd.DataFrame, group_by: str = "config",
                measure: str = "final", baseline: str | None = None,
                band: str = "t", level: float = 0.95) -> pd.DataFrame:
    """One row per group: ``runs``, ``diverged`` (diverged or failed), ``unfinished``, ``n``
    (finished seeds with a finite value), ``center`` (their mean) with the ``band`` as ``lo``/
    ``hi`` and, against ``baseline``, the columns of ``COMPARISON`` from ``stats.welch``:
    ``diff`` (Δ of means), its interval ``diff_lo``/``diff_hi``, ``p_improve`` (P(better)) and
    ``p_value`` (Welch, two-sided). Last, ``note``: text, never missing.

    Counts are ints; every other number is a float, NaN where it cannot be computed or
    should not be shown: a band or a test needs ``stats.MIN_SEEDS`` finished seeds on each
    side it uses (the ``note`` says so), and the baseline's own row has Δ = 0 and nothing else.
    """
    _check("measure", measure, MEASURES)
    per_run = runs[["run_id", "status"]].assign(group=group_key(runs, group_by)).merge(
        finals[["run_id", measure]], on="run_id", how="left")
    per_run["bad"] = per_run["status"].isin(BROKEN)
    per_run["open"] = ~per_run["status"].isin(DONE + BROKEN)
    values = per_run[per_run["status"].isin(DONE)].rename(columns={measure: "value"})
    summary = stats.band_frame(values, ["group"], band=band, level=level)
    counts = per_run.groupby("group").agg(runs=("run_id", "count"), diverged=("bad", "sum"),
                                          unfinished=("open", "sum"))
    table = counts.join(summary.set_index("group"), how="left").reset_index()
    table["n"] = table["n"].fillna(0).astype(int)
    few = table["n"] < stats.MIN_SEEDS
    table.loc[few, ["lo", "hi"]] = math.nan
    note = pd.Series(np.where(table["n"] == 0, "no finished seeds",
                              np.where(few, f"too few seeds (need {stats.MIN_SEEDS})", "")),
                     index=table.index)
    cols = ["group", "runs", "diverged", "unfinished", "n", "center", "lo", "hi"]
    if baseline is not None and baseline in set(table["group"]):
        base = table.loc[table["group"] == baseline].iloc[0]
        w = stats.welch(table["n"], table["mean"], table["std"], base["n"], base["mean"],
                        base["std"], level)
        is_base = table["group"] == baseline
        shown = ~few & ~is_base & (base["n"] >= stats.MIN_SEEDS)
        table["diff"] = w["diff"]  # the baseline's own row: x − x = 0
        for col in COMPARISON[1:]:
            table[col] = np.where(shown, w[col], math.nan)
        note = note.mask(is_base, _join(note, "baseline"))
        if base["n"] < stats.MIN_SEEDS:
            note = note.mask(~is_base, _join(note, "baseline has too few seeds"))
        cols += COMPARISON
    return table.assign(note=note)[[*cols, "note"]]


def _join(notes: pd.Series, text: str) -> pd.Series:
    return notes.map(lambda s: f"{s}; {text}" if s else text)


def lr_sensitivity(runs: pd.DataFrame, finals: pd.DataFrame, measure: str = "final",
                   band: str = "std", within: float = 0.1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Measure against learning rate per optimizer (seed band at each lr), and each optimizer's
    tuneability: decades of lr within ``within`` of its best (other grid axes: their best)."""
    _check("measure", measure, MEASURES)
    lr = runs["hparams"].map(lambda h: h.get("lr"))
    per_run = runs[["run_id", "optimizer", "label", "status"]].assign(lr=lr).merge(
        finals[["run_id", measure]], on="run_id", how="left").rename(columns={measure: "value"})
    per_run = per_run[per_run["lr"].notna() & per_run["status"].isin(DONE + BROKEN)]
    per_run.loc[per_run["status"].isin(BROKEN), "value"] = math.inf
    points = stats.band_frame(per_run, ["optimizer", "label", "lr"], band=band)
    # A diverged lr must show as a failure, not vanish: count it and give it an infinite centre.
    total = per_run.groupby(["optimizer", "label", "lr"]).size().rename("runs")
    points = total.reset_index().merge(points, on=["optimizer", "label", "lr"], how="left")
    points["n"] = points["n"].fillna(0).astype(int)
    points["center"] = points["center"].fillna(math.inf)
    # The config without its lr: the points a sensitivity line connects.
    points["family"] = points["label"].map(_without_lr)
    # For tuneability an lr counts only if every seed of it trained: a seed that diverged
    # makes it unsafe, however good the survivors' mean.
    points["safe"] = points["center"].where(points["n"] == points["runs"], math.inf)
    best_per_lr = points.groupby(["optimizer", "lr"])["safe"].min().rename("center") \
        .reset_index()
    if best_per_lr.empty:  # no run has finished yet: groupby.apply would give a bare frame
        return points, pd.DataFrame({"optimizer": pd.Series(dtype=str),
                                     "decades": pd.Series(dtype=float)})
    tune = best_per_lr.groupby("optimizer").apply(
        lambda g: stats.tuneability(g["lr"], g["center"], within), include_groups=False
    ).rename("decades").reset_index()
    return points, tune


def _without_lr(label: str) -> str:
    name, _, inner = label.partition("[")
    rest = [kv for kv in inner.rstrip("]").split(",") if kv and not kv.startswith("lr=")]
    return f"{name}[{','.join(rest)}]" if rest else name


def ttt_outcome(status: str, reached: float) -> str:
    """How a run stands against the target: reached, never (it ended without), or not yet."""
    if math.isfinite(reached):
        return "reached"
    return "never" if status in TERMINAL else "not yet"


def ttt_summary(runs: pd.DataFrame, reached: pd.DataFrame,
                group_by: str = "config") -> pd.DataFrame:
    """Per group: runs, how many reached the target, how many are still going without having
    reached it, and the median time where every run not there (yet) counts as ∞."""
    per_run = runs[["run_id", "status"]].assign(group=group_key(runs, group_by)).merge(
        reached, on="run_id")
    per_run["pending"] = [ttt_outcome(s, r) == "not yet"
                          for s, r in zip(per_run["status"], per_run["reached"], strict=True)]
    return per_run.groupby("group").agg(
        runs=("run_id", "count"),
        reached=("reached", lambda s: int(np.isfinite(s).sum())),
        not_yet=("pending", "sum"),
        median=("reached", stats.censored_median),
    ).reset_index()


def profile_costs(runs: pd.DataFrame, finals: pd.DataFrame, reached: pd.DataFrame | None = None,
                  measure: str = "final") -> pd.DataFrame:
    """Each optimizer's cost on each task (a study, by id), for performance profiles: its best
    config's median over seeds of the final/best metric, or — with ``reached`` — of the time
    to target. Only runs that ended count; cancelled and unfinished runs are left out.

    A diverged or failed run costs ``inf``, so a config that only sometimes diverges pays for it
    in the median rather than by being dropped.
    """
    _check("measure", measure, MEASURES)
    per_run = runs[["run_id", "study_id", "optimizer", "label", "status"]]
    if reached is not None:
        per_run = per_run.merge(reached.rename(columns={"reached": "cost"}), on="run_id")
    else:
        per_run = per_run.merge(finals[["run_id", measure]].rename(columns={measure: "cost"}),
                                on="run_id", how="left")
    per_run = per_run[per_run["status"].isin(DONE + BROKEN)].copy()
    per_run["cost"] = per_run["cost"].astype(float).fillna(math.inf)
    per_run.loc[per_run["status"].isin(BROKEN), "cost"] = math.inf
    # Two studies may share a name and a workload; each is its own task.
    per_run["task"] = per_run["study_id"]
    per_config = per_run.groupby(["task", "optimizer", "label"])["cost"].agg(
        stats.censored_median).reset_index()
    return (per_config.groupby(["task", "optimizer"])["cost"].min().reset_index()
            .rename(columns={"optimizer": "solver"}))


def first_values(a: Analytics, study_ids: list[str], metric: str) -> pd.DataFrame:
    """Per run (latest attempt): ``first``, the value of ``metric`` at its first recorded step
    (for an evaluated metric, the untrained model at step 0)."""
    with a.db.read() as cur:
        return cur.execute(f"""
            SELECT m.run_id, arg_min(m.value, m.step) AS first
            FROM metrics m JOIN runs r ON m.run_id = r.run_id AND m.attempt = r.attempt
            WHERE r.study_id IN ({_in(study_ids)}) AND m.name = ?
            GROUP BY m.run_id
        """, [*study_ids, metric]).df()


def family_key(runs: pd.DataFrame) -> pd.Series:
    """A run's config without its learning rate (``freon[c=0.25]``): the set whose lr grid a
    tuning budget is spent on."""
    return runs["label"].map(_without_lr)


def higher_is_better(metric: str) -> bool:
    """Accuracies are maximised; every other metric here (losses, times) is minimised."""
    return "accuracy" in metric


BUDGET_COLUMNS = ["family", "optimizer", "k", "expected", "lo", "hi", "trials"]


def budget_trials(runs: pd.DataFrame, finals: pd.DataFrame, firsts: pd.DataFrame,
                  measure: str = "final", higher: bool = False) -> tuple[pd.DataFrame, float]:
    """The trials of the tuning protocol: one row per run that ended (``run_id, optimizer,
    family, lr, status, value, failed``), and what a failed trial is worth.

    A trial is one run, one (lr, seed) pair: tuning with a budget of k trains k runs, and seed
    noise is part of what a tuner sees. A diverged or failed run, or one whose value is not
    finite, is worth the *untrained* model: the worst of the study's ``firsts`` (each run's
    first value, ``first_values``), so a grid that diverges at high lr pays for it at small k
    without making every expectation infinite. Where no first value is known the worst finite
    trial stands in.
    """
    _check("measure", measure, MEASURES)
    per_run = runs[["run_id", "optimizer", "status"]].assign(
        family=family_key(runs), lr=runs["hparams"].map(lambda h: h.get("lr")))
    per_run = per_run[per_run["status"].isin(DONE + BROKEN)].merge(
        finals[["run_id", measure]], on="run_id", how="left").rename(columns={measure: "value"})
    value = per_run["value"].astype(float)
    failed = per_run["status"].isin(BROKEN) | ~np.isfinite(value)
    known = firsts["first"].astype(float) if not firsts.empty else pd.Series(dtype=float)
    known = known[np.isfinite(known)]
    pool = known if not known.empty else value[~failed]
    if pool.empty:
        penalty = -math.inf if higher else math.inf
    else:
        penalty = float(pool.min() if higher else pool.max())
    return per_run.assign(value=value.where(~failed, penalty), failed=failed), penalty


def tuning_budget(runs: pd.DataFrame, finals: pd.DataFrame, firsts: pd.DataFrame,
                  measure: str = "final", higher: bool = False, level: float = 0.95,
                  n_boot: int = stats.BOOT_SAMPLES,
                  seed: int = stats.BOOT_SEED) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The equal-budget tuning protocol: per config family (a config without its lr), the
    expected best ``measure`` after k random trials of its lr grid, k = 1…(its trials), with a
    bootstrap band (``stats.best_of_k_band``; Dodge et al. 2019's expected validation
    performance). Trials and what a failed one is worth: ``budget_trials``.

    Returns ``curves`` (``BUDGET_COLUMNS``, one row per family and k) and ``summary``, one row
    per family in config order: ``family, optimizer, trials, diverged, lrs`` (grid points),
    ``mean`` (E at k = 1), ``at_k`` and ``at_k_lo``/``at_k_hi`` (E and its band at the common
    budget ``k`` = the fewest trials any family has, so every family is read inside its own
    data), ``best`` (the single best trial), ``rank`` (1 = best at the common budget), and
    ``penalty`` (what a failed trial counted as).
    """
    empty = (pd.DataFrame(columns=BUDGET_COLUMNS), pd.DataFrame(columns=[
        "family", "optimizer", "trials", "diverged", "lrs", "mean", "k", "at_k", "at_k_lo",
        "at_k_hi", "best", "rank", "penalty"]))
    per_run, penalty = budget_trials(runs, finals, firsts, measure, higher)
    if per_run.empty:
        return empty
    order = list(dict.fromkeys(per_run["family"]))
    common = int(per_run.groupby("family").size().min())
    curves, rows = [], []
    for family in order:
        g = per_run[per_run["family"] == family]
        mean, lo, hi = stats.best_of_k_band(g["value"].to_numpy(), None, not higher, level,
                                            n_boot, seed)
        curves.append(pd.DataFrame({"family": family, "optimizer": g["optimizer"].iloc[0],
                                    "k": np.arange(1, len(g) + 1), "expected": mean,
                                    "lo": lo, "hi": hi, "trials": len(g)}))
        rows.append({"family": family, "optimizer": g["optimizer"].iloc[0], "trials": len(g),
                     "diverged": int(g["failed"].sum()), "lrs": int(g["lr"].nunique()),
                     "mean": float(mean[0]), "k": common, "at_k": float(mean[common - 1]),
                     "at_k_lo": float(lo[common - 1]), "at_k_hi": float(hi[common - 1]),
                     "best": float(g["value"].max() if higher else g["value"].min()),
                     "penalty": penalty})
    summary = pd.DataFrame(rows)
    summary["rank"] = summary["at_k"].rank(ascending=not higher, method="min").astype(int)
    return pd.concat(curves, ignore_index=True)[BUDGET_COLUMNS], summary[empty[1].columns]


def metric_series(a: Analytics, run_ids: list[str], metric: str) -> pd.DataFrame:
    """Every row of ``metric`` for ``run_ids`` (latest attempts): ``run_id, step, value``, by
    step. For a handful of runs (a figure of each one's trajectory), not a whole study."""
    if not run_ids:
        return pd.DataFrame({"run_id": pd.Series(dtype=str), "step": pd.Series(dtype=int),
                             "value": pd.Series(dtype=float)})
    with a.db.read() as cur:
        return cur.execute(f"""
            SELECT m.run_id, m.step, m.value
            FROM metrics m JOIN runs r ON m.run_id = r.run_id AND m.attempt = r.attempt
            WHERE m.run_id IN ({_in(run_ids)}) AND m.name = ?
            ORDER BY m.run_id, m.step
        """, [*run_ids, metric]).df()
