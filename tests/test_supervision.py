"""``approximant up`` heals itself: kill -9 of the worker, the broker or the dashboard mid-study,
with real processes; each comes back on its own and every expected row lands exactly once.

The scenarios are those of ``benchmarks/bench_faults.py`` (which reports their timings); a
short lease (4 s) makes a lost worker's run come back in seconds. Deadlines only bound a wait
so that a broken recovery fails instead of hanging: nothing here asserts a duration.
"""

from __future__ import annotations

import bench_faults  # benchmarks/ is on pytest's pythonpath (pyproject.toml)
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def no_env_broker(monkeypatch):
    monkeypatch.delenv("APPROXIMANT_BROKER_URL", raising=False)


@pytest.mark.parametrize("fault", ["worker", "broker", "dashboard"])
def test_a_killed_child_is_restarted_and_the_study_completes_exactly_once(fault, tmp_path):
    r = bench_faults.scenario(fault, tmp_path, steps=8000, lease_s=4)

    assert r["new_pid"] != r["old_pid"]
    assert any(f"the {fault} exited (-9); restarting in 1 s (restart 1)" in line
               for line in r["restart_lines"]), r["restart_lines"]
    assert r["statuses"] == ["finished", "finished"]
    assert r["lost"] == 0 and r["duplicated"] == 0 and r["extra"] == 0
    assert r["present"] == r["expected"] > 0
    assert r["stop_code"] == 0
    if fault == "worker":
        # The run lost its worker: requeued from its lease, trained on as attempt 2 from
        # its checkpoint rather than from step 0.
        assert r["attempts"][0] == 2
        assert (r["resumed"] or "").startswith("resumed from step")
    else:
        assert r["attempts"] == [1, 1]  # the run went on through the outage
    # The embedded broker's password is in no child's argv; its files are the user's only.
    assert not r["argv_leak"]
    assert r["modes"] == {"stack.json": "0o600", "password": "0o600"}
