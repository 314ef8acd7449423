"""A page's refresh with the recorder running: it applies what the stream holds, and with
nothing left to apply it returns without waiting for the recorder's loop."""

from __future__ import annotations

import time

from approximant.storage.stream import EventStream, connect


def _study_event() -> tuple[str, dict]:
    from approximant.engine.specs import expand, parse_study

    spec = parse_study({"name": "refresh", "workload": {"name": "digits_mlp"},
                        "optimizers": [{"name": "adamw"}], "seeds": [0], "steps": 10})
    return spec.study_id, {"type": "study", "study_id": spec.study_id,
                           "spec": spec.model_dump(mode="json"),
                           "runs": [r.model_dump(mode="json") for r in expand(spec)],
                           "ts": time.time()}


def test_refresh_applies_what_waits_and_skips_an_empty_stream(services, clean_broker):
    rec = services.recorder
    rec.start()
    try:
        drains = []
        real = rec.drain_once

        def counted(*args, **kwargs):
            if kwargs.get("lock_timeout") is not None:  # the page's call, not the loop's
                drains.append(1)
            return real(*args, **kwargs)

        rec.drain_once = counted
        deadline = time.monotonic() + 30
        while not EventStream(connect(clean_broker)).empty() and time.monotonic() < deadline:
            time.sleep(0.05)
        services.refresh()
        assert drains == []  # nothing waits in the stream: no drain, no wait for the loop

    finally:
        rec.stop()
    # An entry that waits is applied by the page's own drain: the study is there when refresh
    # returns (the loop is stopped here, so nobody else could have applied it).
    study_id, event = _study_event()
    EventStream(connect(clean_broker)).append([event])
    services.refresh()
    assert drains == [1]
    assert services.queries.study(study_id) is not None
