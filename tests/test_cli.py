"""``approximant run`` and ``approximant worker`` as a person uses them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from approximant.app.cli import main
from approximant.storage.db import DB_FILENAME

SPEC = """
name = "cli study"
seeds = [0, 1]
steps = 15
eval_every = 5

[workload]
name = "digits_mlp"
[workload.settings]
hidden = 16

[[optimizers]]
name = "sgd"
[optimizers.grid]
lr = [0.1]
"""


@pytest.fixture(autouse=True)
def no_env_broker(monkeypatch):
    monkeypatch.delenv("APPROXIMANT_BROKER_URL", raising=False)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "study.toml"
    path.write_text(text)
    return str(path)


def test_invalid_spec_is_refused_with_the_field_named(tmp_path, capsys):
    bad = SPEC.replace("lr = [0.1]", "lr = [-0.1]").replace("steps = 15", "steps = 'x'")
    code = main(["run", write(tmp_path, bad), "--data-dir", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert code == 2
    assert "steps: Input should be a valid integer" in err
    assert not (tmp_path / "d").exists()  # nothing was started


def test_unknown_names_and_malformed_toml(tmp_path, capsys):
    code = main(["run", write(tmp_path, SPEC.replace('"sgd"', '"sgdd"')),
                 "--data-dir", str(tmp_path / "d")])
    assert code == 2
    assert "optimizers.0.name: unknown optimizer 'sgdd'; allowed:" in capsys.readouterr().err
    assert main(["run", write(tmp_path, "name = [")]) == 2
    assert "malformed TOML" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_run_owns_a_stack_when_no_dashboard_runs(tmp_path, capsys):
    data = tmp_path / "data"
    code = main(["run", write(tmp_path, SPEC), "--data-dir", str(data)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "started a local broker and worker" in out
    assert "run: done — 2 finished" in out
    con = duckdb.connect(str(data / DB_FILENAME), read_only=True)
    statuses = con.execute("SELECT status, attempt FROM runs").fetchall()
    n_metrics = con.execute("SELECT count(*) FROM metrics").fetchone()[0]
    con.close()
    assert statuses == [("finished", 1), ("finished", 1)]
    # 15 steps × 4 per-step metrics + evaluations at 0, 5, 10, 15 × 2 metrics, per run.
    assert n_metrics == 2 * (15 * 4 + 4 * 2)
    assert not (data / "stack.json").exists()

    # The study's snapshot and raw data from the terminal, as the page's downloads.
    out_dir = tmp_path / "out"
    assert main(["export", "nope", "--data-dir", str(data)]) == 2
    assert "study 'nope' matches no study; studies: st-" in capsys.readouterr().err
    assert main(["export", "cli study", "--data-dir", str(data), "--out", str(out_dir),
                 "--view", "band=sem&x=wall"]) == 0
    assert "5 charts" in capsys.readouterr().out  # curves ×2, lr, tuning budget, time to target
    page = (out_dir / "cli-study-snapshot.html").read_text()
    assert "vegaEmbed('#chart3'" in page and "± standard error" in page
    assert "training time (s)" in page
    import pandas as pd

    assert len(pd.read_parquet(out_dir / "cli-study-metrics.parquet")) == n_metrics


def test_worker_needs_a_broker(tmp_path, capsys):
    assert main(["worker", "--data-dir", str(tmp_path)]) == 2
    assert "no broker" in capsys.readouterr().err


def test_team_mode_worker_serves_an_external_broker(tmp_path, clean_broker, capsys):
    """A worker started with --broker runs what ``run --broker`` submits to the same server."""
    env = {**os.environ, "APPROXIMANT_TORCH_THREADS": "1"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "approximant.app.cli", "worker", "--broker", clean_broker,
         "--loglevel", "WARNING", "--name", "team@test"], env=env,
    )
    try:
        code = main(["run", write(tmp_path, SPEC), "--broker", clean_broker,
                     "--data-dir", str(tmp_path / "d")])
    finally:
        worker.terminate()
        worker.wait(30)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "run: done — 2 finished" in out
    # The dashboard of that team would record the rows from the shared stream.
    from approximant.storage.db import Database
    from approximant.storage.recorder import Recorder
    from approximant.storage.stream import EventStream, connect

    db = Database(tmp_path / "team.duckdb")
    Recorder(db, EventStream(connect(clean_broker))).drain()
    with db.read() as cur:
        workers = {r[0] for r in cur.execute("SELECT worker FROM runs").fetchall()}
        n = cur.execute("SELECT count(*) FROM metrics").fetchone()[0]
    db.close()
    assert workers == {"team@test"}
    assert n == 2 * (15 * 4 + 4 * 2)


def test_no_wait_without_a_dashboard_is_refused(tmp_path, capsys):
    assert main(["run", write(tmp_path, SPEC), "--no-wait", "--data-dir", str(tmp_path)]) == 2
    assert "--no-wait needs a running dashboard" in capsys.readouterr().err


def test_a_second_headless_run_on_the_same_data_dir_is_refused(tmp_path, capsys):
    from approximant.app.config import Stack, write_stack

    write_stack(tmp_path, Stack(os.getpid(), "redis://127.0.0.1:1/0", ""))  # a live headless run
    assert main(["run", write(tmp_path, SPEC), "--data-dir", str(tmp_path)]) == 1
    assert "another `approximant run`" in capsys.readouterr().err


def test_a_bad_checkpoint_interval_is_refused_before_anything_starts(tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.setenv("APPROXIMANT_CHECKPOINT_S", "often")
    assert main(["run", write(tmp_path, SPEC), "--data-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "APPROXIMANT_CHECKPOINT_S: " in err and "number" in err and "'often'" in err


def test_an_open_address_without_access_control_is_refused(tmp_path, monkeypatch, capsys):
    """A real ``approximant up --host 0.0.0.0`` with no password or OIDC stops before starting
    anything, and says how to configure access control."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("APPROXIMANT_EDITOR_PASSWORD", "APPROXIMANT_EDITOR_PASSWORD_FILE")}
    proc = subprocess.run(
        [sys.executable, "-m", "approximant.app.cli", "up", "--host", "0.0.0.0", "--port", "1",
         "--data-dir", str(tmp_path / "data")],
        env={**env, "HOME": str(tmp_path)}, cwd=tmp_path, capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 2
    assert "--host 0.0.0.0" in proc.stderr and "APPROXIMANT_EDITOR_PASSWORD" in proc.stderr
    assert not (tmp_path / "data").exists()  # no broker, no database, nothing started
    monkeypatch.delenv("APPROXIMANT_EDITOR_PASSWORD", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["dashboard", "--host", "192.168.1.5", "--data-dir", str(tmp_path)]) == 2
    assert "needs access control" in capsys.readouterr().err


class _Exited:
    def __init__(self, code: int | None) -> None:
        self.code = code

    def poll(self) -> int | None:
        return self.code


@pytest.fixture
def stop_handlers():
    """Tests that install up's signal handlers give pytest its own back."""
    import signal

    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM,
                                                   signal.SIGHUP)}
    yield
    for sig, handler in old.items():
        signal.signal(sig, handler)


