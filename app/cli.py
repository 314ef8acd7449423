"""The terminal front door: ``approximant up | worker | run``.

``up`` starts everything a person needs on one machine (embedded broker unless ``--broker``,
one local worker, the dashboard); ``worker`` serves a broker (team mode); ``run`` runs a study
from a spec file, through a running dashboard if there is one, else on a stack of its own.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import redis

from approximant.app.config import Stack, data_dir, read_stack, remove_stack, write_stack
from approximant.engine.settings import ENV as SETTINGS_ENV
from approximant.engine.settings import Settings
from approximant.storage.stream import TERMINAL
from approximant.tasks.broker import (
    ENV_BROKER,
    EmbeddedBroker,
    check_broker,
    explicit_broker,
    masked,
)

log = logging.getLogger("approximant")


def _child(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    # A session of its own: Ctrl-C reaches only us, and we stop the children in order.
    return subprocess.Popen([sys.executable, "-m", "approximant.app.cli", *args],
                            env={**os.environ, **(env or {})}, start_new_session=True)


def _broker_env(url: str) -> dict[str, str]:
    # The URL may carry a password: children get it by environment, which only their user can
    # read, never in argv, which ``ps`` shows to everyone.
    return {ENV_BROKER: url}


class _Proc(Protocol):
    def poll(self) -> int | None: ...


class _BrokerProc:
    """The embedded broker seen as a child process (``poll``) for the supervisor."""

    def __init__(self, broker: EmbeddedBroker) -> None:
        self.broker = broker

    def poll(self) -> int | None:
        if self.broker.alive():
            return None
        code = self.broker.returncode
        return -1 if code is None else code

    @classmethod
    def restarted(cls, broker: EmbeddedBroker) -> _BrokerProc:
        broker.restart()  # same port, password and data: the children's URL stays valid
        return cls(broker)


# -- stop signals ------------------------------------------------------------------------------
class _Interrupted(Exception):
    pass


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# While a child is being started a stop signal waits (see ``_stop_signals_held``).
_held = {"depth": 0, "pending": None}


def _raise_interrupt(signum: int, _frame: object) -> None:
    name = signal.Signals(signum).name
    if _held["depth"]:
        _held["pending"] = name
        return
    raise _Interrupted(name)


@contextmanager
def _stop_signals_held() -> Iterator[None]:
    """A stop signal (Ctrl-C) that arrives inside the block is raised at its end instead.

    Starting a child and recording it must not be split: interrupted between the two, the child
    would run on with nobody left to stop it. Not a signal mask, which children would inherit.
    """
    _held["depth"] += 1
    try:
        yield
    finally:
        _held["depth"] -= 1
    if not _held["depth"] and _held["pending"]:
        name, _held["pending"] = _held["pending"], None
        raise _Interrupted(name)


def _on_stop_signals() -> dict:
    """Ctrl-C, SIGTERM and a closed terminal all mean an orderly stop; returns the old handlers.

    Set explicitly: a process started in the background by a script inherits SIGINT ignored.
    """
    _held["pending"] = None
    return {sig: signal.signal(sig, _raise_interrupt) for sig in _STOP_SIGNALS}


def _restore_signals(old: dict) -> None:
    for sig, handler in old.items():
        signal.signal(sig, handler)


# Exit code of a child that refused its configuration (e.g. the dashboard asked to serve an open
# address without access control): restarting it would only refuse again, every 30 s forever.
REFUSED = 2


class ChildRefused(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


# Back-off between restarts of a child that keeps dying: doubles from 1 s up to this; a child
# that stayed up for STABLE_S starts again from 1 s.
RESTART_MAX_S = 30.0
STABLE_S = 60.0


class Supervised:
    """One child of ``up``: restarted with back-off whenever it exits, until the stack stops.

    A child that exits with ``REFUSED`` (2, a configuration refusal) is not restarted: ``check``
    raises ``ChildRefused`` and the stack stops. Create one inside ``_stop_signals_held`` along
    with recording it, as ``check`` does for restarts.
    """

    def __init__(self, name: str, spawn: Callable[[], _Proc], proc: _Proc | None = None) -> None:
        self.name = name
        self.spawn = spawn
        self.proc = proc if proc is not None else spawn()
        self.started = time.monotonic()
        self.restarts = 0
        self.delay = 1.0
        self.due: float | None = None  # when a restart is scheduled

    def check(self, now: float) -> None:
        """Notice an exit (and schedule a restart), or restart when one is due."""
        if self.due is None:
            code = self.proc.poll()
            if code == REFUSED:
                raise ChildRefused(self.name)
            if code is not None:
                self._schedule(now, f"exited ({code})")
        elif now >= self.due:
            with _stop_signals_held():  # a Ctrl-C now stops the new child too, not orphans it
                try:
                    self.proc = self.spawn()
                except Exception as err:  # e.g. the broker's port is taken: try again later
                    self._schedule(now, f"could not start ({err})")
                    return
                self.started, self.due = now, None
            print(f"Approximant: the {self.name} is running again.", file=sys.stderr,
                  flush=True)

    def _schedule(self, now: float, why: str) -> None:
        if self.due is None and now - self.started >= STABLE_S:
            self.delay = 1.0
        self.restarts += 1
        self.due = now + self.delay
        print(f"Approximant: the {self.name} {why}; restarting in {self.delay:g} s "
              f"(restart {self.restarts})", file=sys.stderr, flush=True)
        self.delay = min(self.delay * 2, RESTART_MAX_S)

    def popen(self) -> subprocess.Popen | None:
        return self.proc if isinstance(self.proc, subprocess.Popen) else None


def _stop_child(proc: subprocess.Popen | None, name: str, grace_s: float,
                cold: signal.Signals | None = None) -> None:
    """SIGTERM; after ``grace_s`` the ``cold`` signal (if any), then SIGKILL.

    For a Celery worker SIGTERM is a warm shutdown (it waits for the running task) and SIGQUIT a
    cold one, which puts the unacknowledged run back on the queue for the next worker.
    """
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    for sig in ((cold,) if cold else ()) + (signal.SIGKILL,):
        try:
            proc.wait(grace_s)
            return
        except subprocess.TimeoutExpired:
            log.warning("%s still running after %.0fs; sending %s", name, grace_s, sig.name)
            proc.send_signal(sig)
    proc.wait(10)


def _stop_stack(worker: subprocess.Popen | None, dashboard: subprocess.Popen | None,
                broker: EmbeddedBroker | None) -> None:
    """Worker first (its last rows reach the stream), then the recorder's host, then the broker."""
    # A second Ctrl-C must not cut the orderly stop short: every wait below is bounded.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _stop_child(worker, "worker", 5, cold=signal.SIGQUIT)
    _stop_child(dashboard, "dashboard", 15)
    if broker is not None:
        broker.stop()


