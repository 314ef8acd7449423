"""The three dashboard pages in Streamlit's AppTest, over a real broker and DuckDB file."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from approximant.app.text import shown
from approximant.engine.specs import expand, parse_study
from approximant.storage.stream import EventStream, connect

MAIN = str(Path(__file__).resolve().parent.parent / "app" / "main.py")
SPEC = parse_study({
    "name": "seeded study",
    "workload": {"name": "digits_mlp"},
    "optimizers": [{"name": "sgd", "grid": {"lr": [0.1]}},
                   {"name": "adamw", "grid": {"lr": [1e-3]}}],
    "seeds": [0],
    "steps": 50,
    "eval_every": 10,
})


@pytest.fixture
def seeded(services):
    """A study with one finished run and one still running, as a worker would report them."""
    runs = expand(SPEC)
    events = [{"type": "study", "study_id": SPEC.study_id, "spec": SPEC.model_dump(mode="json"),
               "runs": [r.model_dump(mode="json") for r in runs], "ts": 1.0}]
    for run, last in zip(runs, (50, 20), strict=True):
        rows = [[s, "train_loss", 2.0 / s, 0.01 * s, 64 * s] for s in range(1, last + 1)]
        rows += [[s, "val_loss", 2.5 / (s + 1), 0.01 * s, 64 * s] for s in range(0, last + 1, 10)]
        events.append({"type": "metrics", "run_id": run.run_id, "attempt": 1, "rows": rows})
        events.append({"type": "status", "run_id": run.run_id, "attempt": 1,
                       "status": "finished" if last == 50 else "running", "step": last,
                       "message": None, "worker": "w", "ts": time.time()})
    EventStream(connect(services.broker_url)).append(events)
    services.recorder.drain()
    return runs


def app() -> AppTest:
    return AppTest.from_file(MAIN, default_timeout=60)


def test_studies_page_lists_the_study(seeded):
    at = app().run()
    assert not at.exception
    assert at.title[0].value == "Studies"
    table = at.dataframe[0].value
    assert list(table["name"]) == ["seeded study"]
    assert table.loc[0, "n_runs"] == 2 and table.loc[0, "running"] == 1


def test_studies_page_when_empty(services):
    at = app().run()
    assert not at.exception
    assert "No studies yet" in at.info[0].value


TABLES = {"runs_table": "run_id", "group_table": "P(better)", "ttt_table": "reached",
          "tune_table": "optimizer"}


def _frame(at: AppTest, key: str):
    """The page's table named ``key``, recognised by a column only it has."""
    for df in at.dataframe:
        if TABLES[key] in df.value.columns:
            return df.value
    raise AssertionError(f"no {key}; tables have {[list(d.value.columns) for d in at.dataframe]}")


def _open_tab(at: AppTest, name: str) -> AppTest:
    """Open one tab of the study page: only the open tab is drawn."""
    at.session_state["tab"] = name
    return at.run()


def _study_page(at: AppTest, **params: str) -> AppTest:
    at.query_params["study"] = SPEC.study_id
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    return at.switch_page("screens/study.py").run()


def test_study_page_shows_progress_charts_and_runs(seeded):
    at = _study_page(app())
    assert not at.exception
    assert at.title[0].value == "seeded study"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["runs"] == "2" and metrics["finished"] == "1" and metrics["running"] == "1"
    # The open tab only: the two curve charts; each other tab draws when opened.
    assert len(at.get("vega_lite_chart")) == 2
    assert _open_tab(at, "Learning rate").get("vega_lite_chart")
    assert _open_tab(at, "Time to target").get("vega_lite_chart")
    runs = _frame(_open_tab(at, "Runs"), "runs_table")
    # Configs as people write them, not as run labels.
    assert list(runs["label"]) == ["SGD-momentum (lr = 0.1)", "AdamW (lr = 0.001)"]
    assert list(runs["status"]) == ["finished", "running"]
    assert runs["train_loss"].iloc[0] == pytest.approx(2.0 / 50)
    compare = _frame(_open_tab(at, "Compare"), "group_table")
    assert set(compare["group"]) == {"SGD-momentum (lr = 0.1)", "AdamW (lr = 0.001)"}
    assert at.button(key="cancel").label == "Cancel study"


