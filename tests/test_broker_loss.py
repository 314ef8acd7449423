"""Broker loss and lost workers, on a real embedded Valkey that the tests kill and restart."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest

from approximant.storage.stream import STREAM, EventStream, connect
from approximant.tasks.broker import EmbeddedBroker
from approximant.tasks.publisher import LEASE_KEY, PROGRESS_KEY, MetricPublisher


@pytest.fixture
def own_broker(tmp_path: Path):
    """A broker of this test's own, so that it can be killed."""
    broker = EmbeddedBroker(tmp_path)
    broker.start()
    yield broker
    broker.stop()


def kill(broker: EmbeddedBroker) -> None:
    broker._proc.kill()
    broker._proc.wait(10)


def test_the_embedded_broker_has_a_password_kept_private(own_broker, tmp_path):
    import redis

    assert own_broker.password and f":{own_broker.password}@" in own_broker.url
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=own_broker.port).ping()  # no password: refused
    for name in ("password", "valkey.conf"):
        assert (tmp_path / "broker" / name).stat().st_mode & 0o777 == 0o600
    url = own_broker.url
    kill(own_broker)
    assert own_broker.restart() == url  # same port and password: clients' URLs stay valid


def test_publisher_waits_through_a_broker_restart_and_logs_once(own_broker, caplog):
    client = connect(own_broker.url)
    pub = MetricPublisher(EventStream(client), "r1", attempt=1, steps=10)
    pub.flush("running")
    # An attempt's first rows go at once; the next ones wait in the buffer for a flush.
    pub.add([{"step": 0, "name": "val_loss", "value": 0.9, "wall_s": 0.0, "tokens": 0}])
    kill(own_broker)
    pub.add([{"step": 1, "name": "train_loss", "value": 0.5, "wall_s": 0.1, "tokens": 8}])
    caplog.set_level(logging.WARNING, logger="approximant.tasks.publisher")
    done = threading.Event()
    t = threading.Thread(target=lambda: (pub.flush("running"), done.set()))
    t.start()
    time.sleep(1.5)  # several retries while it is down
    assert not done.is_set()
    own_broker.restart()
    t.join(30)
    assert done.is_set()
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in m for m in msgs) == 1 and sum("back after" in m for m in msgs) == 1
    # A status, the first rows and a status, then the rows and a status: each once.
    assert client.xlen(STREAM) == 5
    assert client.hget(PROGRESS_KEY.format(run_id="r1"), "step") == b"1"


def test_the_cancel_check_reads_a_lost_broker_as_not_cancelled(own_broker):
    from approximant.tasks.run import CancelFlag

    client = connect(own_broker.url)
    client.set("cancel", 1)
    flag = CancelFlag(client, ["cancel"])
    assert flag() is True
    kill(own_broker)
    flag._next = 0.0
    assert flag() is False  # no exception: the run goes on
    own_broker.restart()
    flag._next = 0.0
    assert flag() is True


def test_recorder_and_broker_state_through_an_outage(own_broker, tmp_path, caplog, wait_for):
    from approximant.app.services import open_services

    caplog.set_level(logging.WARNING, logger="approximant.storage.recorder")
    services = open_services(tmp_path / "data", own_broker.url)
    try:
        assert services.broker_state() == (True, None)
        kill(own_broker)
        t0 = time.time()
        reachable, since = wait_for(lambda: (s := services.broker_state()) and not s[0] and s,
                                    30, "the outage to show")
        assert since is not None and since >= t0 - 1
        time.sleep(2)  # the recorder retries meanwhile, quietly
        services.refresh()  # a page rerun while the broker is away: no error
        own_broker.restart()
        wait_for(lambda: services.broker_state() == (True, None), 30, "the broker to be back")
        # What workers send after the outage is recorded.
        EventStream(connect(own_broker.url)).append([  # harmless: a run nobody registered
            {"type": "status", "run_id": "nobody", "attempt": 1, "status": "running"}])
        wait_for(lambda: services.recorder.applied >= 1, 30, "the recorder to apply it")
    finally:
        services.close()
    msgs = [r.getMessage() for r in caplog.records if r.name == "approximant.storage.recorder"]
    assert sum("unreachable" in m for m in msgs) == 1, msgs
    assert sum("back after" in m for m in msgs) == 1, msgs
    assert not any(r.exc_info for r in caplog.records if r.name == "approximant.storage.recorder")