def test_a_child_refusing_its_configuration_stops_the_stack_not_a_restart_loop():
    from approximant.app.cli import ChildRefused, Supervised

    crashed = Supervised("worker", lambda: _Exited(None), _Exited(1))
    crashed.check(0.0)
    assert crashed.due is not None  # an ordinary exit: restarted after the back-off
    refused = Supervised("dashboard", lambda: _Exited(None), _Exited(2))
    with pytest.raises(ChildRefused):
        refused.check(0.0)


def test_ctrl_c_while_a_child_starts_leaves_it_recorded(stop_handlers):
    """A stop signal that arrives while a child is being started is raised once the child is
    recorded, so the orderly stop stops it too (instead of orphaning it)."""
    import signal

    from approximant.app.cli import Supervised, _Interrupted, _on_stop_signals

    started = _Exited(None)

    def spawn():
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C between starting and recording
        return started

    sup = Supervised("worker", lambda: _Exited(None), _Exited(1))
    sup.check(0.0)
    sup.spawn = spawn
    _on_stop_signals()
    with pytest.raises(_Interrupted):
        sup.check(sup.due)
    assert sup.proc is started


def test_up_stops_when_its_dashboard_refuses_its_configuration(tmp_path, monkeypatch, capsys,
                                                               stop_handlers):
    """A real ``up`` (embedded broker) whose dashboard exits 2 returns 2 at once, leaving no
    stack behind, instead of restarting the dashboard every 30 s forever."""
    from approximant.app import cli

    started = []

    def refusing_child(args, env=None):
        started.append(args[0])
        return subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(2)"])

    monkeypatch.setattr(cli, "_child", refusing_child)
    assert main(["up", "--workers", "0", "--data-dir", str(tmp_path / "d")]) == 2
    assert started == ["dashboard"]  # started once, never restarted
    assert "the dashboard refused its configuration" in capsys.readouterr().err
    assert not (tmp_path / "d" / "stack.json").exists()
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o700


