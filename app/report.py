"""What a study page shows, without the page: the charts and tables for one view of a study.

The study page renders these with its widgets around them; ``approximant export`` writes the
same figures into a snapshot file. Keeping them here means a snapshot from the terminal and one
from the browser cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import altair as alt
import numpy as np
import pandas as pd

from approximant.app import charts, labels
from approximant.app.view_state import Setting, flag, metric_name, optional_float, unit_interval
from approximant.storage import analytics as an
from approximant.storage import stats
from approximant.storage.queries import Queries

BAND_LABELS = {"std": "± std", "sem": "± standard error", "t": "95 % CI (Student t)",
               "minmax": "min–max", "bootstrap": "bootstrap 95 % CI", "none": "no band"}

# Every setting of a view, as it appears in the URL (name, default, parser, allowed values).
SETTINGS = {
    "metric": Setting("val_loss", metric_name),
    "metric2": Setting("train_loss", metric_name),
    "x": Setting("step", str, tuple(an.X_AXES)),
    "group": Setting("config", str, an.GROUP_BYS),
    "center": Setting("mean", str, stats.CENTERS),
    "band": Setting("std", str, stats.BANDS),
    "smooth": Setting(0.0, unit_interval),
    "logy": Setting(False, flag),
    "xmin": Setting(None, optional_float),
    "xmax": Setting(None, optional_float),
    "measure": Setting("final", str, an.MEASURES),
    "baseline": Setting("", str),
    "target": Setting(None, optional_float),
    "within": Setting(10.0, float, bounds=(0.1, 1000.0)),
    "pause": Setting(False, flag),
}


@dataclass(frozen=True)
class View:
    """The settings a report depends on (``pause`` only steers the page); defaults as in
    ``SETTINGS``, which also parses them from a URL."""

    metric: str = SETTINGS["metric"].default
    metric2: str = SETTINGS["metric2"].default
    x: str = SETTINGS["x"].default
    group: str = SETTINGS["group"].default
    center: str = SETTINGS["center"].default
    band: str = SETTINGS["band"].default
    smooth: float = SETTINGS["smooth"].default
    logy: bool = SETTINGS["logy"].default
    xmin: float | None = SETTINGS["xmin"].default
    xmax: float | None = SETTINGS["xmax"].default
    measure: str = SETTINGS["measure"].default
    baseline: str = SETTINGS["baseline"].default
    target: float | None = SETTINGS["target"].default
    within: float = SETTINGS["within"].default

    @classmethod
    def from_query(cls, params: dict[str, str]) -> View:
        """From URL parameters; unknown names are ignored, bad values give the default."""
        return cls(**{f.name: SETTINGS[f.name].read(params.get(f.name)) for f in fields(cls)})


def title(metric: str) -> str:
    return labels.metric_title(metric)


class StudyData:
    """The queries a report needs, for one study. Each goes through ``query``, which the page
    overrides once to cache them all (app/views/study.py)."""

    def __init__(self, analytics: an.Analytics, study_id: str) -> None:
        self.a = analytics
        self.study_id = study_id

    def query(self, name: str, *args: Any) -> Any:
        """``Analytics.<name>([this study], *args)``."""
        return getattr(self.a, name)([self.study_id], *args)

    def runs(self) -> pd.DataFrame:
        return self.query("runs")

    def metric_names(self) -> list[str]:
        return self.query("metric_names")

    def curves(self, metric: str, x: str, points: int) -> pd.DataFrame:
        return self.query("run_curves", metric, x, points)

    def finals(self, metric: str) -> pd.DataFrame:
        return self.query("finals", metric)

    def reached(self, metric: str, target: float, x: str) -> pd.DataFrame:
        return self.query("time_to_target", metric, target, x)


def curve_chart(data: StudyData, runs: pd.DataFrame, v: View,
                metric: str) -> alt.TopLevelMixin | None:
    n_groups = an.group_key(runs, v.group).nunique()
    curves = data.curves(metric, v.x, an.grid_points(n_groups))
    if curves.empty:
        return None
    grouped = an.group_curves(curves, runs, v.group, v.center, v.band, v.smooth)
    names = group_names(runs, v)
    grouped["group"] = grouped["group"].map(names)
    domain = None
    if v.xmin is not None or v.xmax is not None:
        domain = (v.xmin if v.xmin is not None else float(grouped["x"].min()),
                  v.xmax if v.xmax is not None else float(grouped["x"].max()))
    return charts.band_chart(grouped, metric, an.X_TITLES[v.x], v.logy, BAND_LABELS[v.band],
                             v.smooth > 0, domain, groups=list(names.values()),
                             seeds=seed_curves(curves, runs, v, names))


def seed_curves(curves: pd.DataFrame, runs: pd.DataFrame, v: View,
                names: dict[str, str]) -> pd.DataFrame:
    """Each run's gridded curve (smoothed as the centre lines are) with its group's title and
    seed, for the lines a click on a group shows."""
    keyed = curves.merge(runs[["run_id", "seed"]].assign(group=an.group_key(runs, v.group)
                                                          .map(names)), on="run_id")
    return an.smooth_runs(keyed, v.smooth)[["run_id", "group", "seed", "x", "value"]]


def study_groups(runs: pd.DataFrame, v: View) -> list[str]:
    """Every group of the study in config order, whether or not it has reported yet."""
    return list(dict.fromkeys(an.group_key(runs, v.group)))


def group_names(runs: pd.DataFrame, v: View) -> dict[str, str]:
    """Each group's key → the title people read, in config order."""
    return labels.group_titles(study_groups(runs, v))


