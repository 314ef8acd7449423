"""Claiming a run: ended runs are not retrained; a live lease blocks a duplicate delivery."""

from __future__ import annotations

import threading

import pytest

from approximant.storage.stream import connect
from approximant.tasks.publisher import LEASE_KEY, PROGRESS_KEY
from approximant.tasks.run import claim


def test_free_run_is_claimed_and_its_lease_taken(clean_broker):
    client = connect(clean_broker)
    assert claim(client, "r1", lease_ttl_s=5, poll_s=0.05) == "run"
    assert client.get(LEASE_KEY.format(run_id="r1")) == b"0:claimed"
    # A second delivery arriving now sees a held lease; it lapses unrenewed (nobody publishes
    # in this test), so after the TTL the second claimant takes over.
    assert client.ttl(LEASE_KEY.format(run_id="r1")) > 0


def test_ended_run_is_not_claimed(clean_broker):
    client = connect(clean_broker)
    client.hset(PROGRESS_KEY.format(run_id="r1"), mapping={"status": "finished"})
    assert claim(client, "r1", lease_ttl_s=1, poll_s=0.05) == "ended"
    client.hset(PROGRESS_KEY.format(run_id="r1"), mapping={"status": "running"})
    assert claim(client, "r1", lease_ttl_s=1, poll_s=0.05) == "run"


def test_a_renewed_lease_means_a_live_duplicate(clean_broker):
    client = connect(clean_broker)
    key = LEASE_KEY.format(run_id="r1")
    client.set(key, "1:1", ex=30)
    stop = threading.Event()

    def heartbeat() -> None:
        beat = 1
        while not stop.wait(0.05):
            beat += 1
            client.set(key, f"1:{beat}", ex=30)

    t = threading.Thread(target=heartbeat)
    t.start()
    try:
        assert claim(client, "r1", lease_ttl_s=1, poll_s=0.2) == "duplicate"
    finally:
        stop.set()
        t.join()


def test_a_dead_attempts_lease_is_waited_out(clean_broker):
    client = connect(clean_broker)
    key = LEASE_KEY.format(run_id="r1")
    client.set(key, "1:7", px=600)  # its holder died: nobody renews it, so it lapses
    assert client.exists(key)
    assert claim(client, "r1", lease_ttl_s=5, poll_s=0.1) == "run"
    assert client.get(key) == b"0:claimed"  # the dead attempt's lease lapsed; ours replaced it


def test_publisher_retries_an_unreachable_broker_then_gives_up(clean_broker, monkeypatch):
    # Every broker write of a run (metric batches, captured matrices) goes through retrying():
    # transient failures are retried with backoff, a lasting one raises after retry_for_s.
    import redis
    import torch

    from approximant.storage.stream import STREAM, EventStream
    from approximant.tasks import publisher as publisher_mod
    from approximant.tasks.lab import CAPTURE_KEY, publish_matrix
    from approximant.tasks.publisher import MetricPublisher

    monkeypatch.setattr(publisher_mod.time, "sleep", lambda s: None)
    stream = EventStream(connect(clean_broker))
    pub = MetricPublisher(stream, "r9", attempt=1, steps=10)
    real_append, fails = stream.append, [2]

    def flaky(events):
        if fails[0]:
            fails[0] -= 1
            raise redis.ConnectionError("down")
        return real_append(events)

    monkeypatch.setattr(stream, "append", flaky)
    # An attempt's first rows are sent at once.
    pub.add([{"step": 1, "name": "train_loss", "value": 0.5, "wall_s": 0.1, "tokens": 8}])
    assert fails == [0] and stream.client.xlen(STREAM) == 2  # the rows and the status, once
    mid = publish_matrix(pub, "r9", 1, 1, "w", "grad", torch.ones(2, 3))
    assert stream.client.exists(CAPTURE_KEY.format(matrix_id=mid))

    pub.retry_for_s = 0.0
    fails[0] = 1
    with pytest.raises(redis.ConnectionError):  # a broker that stays down fails the task
        pub.flush("running")


def test_first_rows_go_at_once_then_batches(clean_broker):
    """The first point of a run reaches the page without waiting for a batch; after it, rows
    wait for ``max_rows`` or ``interval_s`` as before."""
    from approximant.storage.stream import STREAM, EventStream
    from approximant.tasks.publisher import MetricPublisher

    stream = EventStream(connect(clean_broker))
    pub = MetricPublisher(stream, "r8", attempt=1, steps=10, max_rows=3, interval_s=3600)
    pub.add([])  # nothing to send: no event
    assert stream.client.xlen(STREAM) == 0

    def row(step: int) -> list[dict]:
        return [{"step": step, "name": "train_loss", "value": 1.0, "wall_s": 0.0, "tokens": 0}]

    pub.add(row(0))
    assert stream.client.xlen(STREAM) == 2 and pub.published == 1  # rows, then status
    pub.add(row(1))
    pub.add(row(2))
    assert stream.client.xlen(STREAM) == 2  # buffered
    pub.add(row(3))
    assert stream.client.xlen(STREAM) == 4 and pub.published == 4  # max_rows reached


class _Racing:
    """A client through which the live attempt ends right after the claimer's first command:
    whatever the claim does in several round trips, the run finishing in between shows."""

    def __init__(self, client, finish) -> None:
        self._client, self._finish, self.calls = client, finish, 0

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            result = attr(*args, **kwargs)
            self.calls += 1
            if self.calls == 1:
                self._finish()
            return result

        return call


def test_a_run_that_ends_during_the_claim_is_not_trained_again(clean_broker):
    from approximant.storage.stream import EventStream
    from approximant.tasks.publisher import MetricPublisher

    client = connect(clean_broker)
    live = MetricPublisher(EventStream(client), "r1", attempt=1, steps=10)
    live.flush("running")  # the live attempt holds the lease
    racing = _Racing(client, lambda: live.flush("finished"))  # drops the lease as it ends
    assert claim(racing, "r1", lease_ttl_s=5, poll_s=0.05) == "ended"
    assert client.hget(PROGRESS_KEY.format(run_id="r1"), "status") == b"finished"
    assert not client.exists(LEASE_KEY.format(run_id="r1"))
