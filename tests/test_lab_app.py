"""The Approximation lab page in Streamlit's AppTest, over a real broker and DuckDB file.

The seeded job is measured by the real engine and published by the worker's own publisher,
so the page reads exactly what a worker would have sent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app import lab_charts
from app.text import shown
from engine.approx.bench import run_lab
from engine.approx.spec import parse_lab
from storage.lab import LabQueries
from storage.stream import EventStream, connect, now
from tasks.lab import LabPublisher

MAIN = str(Path(__file__).resolve().parent.parent / "app" / "main.py")
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
    chart = lab_charts.pareto_chart(res).properties(width=400)
    assert lab_charts.chart_svg(chart).startswith(b"<svg")
    assert lab_charts.chart_png(chart)[:8] == b"\x89PNG\r\n\x1a\n"
    front = lab_charts.pareto_front(res)
    # No point off the front is both faster and more accurate than a point on it.
    for _, p in front.iterrows():
        better = res[(res["dtype"] == p["dtype"]) & (res["wall_median_s"] < p["wall_median_s"])
                     & (res["err_spec"] < p["err_spec"])]
        assert better.empty
    import io

    import pandas as pd

    assert pd.read_parquet(io.BytesIO(lab_charts.to_parquet(res))).shape == res.shape


def test_new_study_form_offers_capture_steps_and_validates_them(services):
    at = AppTest.from_file(MAIN, default_timeout=60).run()
    at.switch_page("screens/new_study.py").run()
    at.number_input(key="steps").set_value(50).run()
    at.text_input(key="capture_steps").input("10, x").run()
    assert "capture_steps: 'x' is not a valid int" in shown(at.error[0].value)
    at.text_input(key="capture_steps").input("10, 80").run()
    assert ("capture_steps: every step must be in [1, steps = 50] (got [80])"
            in shown(at.error[0].value))
    at.text_input(key="capture_steps").input("10, 40").run()
    assert not at.error
    assert "capture_steps = [10, 40]" in at.code[0].value


def test_long_transfer_curves_are_thinned_below_altairs_row_limit():
    import pandas as pd

    from app.views.lab import MAX_POINTS, _thin

    n_curves, points = 160, 64  # e.g. 8 methods × ~7 iterations × 3 dtypes
    df = pd.DataFrame([(f"m{c % 8}", f"d{c % 3}", c, i, 10.0 ** (-i / 8), 1.0)
                       for c in range(n_curves) for i in range(points)],
                      columns=["method", "dtype", "iteration", "idx", "x", "y"])
    thin = _thin(df)
    assert len(thin) <= MAX_POINTS < len(df)
    ends = thin.groupby(["method", "dtype", "iteration"])["idx"].agg(["min", "max"])
    assert len(ends) == n_curves and (ends["min"] == 0).all() and (ends["max"] == 63).all()
    assert _thin(df.head(100)) is not None and len(_thin(df.head(100))) == 100
