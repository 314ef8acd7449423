"""Log a training script of your own into a study, live beside the built-in runs.

    import approximant

    with approximant.start_run("my study", optimizer="freon", config={"lr": 0.02, "c": 2 / 3},
                               seed=0, steps=1000) as run:
        for step in range(run.resume_step + 1, 1000 + 1):
            loss = train_one_step()
            run.log(step, train_loss=loss)

The run talks to the broker the dashboard reads (``approximant up`` on this data directory, or
``APPROXIMANT_BROKER_URL``), with the guarantees of a built-in run:

* each row (run, step, metric) is stored once, however often it is sent: a row sent again
  after a restart is ignored, the first copy kept;
* ``log`` never waits for the broker: rows are sent from a background thread every second,
  and held (in memory) while the broker is away, then sent when it is back;
* a script started again with the same study, optimizer, config and seed continues its run as
  a new attempt that keeps the earlier rows; ``resume_step`` says where they end, so a script
  with a checkpoint knows where to go on from;
* if two processes log the same run, the later one wins and the earlier one's ``log`` raises.

Runs are grouped by optimizer and config as on the study page (seeds of one config form its
band); a study is identified by its name, so scripts that give the same name fill one study.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from approximant.storage.events import SCRIPT

log = logging.getLogger(__name__)

# What the study page and the recorder accept as a metric's name.
_METRIC = re.compile(r"^[A-Za-z][A-Za-z0-9_./-]{0,63}$")
SOURCE = SCRIPT
FLUSH_S = 1.0


def study_id_for(name: str) -> str:
    """A script study's id: a function of its name (built-in studies hash their whole spec)."""
    return "st-" + hashlib.sha256(f"{SOURCE}|{name}".encode()).hexdigest()[:12]


def _config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (config or {}).items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", key):
            raise ValueError(f"config: keys must be identifiers of at most 64 characters "
                             f"(got {key!r})")
        finite = isinstance(value, float) and math.isfinite(value)
        # Strings become part of the group's label ("freon[c=0.667,lr=0.02]"): no separators.
        word = isinstance(value, str) and re.fullmatch(r"[\w.+-]{0,64}", value)
        if finite or value is None or word or isinstance(value, bool | int):
            out[key] = value
        else:
            raise ValueError(f"config.{key}: a finite number, a bool, None or a word of "
                             f"letters, digits and _ . + - (got {value!r})")
    return out


def _broker_url(broker: str | None, data_dir: str | os.PathLike | None) -> str:
    from approximant.app.config import data_dir as resolve_dir
    from approximant.app.config import read_stack
    from approximant.engine.settings import current
    from approximant.tasks.broker import ENV_BROKER

    if broker:
        return broker
    if current().broker_url:
        return current().broker_url
    directory = resolve_dir(str(data_dir) if data_dir is not None else None)
    stack = read_stack(directory)
    if stack is None or not stack.dashboard_url:
        raise RuntimeError(
            f"no running dashboard for {directory}: start `approximant up` there, or pass "
            f"broker= (or set {ENV_BROKER}) to log to a team broker")
    return stack.broker_url