def test_study_page_unknown_id(services):
    at = app()
    at.query_params["study"] = "st-000000000000"
    at.run()
    at.switch_page("screens/study.py").run()
    assert not at.exception
    # Shown as text: the id from the URL is escaped, not rendered as Markdown.
    assert "No study with id st-000000000000 in this dashboard" in shown(at.error[0].value)


def test_new_study_form_refuses_bad_input_before_submission(services):
    at = app().run()
    at.switch_page("screens/new_study.py").run()
    assert not at.exception
    assert "6 runs" in at.info[0].value  # sgd, adamw, muon at their default lr × seeds 0, 1
    at.text_input(key="opt.adamw.lr").input("-0.1, abc").run()
    at.text_input(key="seeds").input("0, x").run()
    errors = shown(at.error[0].value)
    # Fields named as the form names them, not by their spec path.
    assert "AdamW lr: 'abc' is not a valid float" in errors
    assert "Seeds: 'x' is not a valid int" in errors
    assert at.button(key="run").disabled
    at.text_input(key="opt.adamw.lr").input("-0.1").run()
    at.text_input(key="seeds").input("0").run()
    assert ("AdamW lr: Input should be greater than 0 (got -0.1)"
            in shown(at.error[0].value))
    assert at.button(key="run").disabled


def test_new_study_submits_a_valid_study(services):
    at = app().run()
    at.switch_page("screens/new_study.py").run()
    at.text_input(key="name").input("from the form").run()
    at.multiselect(key="optimizers").set_value(["sgd", "adamw"]).run()
    at.text_input(key="opt.sgd.lr").input("0.05, 0.1").run()
    at.text_input(key="seeds").input("0, 1").run()
    at.number_input(key="steps").set_value(20).run()
    assert "6 runs" in at.info[0].value
    at.button(key="run").click().run()
    assert not at.exception
    services.recorder.drain()
    studies = services.queries.studies()
    assert list(studies["name"]) == ["from the form"] and studies.loc[0, "n_runs"] == 6
    runs = services.queries.runs(studies.loc[0, "study_id"])
    assert set(runs["status"]) == {"queued"}
    assert sorted(set(runs["label"])) == ["adamw[lr=0.001]", "sgd[lr=0.05]", "sgd[lr=0.1]"]


def test_toml_tab_reports_errors(services):
    at = app().run()
    at.switch_page("screens/new_study.py").run()
    at.text_area(key="toml").input('name = "x"\nsteps = -3\n').run()
    at.button(key="run_toml").click().run()
    errors = " ".join(shown(e.value) for e in at.error)
    assert "steps: Input should be greater than or equal to 1 (got -3)" in errors
    assert "workload: Field required" in errors


def test_training_settings_reach_the_spec_and_are_validated(services):
    at = app().run()
    at.switch_page("screens/new_study.py").run()
    at.number_input(key="grad_clip").set_value(-1.0).run()
    assert "Gradient clip: Input should be greater than 0 (got -1.0)" in shown(at.error[0].value)
    at.number_input(key="grad_clip").set_value(1.0).run()
    at.selectbox(key="lr_schedule").set_value("cosine").run()
    at.number_input(key="warmup_steps").set_value(10).run()
    assert not at.error
    toml = at.code[0].value
    assert 'lr_schedule = "cosine"' in toml and "grad_clip = 1.0" in toml
    assert "warmup_steps = 10" in toml