def compare_table(data: StudyData, runs: pd.DataFrame, v: View) -> pd.DataFrame | None:
    finals = data.finals(v.metric)
    if finals.empty:
        return None
    table = an.group_table(runs, finals, v.group, v.measure, v.baseline or None, band="t")
    if v.metric in labels.HIGHER_IS_BETTER and "p_improve" in table:
        # The Welch model gives P(group mean < baseline mean); for accuracy better is above.
        table["p_improve"] = 1 - table["p_improve"]
    names = group_names(runs, v)
    # Config order, as in every legend, so a row is found where its colour is expected.
    table = table.set_index("group").reindex(list(names)).reset_index()
    table["group"] = table["group"].map(names)
    table = table.rename(columns={"center": f"{v.measure} {title(v.metric).lower()} (mean)",
                                  "lo": "CI low",
                                  "hi": "CI high", "n": "finished seeds",
                                  "diverged": "diverged/failed", "diff": "Δ vs baseline",
                                  "diff_lo": "Δ CI low", "diff_hi": "Δ CI high",
                                  "note": "note",
                                  "p_improve": "P(better)", "p_value": "Welch p"})
    return table.drop(columns=["mean", "median", "std"], errors="ignore")


def forest_figure(table: pd.DataFrame, v: View, runs: pd.DataFrame) -> alt.TopLevelMixin | None:
    """The comparison table's Δ against the baseline with its interval, as a forest plot;
    None until some group has a difference to show."""
    cols = {"Δ vs baseline": "diff", "Δ CI low": "diff_lo", "Δ CI high": "diff_hi"}
    names = group_names(runs, v)
    baseline = names.get(v.baseline, v.baseline)
    if not set(cols) <= set(table.columns):
        return None
    if table.loc[table["group"] != baseline, "Δ vs baseline"].isna().all():
        return None  # nothing compared yet: a lone baseline at zero says nothing
    # The baseline is the dashed line at zero, not a row of its own.
    others = table[table["group"] != baseline].rename(columns=cols)
    # Every group in the colour domain, the baseline too, so each keeps its page-wide colour.
    return charts.forest_chart(others, baseline, f"{v.measure} {title(v.metric).lower()}",
                               list(names.values()),
                               higher_is_better=v.metric in labels.HIGHER_IS_BETTER)


