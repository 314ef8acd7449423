"""Faults with real processes: ``kill -9`` of the worker, the dashboard and the broker mid-study.

Each scenario starts ``approximant up`` (embedded Valkey, one worker, the dashboard) on a fresh
data directory, submits a small study (two runs of the digits MLP, one after the other), kills
one child of ``up`` with SIGKILL while the first run trains (after its first checkpoint), and
waits, with no help, until every run has ended. Then it stops the stack and audits DuckDB:
for every run's latest attempt, each expected (step, metric) row present exactly once.

Reported per fault: the recovery time, measured from the kill to

* worker:    the run training again under a new attempt (restarted worker, lease lapsed,
             requeued by the reaper, resumed from the checkpoint);
* broker:    the run's progress moving again through the restarted broker;
* dashboard: the restarted dashboard answering its health check (the recorder in it then
             drains what the workers sent meanwhile);

and rows expected / present / lost / duplicated over the study. The lease is short here
(``--lease``, ``APPROXIMANT_LEASE_S``) so that a lost worker's run is requeued in seconds; the
default (30 s) gives about a minute.

Run: ``python benchmarks/bench_faults.py [--steps 6000] [--lease 4] [--faults worker,broker]``.
The tests in ``tests/test_supervision.py`` use the same harness.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from approximant.engine.specs import RunSpec, StudySpec, parse_study
from approximant.tasks.broker import free_port

ROOT = Path(__file__).resolve().parent.parent

FAULTS = ("worker", "broker", "dashboard")
PER_STEP = ("train_loss", "lr", "step_time", "grad_norm")
PER_EVAL = ("val_loss", "val_accuracy")


def study(steps: int, name: str = "faults") -> StudySpec:
    return parse_study({
        "name": name,
        "workload": {"name": "digits_mlp", "settings": {"hidden": 16, "batch_size": 32}},
        "optimizers": [{"name": "sgd", "grid": {"lr": [0.05]}}],
        "seeds": [0, 1], "steps": steps, "eval_every": max(1, steps // 4), "device": "cpu",
    })


def expected_keys(run: RunSpec) -> set[tuple[int, str]]:
    """(step, name) of every row an uninterrupted digits-MLP run writes."""
    evals = {0, run.steps, *range(run.eval_every, run.steps + 1, run.eval_every)}
    return ({(s, n) for s in range(1, run.steps + 1) for n in PER_STEP}
            | {(s, n) for s in evals for n in PER_EVAL})


def wait_for(what: str, predicate: Callable[[], object], timeout: float,
             poll_s: float = 0.2) -> object:
    """Poll until ``predicate()`` is truthy (its value is returned); a deadline only so that a
    broken recovery fails instead of hanging."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except Exception:  # e.g. the broker is down: not yet
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll_s)


def children(pid: int) -> dict[str, int]:
    """The children of process ``pid`` by role (broker, worker, dashboard), from /proc."""
    out: dict[str, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid != pid:
                continue
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
        for role, marker in (("broker", "valkey-server"), ("worker", "approximant.app.cli worker"),
                             ("dashboard", "approximant.app.cli dashboard")):
            if marker in cmd:
                out[role] = int(stat.parent.name)
    return out


def cmdline(pid: int) -> str:
    return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()


@dataclass
class Stack:
    """``approximant up`` on ``data_dir`` as a subprocess, its console in ``log``."""

    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        self.port = free_port()
        self.log = self.data_dir.parent / f"{self.data_dir.name}-up.log"
        env = {**os.environ, "APPROXIMANT_TORCH_THREADS": "1", **self.env}
        env.pop("APPROXIMANT_BROKER_URL", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "approximant.app.cli", "up", "--data-dir", str(self.data_dir),
             "--port", str(self.port), "--workers", "1"],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        wait_for("the stack to start", lambda: self.healthy() and self.worker_ready(), timeout)

    @property
    def broker_url(self) -> str:
        return json.loads((self.data_dir / "stack.json").read_text())["broker_url"]

    def pids(self) -> dict[str, int]:
        return children(self.proc.pid)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_stcore/health",
                                        timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def worker_ready(self) -> bool:
        return "ready." in self.console()

    def console(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self, role: str) -> int:
        pid = self.pids()[role]
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self, timeout: float = 60) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


