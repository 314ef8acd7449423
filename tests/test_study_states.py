"""Every tab of the study page draws in every state a study passes through: nothing finished yet
(all queued, or running with rows), one run finished, all finished, a group whose every seed
diverged, a single seed. And a tab that fails says so without blanking the others."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from approximant.app.text import shown
from approximant.engine.specs import expand, parse_study
from approximant.storage.stream import EventStream, connect

MAIN = str(Path(__file__).resolve().parent.parent / "app" / "main.py")
TABS = ["Curves", "Compare", "Learning rate", "Tuning budget", "Time to target", "Diagnostics",
        "Runs"]


def _spec(seeds: list[int]):
    return parse_study({
        "name": f"states {seeds}",
        "workload": {"name": "digits_mlp"},
        "optimizers": [{"name": "sgd", "grid": {"lr": [0.05, 0.1]}},
                       {"name": "adamw", "grid": {"lr": [1e-3]}}],
        "seeds": seeds,
        "steps": 40,
        "eval_every": 10,
    })


def _rows(last: int, scale: float) -> list[list]:
    rows = [[s, "train_loss", scale * 2.0 / s, 0.01 * s, 64 * s] for s in range(1, last + 1)]
    rows += [[s, "val_loss", scale * 2.5 / (s + 1), 0.01 * s, 64 * s]
             for s in range(0, last + 1, 10)]
    return rows


# Per run, in expansion order (sgd lr=0.05 seeds…, sgd lr=0.1 seeds…, adamw seeds…):
# (status, last step) or None for a run still queued.
STATES = {
    "all queued": ([0, 1], lambda i: None),
    "running, none finished": ([0, 1], lambda i: ("running", 15)),
    "one finished": ([0, 1], lambda i: ("finished", 40) if i == 0 else
                     ("running", 20) if i == 1 else None),
    "all finished": ([0, 1], lambda i: ("finished", 40)),
    "a group all diverged": ([0, 1], lambda i: ("diverged", 12) if i < 2 else ("finished", 40)),
    "every run diverged": ([0, 1], lambda i: ("diverged", 5)),
    "one seed": ([0], lambda i: ("finished", 40)),
}


@pytest.mark.parametrize("state", list(STATES))
def test_every_tab_draws_in_every_state(services, state):
    seeds, of = STATES[state]
    spec = _spec(seeds)
    runs = expand(spec)
    events = [{"type": "study", "study_id": spec.study_id, "spec": spec.model_dump(mode="json"),
               "runs": [r.model_dump(mode="json") for r in runs], "ts": 1.0}]
    for i, run in enumerate(runs):
        if (s := of(i)) is None:
            continue
        status, last = s
        rows = _rows(last, 1.0 + 0.1 * i)
        if status == "diverged":
            rows.append([last + 1, "train_loss", float("nan"), 0.01 * last, 64 * last])
        events.append({"type": "metrics", "run_id": run.run_id, "attempt": 1, "rows": rows})
        events.append({"type": "status", "run_id": run.run_id, "attempt": 1, "status": status,
                       "step": last, "message": None, "worker": "w", "ts": time.time()})
    EventStream(connect(services.broker_url)).append(events)
    services.recorder.drain()

    at = AppTest.from_file(MAIN, default_timeout=60)
    at.query_params["study"] = spec.study_id
    at.run()
    at.switch_page("screens/study.py").run()
    assert not at.exception, at.exception
    assert [t.label for t in at.tabs] == TABS
    for tab in TABS:  # only the open tab is drawn
        at.session_state["tab"] = tab
        at.run()
        assert not at.exception, (tab, at.exception)
        failed = [shown(e.value) for e in at.error if "could not be drawn" in shown(e.value)]
        assert failed == [], (tab, failed)
    # The runs table lists every run, whatever the state.
    assert any(len(df.value) == len(runs) and "run_id" in df.value.columns
               for df in at.dataframe)


def test_a_failing_tab_leaves_the_others_drawn(services, monkeypatch):
    from approximant.app import report

    spec = _spec([0])
    runs = expand(spec)
    EventStream(connect(services.broker_url)).append(
        [{"type": "study", "study_id": spec.study_id, "spec": spec.model_dump(mode="json"),
          "runs": [r.model_dump(mode="json") for r in runs], "ts": 1.0}]
        + [ev for r in runs for ev in (
            {"type": "metrics", "run_id": r.run_id, "attempt": 1, "rows": _rows(40, 1.0)},
            {"type": "status", "run_id": r.run_id, "attempt": 1, "status": "finished",
             "step": 40, "message": None, "worker": "w", "ts": time.time()})])
    services.recorder.drain()

    def broken(*args, **kwargs):
        raise TypeError("a bug in one figure")

    monkeypatch.setattr(report, "lr_figures", broken)
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.query_params["study"] = spec.study_id
    at.run()
    at.switch_page("screens/study.py").run()
    assert not at.exception
    assert at.get("vega_lite_chart")  # the curves draw
    at.session_state["tab"] = "Learning rate"
    at.run()
    assert not at.exception
    errors = [shown(e.value) for e in at.error]
    assert errors == ["The Learning rate tab could not be drawn (TypeError); the other tabs "
                      "are unaffected, and the dashboard's log has the details."]
    at.session_state["tab"] = "Runs"
    at.run()
    assert any("run_id" in df.value.columns for df in at.dataframe)


def test_a_group_keeps_its_colour_whatever_has_reported(services):
    """The colour domain is every config of the study, in order, from the first chart on: a
    group's colour does not move when others start reporting."""
    import json

    spec = _spec([0, 1])
    runs = expand(spec)
    done = runs[0]
    EventStream(connect(services.broker_url)).append([
        {"type": "study", "study_id": spec.study_id, "spec": spec.model_dump(mode="json"),
         "runs": [r.model_dump(mode="json") for r in runs], "ts": 1.0},
        {"type": "metrics", "run_id": done.run_id, "attempt": 1, "rows": _rows(40, 1.0)},
        {"type": "status", "run_id": done.run_id, "attempt": 1, "status": "finished",
         "step": 40, "message": None, "worker": "w", "ts": time.time()}])
    services.recorder.drain()
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.query_params["study"] = spec.study_id
    at.run()
    at.switch_page("screens/study.py").run()
    configs = list(dict.fromkeys(r.label for r in runs))
    assert configs == ["sgd[lr=0.05]", "sgd[lr=0.1]", "adamw[lr=0.001]"]
    charts = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    curves = [c for c in charts if "layer" in c and any(
        lay.get("mark", {}).get("type") == "area" for lay in c["layer"])]
    assert len(curves) == 2, [c.get("title") for c in charts]
    titles = ["SGD-momentum (lr = 0.05)", "SGD-momentum (lr = 0.1)", "AdamW (lr = 0.001)"]
    for chart in curves:
        scales = [layer["encoding"]["color"]["scale"] for layer in chart["layer"]
                  if "color" in layer["encoding"]]
        assert len(scales) >= 3
        assert all(s.get("domain") == titles for s in scales)
        # The colour-blind-safe palette, one fixed colour per config.
        assert all(s.get("range")[:3] == ["#0072B2", "#E69F00", "#009E73"] for s in scales)