def lr_figures(data: StudyData, runs: pd.DataFrame,
               v: View) -> tuple[alt.TopLevelMixin, pd.DataFrame] | None:
    finals = data.finals(v.metric)
    if finals.empty or not runs["hparams"].map(lambda h: "lr" in h).any():
        return None
    band = v.band if v.band != "none" else "std"
    points, tune = an.lr_sensitivity(runs, finals, v.measure, band, v.within / 100)
    points = points.assign(optimizer=points["optimizer"].map(labels.optimizer_title),
                           label=points["label"].map(labels.config_title))
    order = [labels.optimizer_title(o) for o in dict.fromkeys(runs["optimizer"])]
    chart = charts.lr_chart(points, f"{v.measure} {title(v.metric).lower()}", v.logy, order)
    tune = tune.assign(optimizer=tune["optimizer"].map(labels.optimizer_title))
    return chart, tune.rename(columns={"decades": "lr range within x % of best (decades)"})


def auto_target(data: StudyData, metric: str) -> float | None:
    """A default target that separates groups: the median of the runs' best values."""
    best = data.finals(metric)["best"].dropna()
    return float(np.median(best)) if not best.empty else None


def ttt_figures(data: StudyData, runs: pd.DataFrame, v: View,
                target: float) -> tuple[alt.TopLevelMixin, pd.DataFrame]:
    reached = data.reached(v.metric, target, v.x)
    names = group_names(runs, v)
    per_run = runs[["run_id", "seed", "status"]].assign(
        group=an.group_key(runs, v.group).map(names)).merge(reached, on="run_id")
    per_run["outcome"] = [an.ttt_outcome(s, r) for s, r in zip(per_run["status"],
                                                                per_run["reached"], strict=True)]
    chart = charts.ttt_chart(per_run, an.X_TITLES[v.x], list(names.values()))
    summary = an.ttt_summary(runs, reached, v.group)
    summary = summary.set_index("group").reindex(list(names)).reset_index()
    summary["group"] = summary["group"].map(names)
    summary["median"] = summary["median"].map(labels.fmt)
    return chart, summary.rename(columns={
        "median": f"median {an.X_TITLES[v.x]} (∞: not reached)", "not_yet": "still going"})


def diagnostic_names(metrics: list[str]) -> list[str]:
    """Study-level diagnostics (per-parameter ones, ``diag_x/param``, are left to the export)."""
    return [m for m in metrics if m.startswith("diag_") and "/" not in m]


def eta_chart(data: StudyData, runs: pd.DataFrame, v: View) -> alt.TopLevelMixin | None:
    """The optimal step η* from the diagnostics beside the learning rate actually used."""
    frames = []
    n_groups = an.group_key(runs, v.group).nunique()
    for metric, name in (("diag_eta_opt", "η* (optimal step)"), ("lr", "lr used")):
        curves = data.curves(metric, v.x, an.grid_points(2 * n_groups))
        if curves.empty:
            return None
        g = an.group_curves(curves, runs, v.group, "median", "none")
        frames.append(g.assign(group=g["group"].map(group_names(runs, v)) + " · " + name))
    # The two metrics sit on grids of their own (cell k is not the same step in both): no
    # hover rule pairing them by cell.
    return charts.band_chart(pd.concat(frames), "η* against the learning rate used",
                             an.X_TITLES[v.x], log_y=True, band_label="none", hover_rule=False)


def runs_table(status: pd.DataFrame, runs: pd.DataFrame, varying: list[str]) -> pd.DataFrame:
    """The runs with the grid axes that vary, status, progress, final metrics and what each
    cost: wall time of its current attempt (to the end, or to its last report while it runs)
    and milliseconds per step, so a slow optimizer is told apart from a slow queue."""
    table = status.assign(message=status["message"].fillna(""),
                          label=status["label"].map(labels.config_title))
    ended = table["finished_at"].fillna(table["updated_at"])
    wall = (ended - table["started_at"]).dt.total_seconds()
    # A queued run (a re-run waiting) still holds its last attempt's clock: nothing to show.
    table["wall_s"] = wall.where((wall >= 0) & (table["status"] != "queued"))
    table["ms_per_step"] = (1e3 * table["wall_s"] / table["last_step"].where(
        table["last_step"] > 0)).astype(float)
    if varying:
        hp = pd.DataFrame(runs["hparams"].tolist(), index=runs.index)[varying]
        table = table.merge(hp.assign(run_id=runs["run_id"]), on="run_id", how="left")
    return table[["label", *varying, "seed", "status", "progress", "last_step", "train_loss",
                  "val_loss", "val_accuracy", "wall_s", "ms_per_step", "worker", "attempt",
                  "message", "run_id"]]