def _start_broker(args: argparse.Namespace, directory: Path) -> tuple[str, EmbeddedBroker | None]:
    url = explicit_broker(getattr(args, "broker", None))
    if url:
        check_broker(url)
        return url, None
    broker = EmbeddedBroker(directory, port=getattr(args, "broker_port", None))
    return broker.start(), broker


# -- the data directory ------------------------------------------------------------------------
PRIVATE_UMASK = 0o077


def _make_private_dir(directory: Path) -> None:
    """Create the data directory readable by this user only (studies, share tokens, the
    broker's files); an existing one keeps its mode, which is the operator's choice."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)


# -- up ----------------------------------------------------------------------------------------
def _refuse_open_bind(command: str, host: str) -> bool:
    """Print why ``host`` may not be served as configured (access control); True if refused."""
    from approximant.app.access import bind_refusal

    reason = bind_refusal(host)
    if reason:
        print(f"approximant {command}: {reason}", file=sys.stderr)
    return reason is not None


def cmd_up(args: argparse.Namespace) -> int:
    if _refuse_open_bind("up", args.host):
        return 2
    directory = data_dir(args.data_dir)
    _make_private_dir(directory)
    if (running := read_stack(directory)) is not None:
        print(f"Approximant is already running for {directory} at {running.dashboard_url} "
              f"(pid {running.pid}).", file=sys.stderr)
        return 1
    url, broker = _start_broker(args, directory)
    children: list[Supervised] = []
    _on_stop_signals()
    try:
        env = _broker_env(url)
        dashboard_args = ["dashboard", "--data-dir", str(directory),
                          "--host", args.host, "--port", str(args.port)]
        with _stop_signals_held():  # each child is recorded as soon as it is started
            if broker is not None:
                children.append(Supervised("broker", lambda: _BrokerProc.restarted(broker),
                                           _BrokerProc(broker)))
            if args.workers > 0:
                children.append(Supervised("worker", lambda: _child(
                    ["worker", "--concurrency", str(args.workers)], env)))
            children.append(Supervised("dashboard", lambda: _child(dashboard_args, env)))
        shown_host = "localhost" if args.host in ("127.0.0.1", "0.0.0.0") else args.host
        dash_url = f"http://{shown_host}:{args.port}"
        write_stack(directory, Stack(os.getpid(), url, dash_url))
        print(f"Approximant: dashboard {dash_url} · broker {masked(url)}"
              f"{' (embedded)' if broker else ''} · data {directory}\nPress Ctrl-C to stop.",
              flush=True)
        while True:
            # A child that dies is restarted, not a reason to stop the others: workers and the
            # recorder wait for a restarted broker, runs resume from their checkpoints.
            for child in children:
                child.check(time.monotonic())
            time.sleep(0.5)
    except (KeyboardInterrupt, _Interrupted):
        print("\nApproximant: stopping…", flush=True)
        return 0
    except ChildRefused as err:
        print(f"Approximant: the {err.name} refused its configuration (exit {REFUSED}; its "
              "message is above) and is not restarted; stopping.", file=sys.stderr, flush=True)
        return REFUSED
    finally:
        procs = {c.name: c.popen() for c in children}
        _stop_stack(procs.get("worker"), procs.get("dashboard"), broker)
        remove_stack(directory)


# -- dashboard (internal: started by up) -------------------------------------------------------
def cmd_dashboard(args: argparse.Namespace) -> int:
    if _refuse_open_bind("dashboard", args.host):
        return 2
    from approximant.app.server import serve

    return serve(data_dir(args.data_dir), explicit_broker(args.broker), args.host, args.port)


# -- worker ------------------------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace) -> int:
    url = explicit_broker(args.broker)
    if not url:
        directory = data_dir(args.data_dir)
        stack = read_stack(directory)
        if stack is None:
            print("worker: no broker: pass --broker redis://host:port/0, set "
                  f"{ENV_BROKER}, or start `approximant up` first.", file=sys.stderr)
            return 2
        url = stack.broker_url
    check_broker(url)
    from approximant.tasks.celery_app import app, configure

    configure(url)
    os.environ[SETTINGS_ENV["worker_concurrency"]] = str(args.concurrency)
    # Containers commonly run as root; Celery's warning about it would be printed every start.
    warnings.filterwarnings("ignore", message=".*superuser privileges.*")
    # We keep a run going through a broker outage on purpose (tasks.celery_app); Celery warns
    # about that choice at every reconnection.
    warnings.filterwarnings("ignore", message=".*worker_cancel_long_running_tasks_on_connecti")
    quiet = ["--quiet"] if args.loglevel.upper() in ("WARNING", "ERROR") else []
    app.worker_main([
        *quiet, "worker", f"--concurrency={args.concurrency}", "--pool=prefork",
        f"--loglevel={args.loglevel}", "-Q", app.conf.task_default_queue,
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        f"--hostname={args.name}",
    ])
    return 0


# -- run ---------------------------------------------------------------------------------------
def _wait_for_runs(runs, url: str, worker: subprocess.Popen | None = None,
                   poll_s: float = 1.0) -> dict[str, dict[str, str]]:
    from approximant.app.progress import ProgressView
    from approximant.tasks.submit import progress

    view = ProgressView(runs)
    poll_s = min(poll_s, 0.5) if view.live else poll_s  # a live bar moves, a log does not
    while True:
        if worker is not None and worker.poll() is not None:
            raise RuntimeError(f"the local worker exited ({worker.returncode}); runs stay "
                               "queued and resume with the next worker")
        states = progress([r.run_id for r in runs], url)
        done = sum(states.get(r.run_id, {}).get("status") in TERMINAL for r in runs)
        if done == len(runs):
            view.close(states)
            return states
        view.update(states)
        time.sleep(poll_s)


def _list_presets() -> int:
    from approximant.app.presets import presets
    from approximant.engine.errors import SpecError
    from approximant.engine.specs import parse_study

    found = presets()
    if not found:
        print("run: no presets found (set APPROXIMANT_PRESETS_DIR to examples/presets of a "
              "checkout)", file=sys.stderr)
        return 2
    for name, preset in found.items():
        try:
            runs = f"{parse_study(preset.data()).n_runs()} runs"
        except SpecError:
            runs = "invalid"
        print(f"{name} ({runs}): {preset.summary}")
    return 0


def _read_spec(args: argparse.Namespace) -> tuple[str, str] | int:
    """Where the spec comes from (for messages) and its text, from a file or a preset; an
    exit code when neither can be read."""
    from approximant.app import presets

    if bool(args.spec) == bool(args.preset):
        print("run: give a spec file or --preset NAME (one of them; --list-presets lists the "
              "presets)", file=sys.stderr)
        return 2
    try:
        if args.preset:
            preset = presets.get(args.preset)
            return f"preset {preset.name}", preset.text
        return args.spec, Path(args.spec).read_text()
    except OSError as err:
        print(f"run: cannot read {args.spec}: {err.strerror}", file=sys.stderr)
    except ValueError as err:
        print(f"run: {err}", file=sys.stderr)
    return 2


def cmd_run(args: argparse.Namespace) -> int:
    import tomllib

    from approximant.app.presets import shorten
    from approximant.engine.errors import SpecError
    from approximant.engine.specs import parse_study, parse_study_toml
    from approximant.tasks.submit import submit_study

    if args.list_presets:
        return _list_presets()
    read = _read_spec(args)
    if isinstance(read, int):
        return read
    source, text = read
    try:
        spec = parse_study_toml(text)  # the spec as written must be valid, shortened or not
        if args.max_steps is not None or args.max_values is not None:
            spec = parse_study(shorten(tomllib.loads(text), args.max_steps, args.max_values))
    except (SpecError, ValueError) as err:
        print(f"run: {source} is not a valid study:", file=sys.stderr)
        for line in str(err).splitlines():
            print(f"  {line}", file=sys.stderr)
        return 2
    directory = data_dir(args.data_dir)
    url = explicit_broker(args.broker)
    stack = None if url else read_stack(directory)
    if stack is not None and not stack.dashboard_url:
        print(f"run: another `approximant run` (pid {stack.pid}) owns {directory}; wait for it, "
              "or start `approximant up` and submit to it", file=sys.stderr)
        return 1
    if stack is not None:
        url = stack.broker_url
        print(f"run: submitting to the dashboard at {stack.dashboard_url}")
    if url is None and args.no_wait:
        print("run: --no-wait needs a running dashboard (`approximant up`) or --broker with "
              "workers: without them nothing would train after this command returns",
              file=sys.stderr)
        return 2
    owned: dict = {}
    old_handlers = _on_stop_signals()
    try:
        if url is None:
            with _stop_signals_held():  # what it starts is recorded before a Ctrl-C stops it
                owned = _own_stack(directory, args)
            url = owned["url"]
        else:
            check_broker(url)
        sub = submit_study(spec, url)
        print(f"run: study {spec.study_id} '{spec.name}': {len(sub.runs)} runs "
              f"({sub.queued} queued now)", flush=True)
        if args.no_wait:
            return 0
        states = _wait_for_runs(sub.runs, url, owned.get("worker"))
        if owned:
            owned["recorder"].drain()
        ended = [states[r.run_id].get("status") for r in sub.runs]
        counts = {s: ended.count(s) for s in TERMINAL if ended.count(s)}
        print("run: done — " + ", ".join(f"{n} {s}" for s, n in counts.items()))
        failed = counts.get("failed", 0)
        if stack is not None:
            print(f"run: results at {stack.dashboard_url}/study?study={spec.study_id}")
        return 1 if failed else 0
    except (KeyboardInterrupt, _Interrupted):
        print("\nrun: interrupted; queued runs stay queued and resume with the next worker.")
        return 130
    finally:
        if owned:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            _stop_child(owned["worker"], "worker", 5, cold=signal.SIGQUIT)
            owned["recorder"].stop()
            owned["recorder"].drain()
            owned["recorder"].close()
            owned["recorder"].release()
            owned["db"].close()
            owned["broker"].stop()
            remove_stack(directory)
        _restore_signals(old_handlers)


def _own_stack(directory: Path, args: argparse.Namespace) -> dict:
    """Broker, worker and recorder for the length of one headless ``run``."""
    from approximant.storage.db import Database
    from approximant.storage.recorder import Recorder
    from approximant.storage.stream import EventStream, connect

    _make_private_dir(directory)
    db = Database.in_dir(directory)
    broker = EmbeddedBroker(directory)
    url = broker.start()
    recorder = Recorder(db, EventStream(connect(url)))
    recorder.acquire()
    recorder.start()
    worker = _child(["worker", "--concurrency", str(args.workers), "--loglevel", "WARNING"],
                    _broker_env(url))
    write_stack(directory, Stack(os.getpid(), url, ""))
    print(f"run: no dashboard running for {directory}; started a local broker and worker")
    return {"url": url, "broker": broker, "db": db, "recorder": recorder, "worker": worker}


# -- parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="approximant", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--data-dir", help="data directory (default ./.approximant or "
                        "$APPROXIMANT_DATA_DIR)")
        sp.add_argument("--broker", help=f"redis:// URL of an external broker (or ${ENV_BROKER});"
                        " default: an embedded Valkey server")

    up = sub.add_parser("up", help="start the dashboard, a local worker and the broker")
    common(up)
    up.add_argument("--host", default="127.0.0.1", help="dashboard address (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8501, help="dashboard port (default 8501)")
    up.add_argument("--workers", type=int, default=1,
                    help="local worker processes (default 1; 0 for none)")
    up.add_argument("--broker-port", type=int, default=None,
                    help="port of the embedded broker (default: a free one)")
    up.set_defaults(func=cmd_up)

    dash = sub.add_parser("dashboard", help=argparse.SUPPRESS)
    common(dash)
    dash.add_argument("--host", default="127.0.0.1")
    dash.add_argument("--port", type=int, default=8501)
    dash.set_defaults(func=cmd_dashboard)

    wk = sub.add_parser("worker", help="run training tasks from a broker (team mode)")
    common(wk)
    wk.add_argument("--concurrency", type=int, default=1, help="processes (default 1)")
    wk.add_argument("--loglevel", default="INFO")
    wk.add_argument("--name", default="approximant@%h", help="worker node name")
    wk.set_defaults(func=cmd_worker)

    rn = sub.add_parser("run", help="run a study from a TOML spec file")
    common(rn)
    rn.add_argument("spec", nargs="?", help="path to a study spec (.toml)")
    rn.add_argument("--preset", help="run a preset instead of a file (examples/presets/: "
                    "digits-quick, step-size-optimality, spectral-families; see "
                    "--list-presets)")
    rn.add_argument("--list-presets", action="store_true",
                    help="list the presets with their size and purpose, and exit")
    rn.add_argument("--max-steps", type=int, default=None, metavar="N",
                    help="cut every run to at most N steps (cadences fitted; the study's name "
                    "says so and it gets its own id): a smoke test of a spec")
    rn.add_argument("--max-values", type=int, default=None, metavar="N",
                    help="keep only the first N seeds and the first N values of every grid "
                    "list (with --max-steps: a preset's smoke test in seconds)")
    rn.add_argument("--workers", type=int, default=1,
                    help="local worker processes when no dashboard is running (default 1)")
    rn.add_argument("--no-wait", action="store_true", help="submit and return")
    rn.set_defaults(func=cmd_run)

    ex = sub.add_parser("export", help="write a study's HTML snapshot and Parquet data "
                        "(while no dashboard holds the data directory)")
    ex.add_argument("--data-dir", help="data directory (default ./.approximant or "
                    "$APPROXIMANT_DATA_DIR)")
    ex.add_argument("study", help="study id or exact name")
    ex.add_argument("--out", default=".", help="output folder (default: here)")
    ex.add_argument("--view", default="", help="view settings as in the study page's URL, "
                    "e.g. 'band=bootstrap&group=optimizer&x=wall'")
    ex.set_defaults(func=cmd_export)

    rp = sub.add_parser("report", help="write a reproduction report (Markdown + SVG) of the "
                        "paper's claims from one or more studies (while no dashboard holds "
                        "the data directory)")
    rp.add_argument("--data-dir", help="data directory (default ./.approximant or "
                    "$APPROXIMANT_DATA_DIR)")
    rp.add_argument("study", nargs="+", help="study id, exact name, or the preset it was run "
                    "from (e.g. spectral-families)")
    rp.add_argument("--out", default=".", help="output folder: NAME.md and img/repro-*.svg "
                    "(default: here)")
    rp.add_argument("--name", default="report", help="the Markdown file's name without .md "
                    "(default: report)")
    rp.add_argument("--command", default="", help="the commands that regenerate the studies "
                    "and this report, quoted in it")
    rp.add_argument("--notes", default="", help="a Markdown file whose text goes under the "
                    "studies table (e.g. measured run times)")
    rp.set_defaults(func=cmd_report)
    return p


def cmd_report(args: argparse.Namespace) -> int:
    """Each claim of the paper against the given studies: verdicts, numbers and figures."""
    from approximant.app import reproduction
    from approximant.storage.db import Database
    from approximant.storage.queries import Queries

    notes = Path(args.notes).read_text() if args.notes else ""
    db = Database.in_dir(data_dir(args.data_dir))  # refuses clearly if a dashboard owns it
    try:
        q = Queries(db)
        try:
            ids = [reproduction.resolve(q, s) for s in args.study]
        except ValueError as err:
            print(f"report: {err}", file=sys.stderr)
            return 2
        path, figures = reproduction.write(db, list(dict.fromkeys(ids)), Path(args.out),
                                           args.name, args.command, notes)
    finally:
        db.close()
    print(f"wrote {path} and {len(figures)} figures in {path.parent / 'img'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a study's snapshot (HTML) and raw data (Parquet), as the study page's downloads."""
    from urllib.parse import parse_qsl

    from approximant.app.report import StudyData, View, build
    from approximant.app.snapshot import build_snapshot
    from approximant.storage.analytics import Analytics
    from approximant.storage.db import Database
    from approximant.storage.export import study_parquet
    from approximant.storage.queries import Queries

    db = Database.in_dir(data_dir(args.data_dir))  # refuses clearly if a dashboard owns it
    try:
        q = Queries(db)
        studies = q.studies()
        match = studies[(studies["study_id"] == args.study) | (studies["name"] == args.study)]
        if len(match) != 1:
            known = ", ".join(f"{r.study_id} ({r.name})" for r in studies.itertuples()) or "none"
            what = "is ambiguous" if len(match) > 1 else "matches no study"
            print(f"export: study {args.study!r} {what}; studies: {known}", file=sys.stderr)
            return 2
        study = q.study(match["study_id"].iloc[0])
        view = View.from_query(dict(parse_qsl(args.view.lstrip("?"))))
        charts, tables = build(StudyData(Analytics(db), study["study_id"]), q, study["spec"],
                               view)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        name = "".join(ch if ch.isalnum() else "-" for ch in study["name"]).strip("-")
        html_path = out / f"{name or study['study_id']}-snapshot.html"
        meta = (f"{study['study_id']} · workload {study['workload']} · "
                f"{q.data_version(study['study_id'])[0]} runs")
        html_path.write_text(build_snapshot(study["name"], meta, charts, tables, study["spec"]))
        parquet_path = html_path.with_name(html_path.name.replace("-snapshot.html",
                                                                  "-metrics.parquet"))
        parquet_path.write_bytes(study_parquet(db, study["study_id"]))
    finally:
        db.close()
    print(f"wrote {html_path} ({len(charts)} charts, {len(tables)} tables) and {parquet_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    for flag, low in (("workers", 0), ("port", 1), ("concurrency", 1)):
        value = getattr(args, flag, None)
        if value is not None and value < low:
            print(f"--{flag}: must be ≥ {low} (got {value})", file=sys.stderr)
            return 2
    old_umask = None
    if args.command in ("up", "run", "dashboard", "worker"):
        # Whatever these create (the data directory, the database, the broker's files, a
        # worker's files) is this user's alone; children inherit the mask.
        old_umask = os.umask(PRIVATE_UMASK)
    try:
        # Every setting is checked before anything starts: a bad one fails here, naming its
        # variable, not later inside every run or child.
        Settings.from_env()
        return int(args.func(args) or 0)
    except (ConnectionError, redis.ConnectionError, redis.TimeoutError) as err:
        # The broker may be back in a moment: 1, not the configuration refusal (2) that `up`
        # stops for instead of restarting the child.
        print(f"approximant {args.command}: {err}", file=sys.stderr)
        return 1
    except (ValueError, RuntimeError, redis.RedisError) as err:
        print(f"approximant {args.command}: {err}", file=sys.stderr)
        return REFUSED
    finally:
        if old_umask is not None:
            os.umask(old_umask)


if __name__ == "__main__":
    sys.exit(main())