def test_a_running_run_that_went_silent_is_flagged(seeded, services):
    quiet = {"type": "status", "run_id": seeded[1].run_id, "attempt": 1, "status": "running",
             "step": 20, "message": None, "worker": "w", "ts": time.time() - 600}
    EventStream(connect(services.broker_url)).append([quiet])
    services.recorder.drain()
    at = _open_tab(_study_page(app()), "Runs")
    assert list(_frame(at, "runs_table")["status"]) == ["finished", "running? silent 10 min"]


def test_a_run_that_goes_silent_while_the_page_is_open_is_flagged(seeded, services, monkeypatch):
    # The runs frame is cached by data version, which silence does not change: the age must
    # come from the clock of each rerun, not from the cached query.
    from approximant.app.views import study

    recent = {"type": "status", "run_id": seeded[1].run_id, "attempt": 1, "status": "running",
              "step": 20, "message": None, "worker": "w", "ts": time.time() - 60}
    EventStream(connect(services.broker_url)).append([recent])
    services.recorder.drain()
    at = _open_tab(_study_page(app()), "Runs")
    assert list(_frame(at, "runs_table")["status"]) == ["finished", "running"]
    later = time.time() + 600
    monkeypatch.setattr(study, "_now", lambda: later)
    at.run()
    assert list(_frame(at, "runs_table")["status"]) == ["finished", "running? silent 11 min"]


def test_view_settings_come_from_the_url_and_go_back_to_it(seeded):
    at = _study_page(app(), band="bootstrap", group="optimizer", x="wall", smooth="0.5",
                     center="nonsense")
    assert not at.exception
    assert at.selectbox(key="view.band").value == "bootstrap"
    assert at.selectbox(key="view.group").value == "optimizer"
    assert at.selectbox(key="view.x").value == "wall"
    assert at.slider(key="view.smooth").value == 0.5
    assert at.selectbox(key="view.center").value == "mean"  # a bad value falls back
    assert set(_frame(_open_tab(at, "Compare"), "group_table")["group"]) == {"SGD-momentum",
                                                                             "AdamW"}
    at.selectbox(key="view.band").set_value("sem").run()
    at.toggle(key="view.logy").set_value(True).run()
    assert at.query_params["band"] == "sem" and at.query_params["logy"] == "1"
    at.selectbox(key="view.group").set_value("config").run()
    assert "group" not in at.query_params  # defaults are left out of the link


def test_share_link_shows_the_study_without_edit_controls(seeded, services):
    from approximant.storage.shares import Shares

    at = _study_page(app())
    at.session_state["share_open"] = True  # drawn once opened
    at.run()
    at.button(key="share_create").click().run()
    tokens = Shares(services.db).of_study(SPEC.study_id)["token"].tolist()
    assert len(tokens) == 1
    assert any(f"/shared?token={tokens[0]}" in c.value for c in at.code)

    shared = app()
    shared.query_params["token"] = tokens[0]
    shared.run()
    assert not shared.exception
    assert shared.title[0].value == "seeded study"
    runs = _frame(_open_tab(shared, "Runs"), "runs_table")  # the tab with the run actions
    keys = {b.key for b in shared.button}
    assert not keys & {"cancel", "share_create", "rerun_runs", "cancel_runs", "seed_add"}
    assert list(runs["status"]) == ["finished", "running"]

    Shares(services.db).revoke(tokens[0])
    gone = app()
    gone.query_params["token"] = tokens[0]
    gone.run()
    assert "unknown or was revoked" in shown(gone.error[0].value)


def test_add_seeds_refuses_bad_seeds_with_the_field_named(seeded):
    at = _open_tab(_study_page(app()), "Runs")
    at.text_input(key="seed_new").input("3, x").run()
    at.button(key="seed_add").click().run()
    assert "seeds: 'x' is not a valid int" in shown(at.error[0].value)


