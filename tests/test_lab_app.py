"""The Approximation lab page in Streamlit's AppTest, over a real broker and DuckDB file.

The seeded job is measured by the real engine and published by the worker's own publisher,
so the page reads exactly what a worker would have sent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from approximant.app import lab_charts
from approximant.app.charts import PALETTE
from approximant.app.text import shown
from approximant.engine.approx.bench import run_lab
from approximant.engine.approx.spec import parse_lab
from approximant.storage.lab import LabQueries
from approximant.storage.stream import EventStream, connect, now
from approximant.tasks.lab import LabPublisher

MAIN = str(Path(__file__).resolve().parent.parent / "app" / "main.py")
# The seeded job's methods as the page names them, in the job's order.
NAMES = ["Newton–Schulz (Keller ×5)", "QDWH", "SVD polar"]
SPEC = parse_lab({
    "name": "seeded lab",
    "methods": [{"map": "newton_schulz", "options": {"schedule": "keller", "steps": 5}},
                {"map": "qdwh"}, {"map": "svd_polar"}],
    "spectra": ["loguniform:1e-3"], "shapes": ["32x24", "16x40"], "repeats": 1,
})


@pytest.fixture
def seeded(services):
    stream = EventStream(connect(services.broker_url))
    stream.append([{"type": "lab_job", "job_id": SPEC.job_id,
                    "spec": SPEC.model_dump(mode="json"), "n_cases": 2, "ts": now()}])
    pub = LabPublisher(stream, SPEC.job_id, 1, 2, worker="w")
    pub.flush("running")
    summary = run_lab(SPEC, pub.case)
    pub.flush("finished", None, {**summary.info, "wall_s": summary.wall_s, "failures": []})
    services.recorder.drain()
    return SPEC.job_id


def page(job: str | None = None) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=60)
    if job:
        at.query_params["job"] = job
    at.run()
    return at.switch_page("screens/lab.py").run()


def test_lab_page_without_jobs_says_how_to_start(services):
    at = page()
    assert not at.exception
    assert at.title[0].value == "Approximation lab"
    assert "No lab jobs yet" in at.info[0].value


def test_lab_page_shows_every_chart_and_the_tolerance_table(seeded):
    at = page(seeded)
    assert not at.exception
    assert at.subheader[0].value == "seeded lab"
    charts = at.get("vega_lite_chart")
    assert len(charts) == 6  # transfer, error vs iteration/flops/matmuls, Pareto, spectrum
    assert at.selectbox(key="lab.case").options == ["loguniform:1e-3@16x40",
                                                    "loguniform:1e-3@32x24"]
    final = at.dataframe[0].value
    assert list(final["method"]) == ["newton_schulz[schedule=keller,steps=5]", "qdwh",
                                     "svd_polar"]
    assert list(final["iteration"])[0] == 5 and (final["peak_mib"] > 0).all()
    assert (final["err_spec"].iloc[1:] < 1e-4).all()  # QDWH and the SVD reach fp32 accuracy
    table = at.dataframe[1].value
    assert set(table["method"]) == {"newton_schulz[schedule=keller,steps=5]", "qdwh",
                                    "svd_polar"}
    row = table[table["method"] == "qdwh"].iloc[0]
    assert 1 <= row["iterations"] <= 6
    keller = table[table["method"].str.startswith("newton")]
    assert keller["iterations"].isna().all()  # Keller ×5 never reaches 1e-3: not convergent
    labels = [b.label for b in at.get("download_button")]
    assert labels.count("SVG") == 6 and labels.count("PNG") == 6 and labels.count("CSV") == 9
    at.selectbox(key="lab.tol").set_value(1e-1).run()
    table = at.dataframe[1].value
    assert table.set_index("method").loc["qdwh", "iterations"].min() >= 1
    at.toggle(key="lab.final").set_value(True).run()
    assert not at.exception


def test_the_form_names_every_bad_field_and_disables_run(services):
    at = page()
    at.text_area(key="lab.methods.polar").input("newton_schulz[steps=0]\nqdwh[l0=").run()
    assert "methods line 2: missing ']'" in shown(at.error[0].value)
    assert at.button(key="lab.run").disabled
    at.text_area(key="lab.methods.polar").input("newton_schulz[steps=0]\nnope").run()
    at.text_input(key="lab.spectra_more").input("uniform:3").run()
    err = shown(at.error[0].value)
    assert "spectra: spectrum 'uniform:3': unknown kind 'uniform'" in err
    at.text_input(key="lab.spectra_more").input("").run()
    err = shown(at.error[0].value)
    assert "methods.0.options.steps: must be an integer in [1, 100] for newton_schulz (got 0)" \
        in err
    assert "methods.1.map: unknown 'nope'" in err
    assert at.button(key="lab.run").disabled


def test_the_form_submits_a_job_that_the_recorder_registers(services):
    at = page()
    at.text_area(key="lab.methods.polar").input("newton_schulz[schedule=cans,steps=5]\nqdwh"
                                                ).run()
    at.multiselect(key="lab.spectra").set_value(["gaussian"]).run()
    at.multiselect(key="lab.shapes").set_value(["97x131"]).run()
    at.multiselect(key="lab.dtypes").set_value(["float32", "bfloat16"]).run()
    assert any("2 methods × 1 test matrices × 2 dtypes" in i.value for i in at.info)
    at.button(key="lab.run").click().run()
    assert not at.exception
    services.recorder.drain()
    jobs = LabQueries(services.db).jobs()
    assert list(jobs["status"]) == ["queued"] and list(jobs["n_cases"]) == [1]
    spec = LabQueries(services.db).job(jobs["job_id"][0])["spec"]
    assert [m["map"] for m in spec["methods"]] == ["newton_schulz", "qdwh"]
    assert spec["dtypes"] == ["float32", "bfloat16"] and spec["shapes"] == ["97x131"]


def test_the_results_follow_the_job_just_submitted(services):
    at = page()
    at.multiselect(key="lab.spectra").set_value(["gaussian"]).run()
    at.multiselect(key="lab.shapes").set_value(["97x131"]).run()
    shown_jobs = []
    for methods in ("newton_schulz", "qdwh"):
        at.text_area(key="lab.methods.polar").input(methods).run()
        at.button(key="lab.run").click().run()
        assert not at.exception
        shown_jobs.append(at.selectbox(key="lab.job").value)
    jobs = LabQueries(services.db).jobs()
    first, second = (LabQueries(services.db).job(j)["spec"]["methods"][0]["map"]
                     for j in shown_jobs)
    assert len(jobs) == 2 and (first, second) == ("newton_schulz", "qdwh")


def test_power_target_offers_the_power_methods(services):
    at = page()
    at.selectbox(key="lab.target").set_value("power").run()
    assert at.text_area(key="lab.methods.power").value.splitlines() == [
        "freon", "gram_eigh", "spectral_power"]
    assert not at.error  # c defaults to 2/3, which Freon supports


def test_charts_export_to_svg_and_png_offline(seeded, services):
    lq = LabQueries(services.db)
    res = lq.results(seeded)
    named = res.assign(name=res["method"])
    chart = lab_charts.pareto_chart(named, list(dict.fromkeys(res["method"]))).properties(
        width=400)
    assert lab_charts.chart_svg(chart).startswith(b"<svg")
    assert lab_charts.chart_png(chart)[:8] == b"\x89PNG\r\n\x1a\n"
    front = lab_charts.pareto_front(res)
    # No point off the front is both faster and more accurate than a point on it.
    for _, p in front.iterrows():
        better = res[(res["dtype"] == p["dtype"]) & (res["wall_median_s"] < p["wall_median_s"])
                     & (res["err_spec"] < p["err_spec"])]
        assert better.empty
    import io

    assert pd.read_parquet(io.BytesIO(lab_charts.to_parquet(res))).shape == res.shape


def test_new_study_form_offers_capture_steps_and_validates_them(services):
    at = AppTest.from_file(MAIN, default_timeout=60).run()
    at.switch_page("screens/new_study.py").run()
    at.number_input(key="steps").set_value(50).run()
    at.text_input(key="capture_steps").input("10, x").run()
    # The form names the field as it labels it (app.labels.FIELD_TITLES).
    assert "Capture steps: 'x' is not a valid int" in shown(at.error[0].value)
    at.text_input(key="capture_steps").input("10, 80").run()
    assert ("Capture steps: every step must be in [1, steps = 50] (got [80])"
            in shown(at.error[0].value))
    at.text_input(key="capture_steps").input("10, 40").run()
    assert not at.error
    assert "capture_steps = [10, 40]" in at.code[0].value


def test_long_transfer_curves_are_thinned_below_altairs_row_limit():
    from approximant.app.views.lab import MAX_POINTS, _thin

    n_curves, points = 160, 64  # e.g. 8 methods × ~7 iterations × 3 dtypes
    df = pd.DataFrame([(f"m{c % 8}", f"d{c % 3}", c, i, 10.0 ** (-i / 8), 1.0)
                       for c in range(n_curves) for i in range(points)],
                      columns=["method", "dtype", "iteration", "idx", "x", "y"])
    thin = _thin(df)
    assert len(thin) <= MAX_POINTS < len(df)
    ends = thin.groupby(["method", "dtype", "iteration"])["idx"].agg(["min", "max"])
    assert len(ends) == n_curves and (ends["min"] == 0).all() and (ends["max"] == 63).all()
    assert _thin(df.head(100)) is not None and len(_thin(df.head(100))) == 100


# -- charts and tables a person can read (issue #12) -------------------------------------------

def _encodings(node: Any, channel: str) -> list[dict]:
    """Every ``channel`` encoding in a Vega-Lite spec, its layers included."""
    if isinstance(node, list):
        return [e for item in node for e in _encodings(item, channel)]
    if not isinstance(node, dict):
        return []
    here = node.get("encoding", {})
    found = [here[channel]] if isinstance(here, dict) and channel in here else []
    return found + [e for k, v in node.items() if k != "encoding" for e in _encodings(v, channel)]


def _title(spec: dict) -> str:
    title = spec.get("title", "")
    return title.get("text", "") if isinstance(title, dict) else title


def test_every_chart_gives_each_method_one_fixed_colour_at_full_width(seeded):
    at = page(seeded)
    specs = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    assert len(specs) == 6
    legends = 0
    for spec in specs:
        colours = [c for c in _encodings(spec, "color") if c.get("field") == "name"]
        assert colours, _title(spec)
        for c in colours:
            # The job's methods in its order, over the colour-blind-safe palette, whatever
            # the chart happens to show: a method has the same colour on every chart.
            assert c["scale"] == {"domain": NAMES, "range": PALETTE}, _title(spec)
            if c.get("legend") is not None:
                legends += 1
                assert c["legend"]["orient"] == "top", _title(spec)
        # One chart a row across the page; the height is the plot's, not legend + plot.
        assert spec["width"] == "container" and spec["autosize"]["type"] == "fit-x"
    assert legends >= 5  # every chart but the spectrum strips (labelled on their axis)
    titles = [_title(s) for s in specs]
    assert titles == ["Transfer function φ(σ)", "Error vs iteration",
                      "Error vs floating-point operations (analytic count)",
                      "Error vs matrix multiplications", "Error vs time per call",
                      "Output singular values (final iteration)"]
    for spec in specs[1:5]:
        assert [e["title"] for e in _encodings(spec, "y")][0] == \
            "relative error ‖·‖₂ (fp64 SVD reference)"
    time_axis = [e for e in _encodings(specs[4], "x") if "title" in e][0]
    assert time_axis["title"] == "time per call (ms, median of repeats)"
    flops_axis = _encodings(specs[2], "x")[0]["axis"]
    # 10M, not 10,000,000 (which overlapped its neighbours).
    assert "~s" in flops_axis.get("format", "") + flops_axis.get("labelExpr", "")
    assert flops_axis["labelOverlap"] == "greedy"


def test_log_axes_label_what_fits():
    wide = lab_charts.log_axis(pd.Series([1e-3, 1.2]), 700).to_dict()
    assert wide["labelExpr"].startswith("indexof([1, 2, 5],")  # 90 px or more a decade
    tall = lab_charts.log_axis(pd.Series([1e-16, 1.0]), 300).to_dict()
    assert tall["labelExpr"].startswith("indexof([1],")  # powers of ten only
    narrow = lab_charts.log_axis(pd.Series([0.57, 1.2]), 700).to_dict()
    assert "labelExpr" not in narrow and narrow["format"] == "~g"  # Vega's 0.6, 0.7, …
    for axis in (wide, tall, narrow):
        assert axis["labelOverlap"] == "greedy"


def test_a_method_keeps_its_colour_when_others_have_no_rows(seeded, services):
    res = LabQueries(services.db).results(seeded)
    names = lab_charts.method_names(LabQueries(services.db).job(seeded)["spec"])
    only_qdwh = res[res["method"] == "qdwh"].assign(name="QDWH")
    spec = lab_charts.error_chart(only_qdwh, "iteration", list(names.values())).to_dict()
    scale = _encodings(spec, "color")[0]["scale"]
    assert scale["domain"] == NAMES
    assert scale["range"][scale["domain"].index("QDWH")] == PALETTE[1]


def test_method_names_are_written_as_people_write_them():
    from approximant.engine.approx.spec import POLAR_METHODS, POWER_METHODS

    polar = lab_charts.method_names({"c": 0.5, "methods": list(POLAR_METHODS)})
    assert list(polar.values()) == [
        "Newton–Schulz (Keller ×5)", "Newton–Schulz (Polar Express ×8)",
        "Newton–Schulz (CANS ×5)", "Newton–Schulz (classical ×12)", "QDWH (≤ 6 iterations)",
        "Freon (c = ½)", "Gram eigh (c = ½)", "SVD polar"]
    power = lab_charts.method_names({"c": 2 / 3, "methods": list(POWER_METHODS)})
    assert list(power.values()) == ["Freon (c = ⅔)", "Gram eigh (c = ⅔)", "SVD power (c = ⅔)"]
    # Freon and every Newton–Schulz get different colours of the palette.
    domain = list(polar.values())
    freon = PALETTE[domain.index("Freon (c = ½)")]
    assert all(PALETTE[i] != freon for i, n in enumerate(domain) if n.startswith("Newton"))
    # The same method written twice stays two entries.
    twice = lab_charts.method_names({"c": 0.5, "methods": [
        {"map": "newton_schulz", "options": {}},
        {"map": "newton_schulz", "options": {"schedule": "keller", "steps": 5}}]})
    assert len(set(twice.values())) == 2
    assert lab_charts.method_name("freon", {"max_steps": 8, "delta": 1e-3}, 0.75) == \
        "Freon (c = ¾, ≤ 8 steps, δ = 0.001)"
    assert [lab_charts.fraction_text(c) for c in (0.3, 0.2, 5 / 12, 1.0, 0.0, 0.25)] == [
        "0.3", "0.2", "0.4167", "1", "0", "¼"]


def test_no_table_cell_shows_none(seeded):
    at = page(seeded)
    assert len(at.dataframe) == 3
    tables = dict(zip(["final", "tol", "all"], at.dataframe, strict=True))
    for key, t in tables.items():
        # Streamlit prints "None" in a missing cell unless told otherwise.
        assert t.proto.placeholder == "–", key
        for col, values in t.value.items():
            assert not values.map(lambda v: isinstance(v, str) and v in ("None", "nan", "NaN")
                                  ).any(), (key, col)
    # Keller ×5 never reaches 1e-3: its cells are missing, so the dash is what they show.
    tol = tables["tol"].value
    assert tol.set_index("name").loc["Newton–Schulz (Keller ×5)", "iterations"].isna().all()
    final = tables["final"]
    assert list(final.value["name"]) == NAMES
    labels = {k: v.get("label") for k, v in json.loads(final.proto.columns).items()}
    assert labels["name"] == "method" and labels["wall_ms"] == "time per call (ms, median)"
    assert labels["err_spec"] == "relative error ‖·‖₂"


def test_a_failed_method_leaves_missing_cells_not_nan_text(seeded, services):
    from approximant.app.views.lab import _final_rows

    res = LabQueries(services.db).results(seeded)
    res = res[res["case_id"] == res["case_id"].iloc[0]].assign(name=lambda d: d["method"])
    failed = res.iloc[[0]].assign(
        method="qdwh[l0=0.5]", name="QDWH (ℓ₀ = 0.5)", iteration=0, err_spec=None,
        band_min=None, band_max=None, wall_median_s=None, wall_min_s=None, wall_max_s=None,
        peak_bytes=None, finite=False)
    out = _final_rows(pd.concat([res, failed], ignore_index=True))
    row = out.set_index("name").loc["QDWH (ℓ₀ = 0.5)"]
    assert pd.isna(row["band"]) and pd.isna(row["spread"]) and pd.isna(row["wall_ms"])
    ok = out.set_index("name").loc["qdwh"]
    assert ok["band"].startswith("[") and "–" in ok["spread"]
