"""Shared fixtures: a real embedded Valkey broker, a real DuckDB file, a real Celery worker."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("APPROXIMANT_TORCH_THREADS", "1")


@pytest.fixture(scope="session")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from tasks.broker import EmbeddedBroker

    broker = EmbeddedBroker(tmp_path_factory.mktemp("broker"))
    url = broker.start()
    yield url
    broker.stop()


@pytest.fixture
def clean_broker(broker_url: str) -> str:
    import redis

    redis.Redis.from_url(broker_url).flushall()
    return broker_url


@pytest.fixture
def db(tmp_path: Path):
    from storage.db import Database

    database = Database(tmp_path / "test.duckdb")
    yield database
    database.close()


@pytest.fixture
def worker(clean_broker: str):
    """A real Celery worker consuming from the embedded broker, in a thread (solo pool)."""
    from celery.contrib.testing.worker import start_worker

    from tasks.celery_app import app, configure

    configure(clean_broker)
    with start_worker(app, pool="solo", concurrency=1, perform_ping_check=False,
                      shutdown_timeout=30, loglevel="WARNING",
                      queues=[app.conf.task_default_queue]) as w:
        yield w


@pytest.fixture
def services(tmp_path: Path, clean_broker: str):
    """The dashboard's services (DuckDB owner, recorder not started) over a real broker."""
    from app.services import open_services, set_services

    s = open_services(tmp_path / "data", clean_broker, start_recorder=False)
    set_services(s)
    yield s
    set_services(None)
    s.close()