def test_profiles_page_compares_optimizers_across_studies(services):
    from approximant.storage.synthetic import synthetic_study

    for i, wl in enumerate(["w1", "w2", "w3"]):
        synthetic_study(services.db, f"task {i}", ["adamw", "muon"], [1e-3, 1e-2], [0, 1],
                        200, workload=wl)
    at = app().run()
    at.switch_page("screens/profiles.py").run()
    assert not at.exception
    assert len(at.multiselect(key="prof_studies").value) == 3
    assert len(at.get("vega_lite_chart")) == 1
    table = at.dataframe[0].value
    assert list(table.columns) == ["AdamW", "Muon"] and len(table) == 3
    at.selectbox(key="prof_cost").set_value("ttt").run()
    assert not at.exception and len(at.get("vega_lite_chart")) == 1


def test_diagnostics_tab_charts_recorded_diagnostics(seeded, services):
    rows = []
    for s in range(10, 51, 10):
        rows += [[s, "diag_gamma", 0.9, 0.01 * s, 64 * s], [s, "diag_phi", 0.2, 0.01 * s, 64 * s],
                 [s, "diag_eta_opt", 0.05, 0.01 * s, 64 * s]]
    rows += [[s, "lr", 0.1, 0.01 * s, 64 * s] for s in range(1, 51)]
    EventStream(connect(services.broker_url)).append([
        {"type": "metrics", "run_id": seeded[0].run_id, "attempt": 1, "rows": rows}])
    services.recorder.drain()
    at = _open_tab(_study_page(app()), "Diagnostics")
    assert not at.exception
    assert at.multiselect(key="diag_pick").value == ["diag_gamma", "diag_phi"]
    # γ, Φ, and η* against the lr used.
    assert len(at.get("vega_lite_chart")) == 3
    assert "diag_gamma" not in at.selectbox(key="view.metric").options


def test_view_settings_survive_leaving_the_page_and_coming_back(seeded):
    at = _open_tab(_study_page(app(), band="bootstrap", within="5000"), "Learning rate")
    assert at.number_input(key="view.within").value == 10.0  # out of range: the default
    at.selectbox(key="view.x").set_value("wall").run()
    at.switch_page("screens/studies.py").run()
    at.query_params["study"] = SPEC.study_id
    at.switch_page("screens/study.py").run()
    assert not at.exception
    assert at.selectbox(key="view.band").value == "bootstrap"
    assert at.selectbox(key="view.x").value == "wall"
    assert at.selectbox(key="view.metric").value == "val_loss"
    assert _open_tab(at, "Learning rate").number_input(key="view.within").value == 10.0


def test_a_lost_broker_is_shown_on_every_page_until_it_is_back(tmp_path, monkeypatch):
    from approximant.app import services as services_mod
    from approximant.app.services import open_services, set_services
    from approximant.tasks.broker import EmbeddedBroker

    monkeypatch.setattr(services_mod, "PROBE_CACHE_S", 0.0)  # probe on every run
    broker = EmbeddedBroker(tmp_path / "b")
    s = open_services(tmp_path / "data", broker.start(), start_recorder=False)
    set_services(s)
    try:
        runs = expand(SPEC)
        EventStream(connect(s.broker_url)).append([
            {"type": "study", "study_id": SPEC.study_id, "spec": SPEC.model_dump(mode="json"),
             "runs": [r.model_dump(mode="json") for r in runs], "ts": 1.0}])
        s.recorder.drain()
        at = app()
        at.query_params["study"] = SPEC.study_id
        at.run()
        assert not any("Broker unreachable" in e.value for e in at.error)
        broker.stop()
        for page in (None, "screens/new_study.py", "screens/lab.py", "screens/study.py"):
            if page:
                at.switch_page(page)
            at.run()
            assert not at.exception
            banners = [e for e in at.error if "Broker unreachable since" in shown(e.value)]
            assert len(banners) == 1, page
        broker.restart()
        at.run()
        assert not any("Broker unreachable" in e.value for e in at.error)
    finally:
        set_services(None)
        s.close()
        broker.stop()