def grid_axes(spec: dict) -> set[str]:
    return {k for o in spec["optimizers"] for k in o.get("grid", {})}


def build(data: StudyData, queries: Queries, spec: dict,
          v: View) -> tuple[dict[str, alt.TopLevelMixin], dict[str, pd.DataFrame]]:
    """Every chart and table of the study page for view ``v``, as the snapshot holds them."""
    runs = data.runs()
    out_charts: dict[str, alt.TopLevelMixin] = {}
    tables: dict[str, pd.DataFrame] = {}
    if (table := compare_table(data, runs, v)) is not None:
        tables["Comparison"] = table
        if (forest := forest_figure(table, v, runs)) is not None:
            out_charts["Δ against the baseline"] = forest
    for metric in dict.fromkeys((v.metric, v.metric2)):
        if (chart := curve_chart(data, runs, v, metric)) is not None:
            out_charts[title(metric)] = chart
    if (lr := lr_figures(data, runs, v)) is not None:
        out_charts["Learning-rate sensitivity"], tables["Tuneability"] = lr
    if (budget := budget_figures(data, runs, v)) is not None:
        out_charts["Tuning budget"], tables["Tuning budget"] = budget
    target = v.target if v.target is not None else auto_target(data, v.metric)
    if target is not None:
        chart, tables["Time to target"] = ttt_figures(data, runs, v, target)
        out_charts[f"Time to {title(v.metric).lower()} ≤ {target:.4g}"] = chart
    diag = diagnostic_names(data.metric_names())
    for metric in diag:
        if (chart := curve_chart(data, runs, v, metric)) is not None:
            out_charts[metric] = chart
    if "diag_eta_opt" in diag and (chart := eta_chart(data, runs, v)) is not None:
        out_charts["η* vs lr"] = chart
    varying = data.a.varying_hparams(runs, grid_axes(spec))
    tables["Runs"] = runs_table(queries.runs(data.study_id), runs, varying).drop(
        columns=["progress"])
    return out_charts, tables


def budget_data(data: StudyData, runs: pd.DataFrame,
                v: View) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """``analytics.tuning_budget`` for the view's metric and measure, families titled as
    people write them; None until some run has ended."""
    finals = data.finals(v.metric)
    if finals.empty or runs.empty:
        return None
    firsts = an.first_values(data.a, [data.study_id], v.metric)
    curves, summary = an.tuning_budget(runs, finals, firsts, v.measure,
                                       an.higher_is_better(v.metric))
    if curves.empty:
        return None
    names = labels.group_titles(list(dict.fromkeys(an.family_key(runs))))
    return (curves.assign(family=curves["family"].map(names)),
            summary.assign(family=summary["family"].map(names)))


def budget_table(summary: pd.DataFrame, measure_title: str) -> pd.DataFrame:
    """The tuning-budget summary with column names a person reads."""
    k = int(summary["k"].iloc[0])
    return summary.drop(columns=["optimizer", "k", "penalty"]).rename(columns={
        "family": "optimizer", "trials": "trials (lr × seed)", "diverged": "diverged/failed",
        "lrs": "lr grid points", "mean": "E[best] at k = 1 (mean trial)",
        "at_k": f"E[best] at k = {k}", "at_k_lo": "95 % low", "at_k_hi": "95 % high",
        "best": f"best single trial ({measure_title})", "rank": f"rank at k = {k}"})


def budget_figures(data: StudyData, runs: pd.DataFrame,
                   v: View) -> tuple[alt.TopLevelMixin, pd.DataFrame] | None:
    """The equal-budget tuning curve and its table, for the page and the snapshot."""
    computed = budget_data(data, runs, v)
    if computed is None:
        return None
    curves, summary = computed
    measure_title = f"{v.measure} {title(v.metric).lower()}"
    chart = charts.budget_chart(curves, measure_title, list(summary["family"]),
                                int(summary["k"].iloc[0]), v.logy)
    return chart, budget_table(summary, measure_title)