def test_the_data_directory_and_database_are_private(tmp_path, monkeypatch):
    from approximant.app import cli
    from approximant.storage.db import Database

    old = os.umask(0o022)
    try:
        cli._make_private_dir(tmp_path / "data")
        db = Database.in_dir(tmp_path / "db")
        db.close()
    finally:
        os.umask(old)
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "db").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "db" / DB_FILENAME).stat().st_mode & 0o777 == 0o600
    masks = []
    real_umask = os.umask
    monkeypatch.setattr(cli.os, "umask", lambda m: masks.append(m) or real_umask(m))
    assert main(["worker", "--data-dir", str(tmp_path / "none")]) == 2  # no broker: refused
    assert masks[0] == 0o077 and len(masks) == 2  # private while it ran, restored after


def test_a_pool_process_whose_worker_already_died_exits(monkeypatch):
    from approximant.tasks import celery_app

    class Libc:
        def prctl(self, *args):
            return 0

    exits = []
    monkeypatch.setattr(celery_app.ctypes, "CDLL", lambda *a, **k: Libc())
    monkeypatch.setattr(celery_app, "_worker_pid", os.getpid() + 1)  # its worker
    monkeypatch.setattr(celery_app.os, "_exit", exits.append)
    celery_app._die_with_parent()
    assert exits == [1]  # reparented before prctl ran: the death signal would never come
    monkeypatch.setattr(celery_app, "_worker_pid", os.getppid())
    celery_app._die_with_parent()
    assert exits == [1]  # its worker is alive: it stays


def test_a_broker_that_died_reports_its_exit_code():
    from approximant.app.cli import _BrokerProc

    class Broker:
        returncode = 0

        def alive(self):
            return False

    assert _BrokerProc(Broker()).poll() == 0
    Broker.returncode = None
    assert _BrokerProc(Broker()).poll() == -1


def test_adding_seeds_past_the_run_limit_is_refused_naming_seeds(monkeypatch):
    from approximant.engine.errors import SpecError
    from approximant.engine.specs import expand, parse_study_toml
    from approximant.tasks.submit import add_seeds

    spec = parse_study_toml(SPEC)
    runs = expand(spec)  # two seeds
    monkeypatch.setenv("APPROXIMANT_MAX_RUNS", "4")
    with pytest.raises(SpecError) as err:  # refused before any broker is contacted
        add_seeds(spec, runs, runs[0].label, [2, 3, 4], "redis://127.0.0.1:1/0")
    assert "seeds:" in str(err.value) and "at most 4 (APPROXIMANT_MAX_RUNS)" in str(err.value)
    with pytest.raises(SpecError) as err:
        add_seeds(spec, runs, runs[0].label, list(range(10, 15)), "redis://127.0.0.1:1/0")
    assert "seeds: 5 seeds; at most 4" in str(err.value)