def test_broker_state_without_a_recorder_probes_and_caches(own_broker, tmp_path, wait_for):
    from approximant.app.services import open_services

    services = open_services(tmp_path / "data", own_broker.url, start_recorder=False)
    try:
        assert services.broker_state() == (True, None)
        kill(own_broker)
        reachable, since = wait_for(lambda: (s := services.broker_state()) and not s[0] and s,
                                    10, "the probe to notice")
        assert services.broker_state() == (False, since)  # cached, then the same start
    finally:
        services.close()


def _active_run(client, run_id: str, status: str) -> None:
    from approximant.tasks.run import ACTIVE_KEY, DELIVERY_KEY

    client.hset(PROGRESS_KEY.format(run_id=run_id),
                mapping={"status": status, "attempt": 1, "step": 7})
    client.set(DELIVERY_KEY.format(item_id=run_id),
               json.dumps({"task": "approximant.run", "args": [{"run_id": run_id}]}))
    client.sadd(ACTIVE_KEY, run_id)


def test_reaper_requeues_a_run_whose_lease_lapsed_once(clean_broker):
    from approximant.tasks.celery_app import app, configure
    from approximant.tasks.run import ACTIVE_KEY, Reaper

    configure(clean_broker)
    client = connect(clean_broker)
    _active_run(client, "lost", "running")  # no lease: its worker is gone
    _active_run(client, "alive", "running")
    client.set(LEASE_KEY.format(run_id="alive"), "1:3", ex=30)
    _active_run(client, "done", "finished")
    a, b = Reaper(client, grace_s=0.3), Reaper(client, grace_s=0.3)  # two workers' reapers
    assert a.scan() == [] and b.scan() == []  # missing, but within the grace period
    time.sleep(0.4)
    assert sorted(a.scan() + b.scan()) == ["lost"]  # exactly one of them requeues it
    assert client.hget(PROGRESS_KEY.format(run_id="lost"), "status") == b"queued"
    assert client.llen(app.conf.task_default_queue) == 1
    assert client.smembers(ACTIVE_KEY) == {b"lost", b"alive"}  # the ended run is dropped
    events = [json.loads(f[b"e"]) for _id, f in client.xrange(STREAM)]
    assert [(e["run_id"], e["status"], e["attempt"], e["step"]) for e in events] == [
        ("lost", "queued", 1, 7)]
    time.sleep(0.4)
    assert a.scan() == [] and b.scan() == []  # queued now: nothing more to do


def test_an_attempt_that_lost_its_lease_to_a_later_one_stops_writing(clean_broker):
    client = connect(clean_broker)
    old = MetricPublisher(EventStream(client), "r1", attempt=1, steps=10)
    old.flush("running")
    assert client.get(LEASE_KEY.format(run_id="r1")).startswith(b"1:")
    new = MetricPublisher(EventStream(client), "r1", attempt=2, steps=10)
    new.flush("running")  # a later attempt takes the lease over
    old.flush("finished")
    assert old.superseded and not new.superseded
    progress = client.hgetall(PROGRESS_KEY.format(run_id="r1"))
    assert progress[b"status"] == b"running" and progress[b"attempt"] == b"2"
    assert client.get(LEASE_KEY.format(run_id="r1")).startswith(b"2:")


def test_the_first_checkpoint_comes_early_then_gaps_double(monkeypatch):
    from approximant.tasks import run as run_module

    clock = [100.0]
    monkeypatch.setattr(run_module.time, "monotonic", lambda: clock[0])

    class Pub:
        attempt, superseded = 1, False

        def flush(self, status):
            pass

        def retrying(self, write):
            return write()

    class Client:
        def __init__(self):
            self.sets = []

        def set(self, key, blob, ex):
            self.sets.append(clock[0])

    client = Client()
    cp = run_module._Checkpointer(client, Pub(), "r", every_s=60)
    monkeypatch.setattr(run_module, "checkpoint_bytes", lambda state: b"x")
    for _ in range(200):  # one step a second
        cp(1, lambda: {})
        clock[0] += 1.0
    assert [t - 100 for t in client.sets[:5]] == [5, 15, 35, 75, 135]


