"""A training script of one's own logs to a running stack (approximant.client), end to end.

Real processes: ``approximant up`` (broker, worker, dashboard with the recorder) and the example
script ``examples/own_script.py`` in a subprocess, killed with SIGKILL mid-run and started
again. Deadlines only bound waits; nothing here asserts a duration.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import bench_faults  # benchmarks/ is on pytest's pythonpath (pyproject.toml)
import pytest

from approximant.storage.db import Database
from approximant.tasks.submit import progress

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "own_script.py"
STUDY = "own loop under test"


def _script(data: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "APPROXIMANT_DATA_DIR": str(data), "APPROXIMANT_TORCH_THREADS": "1",
           "OMP_NUM_THREADS": "1"}
    env.pop("APPROXIMANT_BROKER_URL", None)
    return subprocess.Popen([sys.executable, str(SCRIPT), "--study", STUDY, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _first_line(proc: subprocess.Popen) -> tuple[str, int, int]:
    """``run <id> attempt <n>: from step <s> (recorded up to <r>)`` → (id, n, r)."""
    line = proc.stdout.readline()
    assert line.startswith("run "), line + proc.stdout.read()
    words = line.split()
    return words[1], int(words[3].rstrip(":")), int(line.rsplit(" ", 1)[1].rstrip(")\n"))


@pytest.fixture
def stack(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("APPROXIMANT_BROKER_URL", raising=False)
    s = bench_faults.Stack(tmp_path / "data")
    s.start()
    try:
        yield s
    finally:
        s.stop()


def test_a_script_killed_and_started_again_continues_its_run_with_every_row_once(stack,
                                                                                 tmp_path):
    data, ck = stack.data_dir, tmp_path / "kaon.pt"
    args = ("--optimizer", "kaon", "--seed", "0", "--steps", "1500", "--eval-every", "100",
            "--checkpoint", str(ck))
    first = _script(data, *args)
    run_id, attempt, recorded = _first_line(first)
    assert (attempt, recorded) == (1, 0)
    # Killed after its first checkpoint (step 100) and before the end.
    bench_faults.wait_for("the script to pass step 250",
                          lambda: int(progress([run_id], stack.broker_url)[run_id]
                                      .get("step", 0)) >= 250, 120, poll_s=0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    killed_at = int(progress([run_id], stack.broker_url)[run_id]["step"])
    assert killed_at < 1500, "the script ended before it was killed: give it more steps"

    again = _script(data, *args)
    same_id, attempt, recorded = _first_line(again)
    assert (same_id, attempt) == (run_id, 2)
    assert recorded == killed_at
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out

    other = _script(data, "--optimizer", "adamw", "--seed", "1", "--steps", "120",
                    "--eval-every", "60")
    out, _ = other.communicate(timeout=300)
    assert other.returncode == 0, out
    other_id = out.split()[1]
    bench_faults.wait_for("both runs to be recorded as finished", lambda: all(
        progress([r], stack.broker_url)[r].get("status") == "finished"
        for r in (run_id, other_id)), 60)
    assert stack.stop() == 0

    db = Database.in_dir(data)
    try:
        with db.read() as cur:
            runs = cur.execute("SELECT run_id, status, attempt, position, label FROM runs "
                               "ORDER BY position").fetchall()
            n_runs = cur.execute("SELECT n_runs FROM studies").fetchall()
            rows = {a: cur.execute(
                "SELECT step, name, value FROM metrics WHERE run_id = ? AND attempt = ?",
                [run_id, a]).fetchall() for a in (1, 2)}
    finally:
        db.close()
    assert [r[:4] for r in runs] == [(run_id, "finished", 2, 0), (other_id, "finished", 1, 1)]
    assert runs[0][4].startswith("kaon[") and runs[1][4] == "adamw[lr=0.001]"
    assert n_runs == [(2,)]
    # The finished attempt holds every row of an uninterrupted run, each once: the rows before
    # the kill carried over from attempt 1, the rest sent by attempt 2.
    keys = [(s, n) for s, n, _ in rows[2]]
    assert len(keys) == len(set(keys))
    evals = {0, *range(100, 1501, 100)}
    want = ({(s, "train_loss") for s in range(1, 1501)}
            | {(s, n) for s in evals for n in ("val_loss", "val_accuracy")})
    assert set(keys) == want
    # Attempt 2 sent steps from its checkpoint (a multiple of 100) to the kill again; those
    # were ignored, and the rows kept are attempt 1's, as first sent.
    first_copy = {(s, n): v for s, n, v in rows[1]}
    kept = {(s, n): v for s, n, v in rows[2] if s <= killed_at}
    assert kept == {k: v for k, v in first_copy.items() if k[0] <= killed_at}


# -- the client in-process, against a real broker and the real recorder ------------------------

def _recorded(url: str, db) -> None:
    from approximant.storage.recorder import Recorder
    from approximant.storage.stream import EventStream, connect

    Recorder(db, EventStream(connect(url))).drain()


@pytest.mark.parametrize(("options", "field"), [
    ({"study": ""}, "study"),
    ({"study": "a\x1bb"}, "study"),
    ({"optimizer": "my optimizer"}, "optimizer"),
    ({"config": {"lr": float("nan")}}, "config.lr"),
    ({"config": {"note": "a,b"}}, "config.note"),
    ({"config": {"not a key": 1}}, "config"),
    ({"seed": -1}, "seed"),
    ({"steps": 0}, "steps"),
])
def test_a_bad_argument_is_refused_naming_it_before_anything_is_sent(options, field):
    import approximant

    args = {"study": "s", "optimizer": "freon", "steps": 10, **options}
    with pytest.raises(ValueError) as err:
        approximant.start_run(broker="redis://127.0.0.1:1/0", **args)
    assert str(err.value).startswith(f"{field}:"), err.value


def test_without_a_running_dashboard_the_error_says_what_to_start(tmp_path, monkeypatch):
    import approximant

    monkeypatch.delenv("APPROXIMANT_BROKER_URL", raising=False)
    with pytest.raises(RuntimeError, match="approximant up"):
        approximant.start_run("s", optimizer="freon", steps=10, data_dir=tmp_path)


def test_log_refuses_what_it_cannot_store(clean_broker):
    import approximant

    with approximant.start_run("checks", optimizer="adamw", steps=5, broker=clean_broker) as run:
        with pytest.raises(ValueError, match="^metric 'bad name'"):
            run.log(1, **{"bad name": 1.0})
        with pytest.raises(ValueError, match="^train_loss: a number"):
            run.log(1, train_loss="low")
        with pytest.raises(ValueError, match="^step:"):
            run.log(-1, train_loss=1.0)
    with pytest.raises(RuntimeError, match="has ended"):
        run.log(2, train_loss=1.0)


def test_rows_logged_while_the_broker_is_away_are_held_then_stored_once(tmp_path, db,
                                                                          caplog):
    import approximant
    from approximant.tasks.broker import EmbeddedBroker

    caplog.set_level(logging.WARNING, logger="approximant.client")
    broker = EmbeddedBroker(tmp_path)
    url = broker.start()
    try:
        run = approximant.start_run("outage", optimizer="adamw", config={"lr": 1e-3},
                                    steps=40, broker=url)
        for step in range(1, 11):
            run.log(step, train_loss=1.0 / step)
        run.flush()
        broker._proc.kill()
        broker._proc.wait(10)
        for step in range(11, 41):  # log() does not wait for the broker
            run.log(step, train_loss=1.0 / step)
        for step in (5, 6):  # sent again: kept once, first copy
            run.log(step, train_loss=99.0)
        assert broker.restart() == url
        run.finish()
        # The sender saw the outage: one warning when it began, none a poll, no traceback.
        client_logs = [r for r in caplog.records if r.name == "approximant.client"]
        assert sum("unreachable" in r.getMessage() for r in client_logs) <= 1
        assert not any(r.exc_info for r in client_logs)
        _recorded(url, db)
    finally:
        broker.stop()
    with db.read() as cur:
        rows = cur.execute("SELECT step, value FROM metrics ORDER BY step").fetchall()
        status = cur.execute("SELECT status, attempt FROM runs").fetchall()
    assert rows == [(s, 1.0 / s) for s in range(1, 41)]
    assert status == [("finished", 1)]


def test_a_second_process_on_the_same_run_takes_it_over(clean_broker, db):
    import approximant

    args = dict(optimizer="kaon", config={"lr": 0.02}, seed=3, steps=10, broker=clean_broker)
    old = approximant.start_run("twice", **args)
    old.log(1, train_loss=1.0)
    old.flush()
    new = approximant.start_run("twice", **args)
    assert (new.run_id, new.attempt, new.resume_step) == (old.run_id, 2, 1)
    new.log(2, train_loss=0.5)
    new.flush()
    old.log(2, train_loss=7.0)  # held; its next send finds the later attempt's lease
    with pytest.raises(RuntimeError, match="a later process took this run over"):
        for _ in range(100):
            old.flush()
            old.log(3, train_loss=7.0)
    new.finish()
    old.finish()
    _recorded(clean_broker, db)
    with db.read() as cur:
        rows = cur.execute("SELECT attempt, step, value FROM metrics ORDER BY attempt, step"
                           ).fetchall()
        status = cur.execute("SELECT status, attempt, message FROM runs").fetchall()
    assert (1, 1, 1.0) in rows and (2, 1, 1.0) in rows and (2, 2, 0.5) in rows
    assert all(value != 7.0 for a, _, value in rows if a == 2)
    assert status[0][:2] == ("finished", 2) and "resumed from step 1" in status[0][2]


def test_a_cancel_from_the_dashboard_reaches_the_script(clean_broker):
    import approximant
    from approximant.tasks.submit import cancel_study

    with approximant.start_run("cancel me", optimizer="muon", steps=10,
                               broker=clean_broker) as run:
        assert not run.cancelled
        cancel_study(run.study_id, clean_broker)
        bench_faults.wait_for("the script to see the cancel", lambda: run.cancelled, 30)
        run.finish("cancelled", "asked to")


def test_a_script_that_never_calls_finish_still_sends_what_it_logged(clean_broker, db):
    code = ("import approximant\n"
            f"run = approximant.start_run('no finish', optimizer='sgd', steps=9, "
            f"broker={clean_broker!r})\n"
            "for s in range(1, 4):\n"
            "    run.log(s, train_loss=1.0 / s)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    _recorded(clean_broker, db)
    with db.read() as cur:
        assert cur.execute("SELECT step FROM metrics ORDER BY step").fetchall() == [
            (1,), (2,), (3,)]
        assert cur.execute("SELECT status FROM runs").fetchall() == [("running",)]


def test_a_script_study_lists_its_runs_by_config_and_seed_whatever_order_they_started(
        clean_broker, db):
    import approximant
    from approximant.storage.analytics import Analytics
    from approximant.storage.queries import Queries

    for optimizer, seed in (("muon", 1), ("adamw", 0), ("muon", 0), ("adamw", 1)):
        approximant.start_run("order", optimizer=optimizer, seed=seed, steps=5,
                              broker=clean_broker).finish()
    _recorded(clean_broker, db)
    study = approximant.client.study_id_for("order")
    want = [("adamw", 0), ("adamw", 1), ("muon", 0), ("muon", 1)]
    assert list(Queries(db).runs(study)[["label", "seed"]].itertuples(index=False,
                                                                       name=None)) == want
    assert list(Analytics(db).runs([study])[["label", "seed"]].itertuples(
        index=False, name=None)) == want


def test_a_diverged_loss_goes_on_the_wire_as_nan_not_as_null(clean_broker):
    """The wire keeps what was logged (json.dumps' NaN/Infinity, as before the typed events).
    The recorder's DataFrame insert stores non-finite values as NULL, as it always has."""
    import approximant
    from approximant.storage.stream import STREAM, connect

    with approximant.start_run("nan", optimizer="sgd", steps=2, broker=clean_broker) as run:
        run.log(1, train_loss=0.5)
        run.log(2, train_loss=float("nan"), grad_norm=float("inf"))
    entries = [e[b"e"] for _, e in connect(clean_broker).xrange(STREAM)]
    rows = [r for e in entries if b'"type":"metrics"' in e for r in json.loads(e)["rows"]]
    values = {(s, n): v for s, n, v, _w, _t in rows}
    assert values[(1, "train_loss")] == 0.5 and math.isnan(values[(2, "train_loss")])
    assert values[(2, "grad_norm")] == math.inf


def test_a_cancel_from_before_a_restart_does_not_stop_the_restarted_script(clean_broker):
    import approximant
    from approximant.tasks.submit import cancel_study

    with approximant.start_run("cancelled once", optimizer="sgd", steps=9,
                               broker=clean_broker) as run:
        cancel_study(run.study_id, clean_broker)
        bench_faults.wait_for("the cancel", lambda: run.cancelled, 30)
        run.finish("cancelled")
    again = approximant.start_run("cancelled once", optimizer="sgd", steps=9,
                                  broker=clean_broker)
    # What the sender polls: the old request is not for this process; a new one is.
    assert not again._cancel_asked()
    cancel_study(again.study_id, clean_broker)
    assert again._cancel_asked()
    again.finish()


def test_configs_that_print_alike_are_different_runs(clean_broker):
    import approximant

    ids = set()
    for config in ({"lr": 1}, {"lr": 1.0}, {"lr": 1.0000004}, {"flag": True},
                   {"flag": "True"}):
        run = approximant.start_run("alike", optimizer="sgd", config=config, steps=1,
                                    broker=clean_broker)
        run.finish()
        ids.add(run.run_id)
    assert len(ids) == 5


def test_a_script_cannot_add_runs_to_a_built_in_study(clean_broker, db):
    from approximant.engine.specs import parse_study
    from approximant.storage.events import StudyEvent
    from approximant.storage.stream import EventStream, connect
    from approximant.tasks.submit import _register

    spec = parse_study({"name": "built in", "workload": {"name": "digits_mlp"},
                        "optimizers": [{"name": "sgd"}], "steps": 5})
    from approximant.engine.specs import expand
    _register(connect(clean_broker), spec, expand(spec))
    stream = EventStream(connect(clean_broker))
    stream.append([StudyEvent(study_id=spec.study_id, spec={
        "name": "x", "source": "script", "workload": {"name": "script", "settings": {}}},
        runs=[{"run_id": "intruder", "label": "sgd", "optimizer": "sgd", "seed": 0,
               "hparams": {}, "steps": 1}])])
    _recorded(clean_broker, db)
    with db.read() as cur:
        assert cur.execute("SELECT count(*) FROM runs WHERE run_id = 'intruder'"
                           ).fetchone() == (0,)
    assert stream.client.xlen(stream.dead_letter) == 1