class Run:
    """One run of a script study; make it with :func:`start_run`."""

    def __init__(self, study: str, optimizer: str, config: Mapping[str, Any] | None, seed: int,
                 steps: int, broker: str | None, data_dir: str | os.PathLike | None) -> None:
        from approximant.engine.errors import check_name
        from approximant.engine.specs import run_label

        if not isinstance(study, str) or not 1 <= len(study) <= 120:
            raise ValueError(f"study: a name of 1 to 120 characters (got {study!r})")
        check_name(study, "study")
        if not isinstance(optimizer, str) or not re.fullmatch(r"[A-Za-z][\w.-]{0,63}",
                                                               optimizer):
            raise ValueError(f"optimizer: a name of letters, digits, '_', '.' or '-', at most "
                             f"64 characters (got {optimizer!r})")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
            raise ValueError(f"seed: a whole number in [0, 2^31) (got {seed!r})")
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 10**9:
            raise ValueError(f"steps: the planned number of steps, 1 to 1e9 (got {steps!r})")
        hparams = _config(config)
        self.study_name = study
        self.study_id = study_id_for(study)
        self.label = run_label(optimizer, hparams)
        # The exact config, not its label: the label rounds floats to 6 digits and writes 1 and
        # 1.0, or True and "True", alike; two configs must never share a run.
        exact = json.dumps([optimizer, hparams, seed], sort_keys=True)
        digest = hashlib.sha256(f"{self.study_id}|{exact}".encode())
        self.run_id = f"{self.study_id}-{digest.hexdigest()[:10]}"
        self.steps = steps
        self._spec = {
            "study_id": self.study_id, "run_id": self.run_id, "label": self.label,
            "workload": {"name": SOURCE, "settings": {}}, "optimizer": optimizer,
            "hparams": hparams, "seed": seed, "steps": steps, "eval_every": 1,
            "device": SOURCE,
        }
        self._url = _broker_url(broker, data_dir)
        self._lock = threading.Lock()  # the rows held
        self._sending = threading.Lock()  # the publisher (not thread-safe)
        self._rows: list[dict[str, Any]] = []
        self._names: set[str] = set()
        self._t0 = time.monotonic()
        self._started_at = time.time()
        self._stop = threading.Event()
        self._ended: str | None = None
        self.cancelled = False
        self._start()

    # -- lifecycle ---------------------------------------------------------------------------
    def _start(self) -> None:
        from approximant.storage.events import StudyEvent
        from approximant.storage.stream import EventStream, connect, now
        from approximant.tasks.publisher import ATTEMPT_KEY, PROGRESS_KEY, MetricPublisher

        client = connect(self._url)
        self._client = client
        stream = EventStream(client)
        study = {"name": self.study_name, "source": SOURCE,
                 "workload": {"name": SOURCE, "settings": {}},
                 "optimizers": [{"name": self._spec["optimizer"], "grid": {}}],
                 "seeds": [self._spec["seed"]], "steps": self.steps, "eval_every": 1,
                 "device": SOURCE}
        before = {k.decode(): v.decode() for k, v in
                  client.hgetall(PROGRESS_KEY.format(run_id=self.run_id)).items()}
        self.attempt = int(client.incr(ATTEMPT_KEY.format(run_id=self.run_id)))
        stream.append([StudyEvent(study_id=self.study_id, spec=study, runs=[self._spec],
                                  ts=now())])
        prev_attempt, prev_step = int(before.get("attempt", 0)), int(before.get("step", 0))
        # Where the earlier attempts' rows end: 0 for a new run (steps start at 1 by convention,
        # step 0 being the evaluation before training).
        self.resume_step = prev_step if prev_attempt else 0
        resumed = ({"attempt": prev_attempt, "step": prev_step}
                   if prev_attempt and prev_step > 0 else None)
        self._publisher = MetricPublisher(stream, self.run_id, self.attempt, self.steps,
                                          worker=f"script {socket.gethostname()}:{os.getpid()}",
                                          interval_s=FLUSH_S)
        self._publisher.last_step = self.resume_step
        message = (f"resumed from step {prev_step} (attempt {prev_attempt})" if resumed
                   else "logging from a script")
        self._publisher.flush("running", message, resumed_from=resumed)
        self._publisher.start_heartbeat()
        self._thread = threading.Thread(target=self._sender, daemon=True,
                                        name=f"approximant-{self.run_id}")
        self._thread.start()
        # A script that ends without finish() (no context manager) still sends what it logged;
        # its run stays "running", as a crashed script's does, until it is started again.
        atexit.register(self._at_exit)

    def _at_exit(self) -> None:
        if self._ended is None and not self._publisher.superseded:
            self.flush()

    def log(self, step: int, **metrics: float) -> None:
        """Record ``metrics`` (name=value) at ``step``; returns at once (sent in the
        background). Names as on the study page: ``train_loss``, ``val_loss``,
        ``val_accuracy``, or any other of letters, digits and ``_ . / -``."""
        if self._ended is not None:
            raise RuntimeError(f"run {self.run_id} has ended ({self._ended}); start a new one")
        if self._publisher.superseded:
            raise RuntimeError(f"run {self.run_id}: a later process took this run over "
                               "(the same study, optimizer, config and seed); this one stops")
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= 10**12:
            raise ValueError(f"step: a whole number ≥ 0 (got {step!r})")
        wall = time.monotonic() - self._t0
        rows = []
        for name, value in metrics.items():
            if name not in self._names:  # each name checked once: log is the hot path
                if not _METRIC.match(name):
                    raise ValueError(f"metric {name!r}: letters, digits and _ . / - , "
                                     "starting with a letter, at most 64 characters")
                self._names.add(name)
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{name}: a number (got {value!r})") from None
            rows.append({"step": step, "name": name, "value": number, "wall_s": wall,
                         "tokens": None})
        with self._lock:
            self._rows.extend(rows)

    def flush(self) -> None:
        """Send every row logged so far and wait until the broker has them (through an
        outage, however long). Call it before saving a checkpoint: the rows up to the
        checkpoint's step are then recorded, so a run resumed from it has no gap."""
        with self._sending:
            self._send_held()
            if self._publisher.pending:
                self._publisher.flush()

    def finish(self, status: str = "finished", message: str | None = None) -> None:
        """Send what is held and end the run (``finished``, ``failed``, ``diverged`` or
        ``cancelled``). Waits for the broker if it is away: nothing logged is dropped."""
        from approximant.storage.stream import TERMINAL

        if status not in TERMINAL:
            raise ValueError(f"status: one of {', '.join(TERMINAL)} (got {status!r})")
        if self._ended is not None:
            return
        self._ended = status
        atexit.unregister(self._at_exit)
        self._stop.set()
        self._thread.join()
        with self._sending:
            self._send_held()
            self._publisher.stop_heartbeat()
            if not self._publisher.superseded:
                self._publisher.flush(status, message)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None or (issubclass(kind, SystemExit) and err.code in (0, None)):
            self.finish("finished")
        elif issubclass(kind, KeyboardInterrupt):
            self.finish("cancelled", "interrupted")
        else:
            self.finish("failed", f"{kind.__name__}: {err}"[:2000])

    # -- background sending ------------------------------------------------------------------
    def _send_held(self) -> None:
        """Hand the rows held to the publisher (which sends when due); with ``_sending``."""
        with self._lock:
            rows, self._rows = self._rows, []
        if rows:
            self._publisher.add(rows)

    def _cancel_asked(self) -> bool:
        """Whether the dashboard asked this run, or its study, to stop since this process
        started: a cancel from before it is not for it, so a script started again after a
        cancel continues (cancel requests hold the time they were asked at)."""
        from approximant.tasks.publisher import CANCEL_RUN_KEY, CANCEL_STUDY_KEY

        asked = self._client.mget(CANCEL_RUN_KEY.format(run_id=self.run_id),
                                  CANCEL_STUDY_KEY.format(study_id=self.study_id))
        return any(float(v) >= self._started_at for v in asked if v is not None)

    def _sender(self) -> None:
        from approximant.storage.stream import BROKER_ERRORS, Outage

        outage = Outage(f"run {self.run_id}", log)  # one warning an outage, not one a poll
        while not self._stop.wait(FLUSH_S / 4):
            try:
                with self._sending:
                    self._send_held()
                    if self._publisher.pending and (
                            time.monotonic() - self._publisher.last_flush >= FLUSH_S):
                        self._publisher.flush()
                self.cancelled = self._cancel_asked()
                outage.back()
            except BROKER_ERRORS as err:
                outage.lost(err)
            except Exception:  # the publisher retries through outages; anything else is ours
                log.exception("run %s: sending rows failed; they are kept for the next try",
                              self.run_id)


def start_run(study: str, *, optimizer: str, config: Mapping[str, Any] | None = None,
              seed: int = 0, steps: int, broker: str | None = None,
              data_dir: str | os.PathLike | None = None) -> Run:
    """Start (or continue) the run of ``optimizer`` with ``config`` at ``seed`` in the script
    study named ``study``; use it as a context manager, or call ``finish()``.

    Args:
        study: the study's name (1–120 characters); scripts giving the same name share it.
        optimizer: the optimizer's name as the study page shows it ("freon", "adamw", ...).
        config: its hyper-parameters (numbers, strings, bools): the config the seeds of a
            group share, shown as "Freon (c = ⅔, lr = 0.02)".
        seed: this run's seed.
        steps: the planned number of steps (the progress bar's end).
        broker: the broker URL; by default ``APPROXIMANT_BROKER_URL``, else the running
            ``approximant up`` of ``data_dir`` (default ``APPROXIMANT_DATA_DIR`` or
            ``./.approximant``).
    """
    return Run(study, optimizer, config, seed, steps, broker, data_dir)
