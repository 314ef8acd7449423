"""Shared fixtures: a real embedded Valkey broker, a real DuckDB file, a real Celery worker."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from approximant.tasks.broker import free_port

os.environ.setdefault("APPROXIMANT_TORCH_THREADS", "1")


@pytest.fixture(scope="session")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from approximant.tasks.broker import EmbeddedBroker

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
    from approximant.storage.db import Database

    database = Database(tmp_path / "test.duckdb")
    yield database
    database.close()


@pytest.fixture
def worker(clean_broker: str):
    """A real Celery worker consuming from the embedded broker, in a thread (solo pool)."""
    from celery.contrib.testing.worker import start_worker

    from approximant.tasks.celery_app import app, configure

    configure(clean_broker)
    with start_worker(app, pool="solo", concurrency=1, perform_ping_check=False,
                      shutdown_timeout=30, loglevel="WARNING",
                      queues=[app.conf.task_default_queue]) as w:
        yield w


@pytest.fixture
def services(tmp_path: Path, clean_broker: str):
    """The dashboard's services (DuckDB owner, recorder not started) over a real broker."""
    from approximant.app.services import open_services, set_services

    s = open_services(tmp_path / "data", clean_broker, start_recorder=False)
    set_services(s)
    yield s
    set_services(None)
    s.close()


# Helpers shared by several test modules, handed out as fixtures (test modules never import
# each other). The browser ones need Debian's Chromium: without /usr/bin/chromium a test that
# asks for them is skipped, unless APPROXIMANT_REQUIRE_BROWSER=1 (set by .ci/run).

CHROMIUM = os.environ.get("APPROXIMANT_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("APPROXIMANT_TEST_ARTIFACTS", "test-artifacts"))


def require_browser() -> None:
    if shutil.which(CHROMIUM) is None:
        msg = f"headless Chromium not found at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("APPROXIMANT_REQUIRE_BROWSER") == "1":
            pytest.fail(msg)
        pytest.skip(msg)


@contextmanager
def _running_stack(tmp_path: Path, env: dict[str, str] | None = None,
                  port: int | None = None, cwd: Path | None = None) -> Iterator[str]:
    """``approximant up`` on a free port with its own data directory; yields the URL, then
    stops it with Ctrl-C and checks that it stopped cleanly."""
    require_browser()
    port = port or free_port()
    log = open(tmp_path / "up.log", "w")  # noqa: SIM115 - outlives this block, closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "approximant.app.cli", "up", "--data-dir", str(tmp_path / "data"),
         "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
        env={**os.environ, "APPROXIMANT_BROKER_URL": "", **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            log.close()
            raise AssertionError("dashboard did not start:\n" + (tmp_path / "up.log").read_text())
        time.sleep(0.5)
    try:
        yield url
    finally:
        proc.send_signal(subprocess.signal.SIGINT)
        try:
            proc.wait(40)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
    assert proc.returncode == 0, (tmp_path / "up.log").read_text()[-3000:]


def _launch(p):
    """Debian's Chromium, headless, with nothing that would reach the network."""
    return p.chromium.launch(
        executable_path=CHROMIUM,
        args=["--no-sandbox", "--headless", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-background-networking", "--disable-component-update",
              "--no-first-run"],
    )


def _wait_for(predicate, timeout: float, what: str):
    """Poll ``predicate`` until it returns something truthy (returned); a deadline only so that
    a broken path fails instead of hanging."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _create_share_link(page) -> str:
    """Open *Share and export* on a study page, create a read-only link and return it."""
    from playwright.sync_api import expect

    create = page.get_by_role("button", name="Create a read-only link")
    for _ in range(10):
        # The page redraws once as the study ends; a click on the expander during that redraw
        # can be lost, so open it until its content shows.
        if create.is_visible():
            break
        page.get_by_text("Share and export").click()
        page.wait_for_timeout(1000)
    create.click()
    code = page.locator("code", has_text="/shared?token=").first
    expect(code).to_be_visible(timeout=30_000)
    return code.inner_text().strip()


@pytest.fixture
def wait_for():
    return _wait_for


@pytest.fixture
def running_stack():
    """``running_stack(tmp_path, env=None, port=None, cwd=None)``: ``approximant up`` as a
    context manager yielding its URL."""
    return _running_stack


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[str]:
    with _running_stack(tmp_path) as url:
        yield url


@pytest.fixture
def launch():
    """``launch(playwright)``: Debian's headless Chromium."""
    require_browser()
    return _launch


@pytest.fixture
def create_share_link():
    return _create_share_link


@pytest.fixture
def artifacts() -> Path:
    """Where browser tests leave screenshots (kept by CI on failure)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
