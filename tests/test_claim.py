"""Claiming a run: ended runs are not retrained; a live lease blocks a duplicate delivery."""

from __future__ import annotations

import threading

from storage.stream import connect
from tasks.publisher import LEASE_KEY, PROGRESS_KEY
from tasks.run import claim


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