@contextmanager
def shooting(doc: str, env: dict[str, str] | None = None) -> Iterator[tuple[Path, Stack, str]]:
    """For a screenshot script: its ``--out`` folder (made), ``approximant up`` on a temporary
    data directory with ``env``, and the stack's URL; the stack is stopped on the way out.
    Needs Debian's Chromium (``chromium`` below)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", default="docs/img")
    out = Path(ap.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp) / "data", env=env or {})
        stack.start()
        try:
            yield out, stack, f"http://127.0.0.1:{stack.port}"
        finally:
            print(f"stack stopped with {stack.stop()}")


def chromium(playwright):
    """Debian's headless Chromium (never a downloaded one)."""
    return playwright.chromium.launch(
        executable_path="/usr/bin/chromium",
        args=["--no-sandbox", "--headless", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-background-networking", "--disable-component-update", "--no-first-run"],
    )


def progress(url: str, run_id: str) -> dict[str, str]:
    from approximant.tasks.submit import progress as read

    return read([run_id], url)[run_id]


def audit(data_dir: Path, runs: list[RunSpec]) -> dict:
    """Rows of each run's latest attempt against the expected ones; run statuses."""
    from approximant.storage.db import Database

    db = Database.in_dir(data_dir)
    try:
        with db.read() as cur:
            status = dict(cur.execute("SELECT run_id, status FROM runs").fetchall())
            attempts = dict(cur.execute("SELECT run_id, attempt FROM runs").fetchall())
            out = {"expected": 0, "present": 0, "lost": 0, "duplicated": 0, "extra": 0}
            for run in runs:
                rows = cur.execute(
                    "SELECT step, name, count(*) FROM metrics WHERE run_id = ? AND attempt = ? "
                    "GROUP BY step, name", [run.run_id, attempts.get(run.run_id, 0)]).fetchall()
                have = {(s, n): c for s, n, c in rows}
                want = expected_keys(run)
                out["expected"] += len(want)
                out["present"] += len(want & have.keys())
                out["lost"] += len(want - have.keys())
                out["extra"] += len(have.keys() - want)
                out["duplicated"] += sum(c - 1 for c in have.values())
    finally:
        db.close()
    out["statuses"] = [status.get(r.run_id) for r in runs]
    out["attempts"] = [attempts.get(r.run_id) for r in runs]
    return out


def scenario(fault: str, workdir: Path, steps: int, lease_s: int,
             timeout: float = 240) -> dict:
    """One fault on a fresh stack; the figures of the report's row for it."""
    from approximant.tasks.run import CHECKPOINT_KEY
    from approximant.tasks.submit import submit_study

    stack = Stack(workdir / f"data-{fault}", {"APPROXIMANT_LEASE_S": str(lease_s),
                                              "APPROXIMANT_CHECKPOINT_S": "1"})
    stack.start()
    try:
        url = stack.broker_url
        spec = study(steps, f"faults: {fault}")
        runs = submit_study(spec, url).runs
        first = runs[0].run_id
        from approximant.storage.stream import connect

        client = connect(url)
        wait_for("the first checkpoint", lambda: client.exists(
            CHECKPOINT_KEY.format(run_id=first)), timeout, poll_s=0.05)
        before = progress(url, first)
        old = stack.kill(fault)
        t_kill = time.monotonic()
        new_pid = wait_for(f"the {fault} to be restarted",
                           lambda: stack.pids().get(fault) not in (None, old)
                           and stack.pids()[fault], timeout)
        if fault == "worker":
            wait_for("the run to train again under a new attempt", lambda: (
                (p := progress(url, first)).get("status") in ("running", "finished")
                and int(p.get("attempt", 0)) > int(before["attempt"])), timeout)
        elif fault == "broker":
            wait_for("the run to move on", lambda: (
                int(progress(url, first).get("step", 0)) > int(before["step"])), timeout)
        else:
            wait_for("the dashboard to answer", stack.healthy, timeout)
        recovery_s = time.monotonic() - t_kill
        wait_for("every run to end", lambda: all(
            progress(url, r.run_id).get("status") in ("finished", "failed", "cancelled",
                                                      "diverged") for r in runs), timeout)
        # The recorder drains the stream right after the last event; give it that moment.
        wait_for("the stream to be recorded", lambda: client.xlen("approximant:events") == 0,
                 timeout)
        argv_leak = any(stack_password(stack) in cmdline(pid)
                        for pid in stack.pids().values())
        modes = {name: oct(path.stat().st_mode & 0o777) for name, path in (
            ("stack.json", stack.data_dir / "stack.json"),
            ("password", stack.data_dir / "broker" / "password"))}
    finally:
        code = stack.stop()
    result = audit(stack.data_dir, runs)
    console = stack.console()
    result.update(fault=fault, recovery_s=recovery_s, old_pid=old, new_pid=new_pid,
                  stop_code=code, argv_leak=argv_leak, modes=modes,
                  restart_lines=[ln for ln in console.splitlines() if "restarting in" in ln],
                  console_lines=len(console.splitlines()), resumed=progress_message(stack, first))
    return result


def stack_password(stack: Stack) -> str:
    return (stack.data_dir / "broker" / "password").read_text().strip()


def progress_message(stack: Stack, run_id: str) -> str | None:
    from approximant.storage.db import Database

    db = Database.in_dir(stack.data_dir)
    try:
        with db.read() as cur:
            row = cur.execute("SELECT message FROM runs WHERE run_id = ?", [run_id]).fetchone()
    finally:
        db.close()
    return row[0] if row else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6000, help="steps per run (two runs)")
    ap.add_argument("--lease", type=int, default=4, help="APPROXIMANT_LEASE_S for the stack")
    ap.add_argument("--faults", default=",".join(FAULTS))
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for fault in args.faults.split(","):
            r = scenario(fault, Path(tmp), args.steps, args.lease)
            results.append(r)
            print(f"{fault}: {json.dumps({k: v for k, v in r.items() if k != 'restart_lines'})}",
                  file=sys.stderr, flush=True)
    print(f"\nlease {args.lease} s, checkpoints every 1 s, 2 runs × {args.steps} steps\n")
    print("| fault (kill -9) | recovered after | rows expected | present | lost | duplicated "
          "| runs ended | latest attempts |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['fault']} | {r['recovery_s']:.1f} s | {r['expected']} | {r['present']} | "
              f"{r['lost']} | {r['duplicated']} | {', '.join(map(str, r['statuses']))} | "
              f"{', '.join(map(str, r['attempts']))} |")


if __name__ == "__main__":
    main()