def test_the_reaper_keeps_watching_a_run_queued_again_during_its_pass(clean_broker):
    """The reaper reads an ended run's status, then a re-run queues it (queue_once) before the
    reaper drops it from the watched set: it stays watched."""
    from approximant.tasks.run import ACTIVE_KEY, Reaper

    client = connect(clean_broker)
    _active_run(client, "r1", "finished")

    class Pipe:
        def __init__(self, pipe):
            self.pipe = pipe

        def __getattr__(self, name):
            return getattr(self.pipe, name)

        def execute(self):
            replies = self.pipe.execute()
            # A re-run between the reaper's read and its clean-up, as queue_once writes it.
            client.hset(PROGRESS_KEY.format(run_id="r1"), "status", "queued")
            client.sadd(ACTIVE_KEY, "r1")
            return replies

    class Client:
        def __getattr__(self, name):
            return getattr(client, name)

        def pipeline(self, **kw):
            return Pipe(client.pipeline(**kw))

    Reaper(Client(), grace_s=0).scan()
    assert client.smembers(ACTIVE_KEY) == {b"r1"}
    Reaper(client, grace_s=0).scan()  # queued: nothing to do, and still watched
    assert client.smembers(ACTIVE_KEY) == {b"r1"}
    client.hset(PROGRESS_KEY.format(run_id="r1"), "status", "finished")
    Reaper(client, grace_s=0).scan()
    assert client.smembers(ACTIVE_KEY) == set()


def test_a_checkpoint_is_not_written_by_an_attempt_that_lost_the_run():
    from approximant.tasks import run as run_module

    class Pub:
        attempt, superseded = 1, False

        def flush(self, status):
            self.superseded = True  # the flush finds a later attempt holding the lease

        def retrying(self, write):
            return write()

    class Client:
        sets: list = []

        def set(self, key, blob, ex):
            self.sets.append(key)

    client = Client()
    cp = run_module._Checkpointer(client, Pub(), "r", every_s=0.0)
    cp(1, lambda: {"step": 1})
    cp(2, lambda: {"step": 2})
    assert client.sets == []  # the live attempt's checkpoint stays as it is


def test_the_heartbeat_does_not_bring_back_a_lease_the_end_dropped(clean_broker, monkeypatch):
    from approximant.tasks import publisher

    monkeypatch.setattr(publisher, "LEASE_TTL_S", 0.3)  # a beat every 0.1 s
    client = connect(clean_broker)
    pub = MetricPublisher(EventStream(client), "r1", attempt=1, steps=10)
    pub.flush("running")
    pub.start_heartbeat()
    try:
        pub.flush("finished")  # drops the lease; the heartbeat is still going
        time.sleep(0.5)
        assert not client.exists(LEASE_KEY.format(run_id="r1"))
        assert not pub.superseded
    finally:
        pub.stop_heartbeat()


def test_a_finished_run_leaves_no_lease_and_a_rerun_is_claimed_at_once(clean_broker,
                                                                       monkeypatch):
    from approximant.engine.specs import expand, parse_study
    from approximant.tasks.celery_app import configure
    from approximant.tasks.run import claim, execute_run
    from approximant.tasks.submit import queue_once, run_task

    configure(clean_broker)
    client = connect(clean_broker)
    study = parse_study({"name": "s", "workload": {"name": "digits_mlp",
                                                    "settings": {"hidden": 8}},
                         "optimizers": [{"name": "sgd", "grid": {"lr": [0.1]}}],
                         "seeds": [0], "steps": 5})
    run = expand(study)[0]
    assert claim(client, run.run_id, lease_ttl_s=30, poll_s=0.05) == "run"
    assert execute_run(run, clean_broker)["status"] == "finished"
    assert not client.exists(LEASE_KEY.format(run_id=run.run_id))
    assert queue_once(client, run_task, run.run_id, run.steps, run.model_dump(mode="json"),
                      force=True)
    # No lease is left to wait for: the first look claims the run.
    looks = []
    real_eval = client.eval
    monkeypatch.setattr(client, "eval", lambda *a: looks.append(a) or real_eval(*a))
    assert claim(client, run.run_id, lease_ttl_s=30, poll_s=0.05) == "run"
    assert len(looks) == 1


def test_rows_held_through_an_outage_go_out_as_entries_of_at_most_max_rows(clean_broker):
    client = connect(clean_broker)
    pub = MetricPublisher(EventStream(client), "r-split", attempt=1, steps=10, max_rows=3)
    pub.add([{"step": s, "name": "train_loss", "value": 1.0, "wall_s": 0.0, "tokens": 0}
             for s in range(1, 8)])  # the first rows go at once: 7 of them
    entries = [json.loads(e[b"e"]) for _, e in client.xrange(STREAM)]
    assert [len(e["rows"]) for e in entries if e["type"] == "metrics"] == [3, 3, 1]
    assert entries[-1]["type"] == "status"
