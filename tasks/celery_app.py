"""The Celery application.

JSON only (nothing is unpickled from the network); late acknowledgement with one task
prefetched, so a worker that dies mid-run leaves its run to be delivered again.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

from celery import Celery
from celery.signals import worker_init, worker_process_init

from approximant.engine.settings import Settings
from approximant.engine.settings import current as current_settings
from approximant.tasks.broker import ENV_BROKER

# How long a delivered, unacknowledged run stays invisible before the broker hands it out
# again. A worker host that dies mid-run is recovered after this long; a run still alive then
# is protected by its lease (tasks/run.py): each period of a long run adds one small copy of its
# message that waits for the run to end, so keep this well above a typical run.
VISIBILITY_TIMEOUT_S = current_settings().visibility_timeout_s

app = Celery("approximant", include=["approximant.tasks.run", "approximant.tasks.lab"])
app.conf.update(
    broker_url=current_settings().broker_url or "redis://127.0.0.1:6379/0",
    result_backend=None,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
    broker_connection_retry_on_startup=True,
    # A lost broker (a restarted embedded one, a team Redis that is down a while) is waited
    # for, never a reason for the worker to exit; a run in progress goes on meanwhile (its
    # late acknowledgement may then not reach the broker: a later redelivery is turned away
    # by the run's claim, see tasks.run).
    broker_connection_max_retries=None,
    worker_cancel_long_running_tasks_on_connection_loss=False,
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
    task_default_queue="approximant",
)


DEFAULT_CHECKPOINT_S = Settings.model_fields["checkpoint_s"].default


def checkpoint_every_s() -> float:
    """Seconds between a running run's checkpoints (see tasks.run); ≤ 0: none."""
    return current_settings().checkpoint_s


def configure(broker_url: str) -> Celery:
    """Point the app at ``broker_url`` (before a worker starts or a task is sent)."""
    app.conf.broker_url = broker_url
    os.environ[ENV_BROKER] = broker_url
    return app


def torch_threads(concurrency: int) -> int:
    """Threads per worker process: ``APPROXIMANT_TORCH_THREADS`` or cores ÷ processes."""
    threads = current_settings().torch_threads
    if threads:
        return threads
    return max(1, (os.cpu_count() or 1) // max(1, concurrency))


# The worker's main process, recorded before it forks its pool (see ``_die_with_parent``).
_worker_pid: int | None = None


@worker_init.connect
def _record_worker_pid(**_: object) -> None:
    global _worker_pid
    _worker_pid = os.getpid()


@worker_init.connect
def _warm_up(**_: object) -> None:
    """Import, before the pool forks, what a first run would import in its pool process.

    torch imports ``torch._dynamo`` at the first optimizer made, and the digits workloads
    import scikit-learn: each seconds on a busy machine, which the person who pressed Run
    would wait for. Done here once, every pool process (restarted ones too) inherits them.
    Imports and a one-element CPU tensor only: no parallel region runs and no device is
    touched before the fork.
    """
    import torch

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
    # Without scikit-learn the digits workloads fail with their own message.
    with contextlib.suppress(ImportError):
        import sklearn.datasets  # noqa: F401


@worker_process_init.connect
def _per_process_setup(**_: object) -> None:
    # Runs in each forked pool process, before any task: never touch CUDA in the parent.
    import torch

    torch.set_num_threads(torch_threads(current_settings().worker_concurrency))
    _die_with_parent()


def _die_with_parent() -> None:
    """Linux: a pool process dies with the worker's main process (e.g. ``kill -9`` of it).

    Left alone it would train on as an orphan nobody supervises or stops, while the restarted
    worker and the reaper treat its run as theirs; dead, its run's lease lapses and the run
    resumes from its checkpoint under the supervised worker.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = _worker_pid if _worker_pid not in (None, os.getpid()) else os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    # The death signal only covers a parent that dies from now on: one already gone (we were
    # reparented before prctl ran) means exiting now.
    if os.getppid() != parent:
        os._exit(1)
