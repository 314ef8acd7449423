"""A worker killed mid-run: the next attempt resumes from the broker-held checkpoint, and the
run's latest attempt holds every step exactly once."""

from __future__ import annotations

import pytest

from approximant.engine.specs import expand, parse_study
from approximant.engine.training import train
from approximant.storage.queries import Queries
from approximant.storage.recorder import Recorder
from approximant.storage.stream import EventStream, connect
from approximant.tasks import run as run_module
from approximant.tasks.run import CHECKPOINT_KEY, execute_run

SPEC = parse_study({
    "name": "resume",
    "workload": {"name": "digits_mlp", "settings": {"hidden": 16, "batch_size": 16}},
    "optimizers": [{"name": "adamw", "grid": {"lr": [3e-3]}}],
    "seeds": [0], "steps": 30, "eval_every": 10,
})


class _Killed(KeyboardInterrupt):
    """What a worker's cold shutdown looks like to the task: not an ``Exception``."""


def _rows(db, attempt: int, column: str = "value") -> dict[tuple[int, str], float]:
    with db.read() as cur:
        return {(s, n): v for s, n, v in cur.execute(
            f"SELECT step, name, {column} FROM metrics WHERE attempt = ? "
            "AND name <> 'step_time'", [attempt]).fetchall()}


def test_killed_run_resumes_from_its_checkpoint(clean_broker, db, monkeypatch):
    run = expand(SPEC)[0]
    reference: list[dict] = []
    train(run, reference.extend)  # uninterrupted, in this process: the same arithmetic

    class AtStep10(run_module._Checkpointer):
        def __call__(self, step, make):
            if step == 10:
                self._next = 0.0  # due now, whatever the clock says
                super().__call__(step, make)

    monkeypatch.setattr(run_module, "_Checkpointer", AtStep10)
    stream = EventStream(connect(clean_broker))
    stream.append([{"type": "study", "study_id": SPEC.study_id,
                    "spec": SPEC.model_dump(mode="json"),
                    "runs": [run.model_dump(mode="json")], "ts": 1.0}])

    real_flag = run_module.CancelFlag

    class KillAtStep17(real_flag):
        calls = 0

        def __call__(self) -> bool:
            KillAtStep17.calls += 1
            if KillAtStep17.calls == 18:  # once before start, then before each step
                raise _Killed
            return False

    monkeypatch.setattr(run_module, "CancelFlag", KillAtStep17)
    with pytest.raises(_Killed):
        execute_run(run, clean_broker)
    client = connect(clean_broker)
    assert client.exists(CHECKPOINT_KEY.format(run_id=run.run_id))

    monkeypatch.setattr(run_module, "CancelFlag", real_flag)
    result = execute_run(run, clean_broker)
    assert result["status"] == "finished" and result["attempt"] == 2
    assert not client.exists(CHECKPOINT_KEY.format(run_id=run.run_id))  # dropped at the end

    Recorder(db, stream).drain()
    runs = Queries(db).runs(SPEC.study_id)
    assert list(runs["status"]) == ["finished"] and list(runs["attempt"]) == [2]
    first, second = _rows(db, 1), _rows(db, 2)
    # Attempt 2 has every step once: attempt 1's rows up to the checkpoint, then its own,
    # which continue the trajectory exactly (steps 11-16 were lost with the worker and
    # trained again).
    assert {k for k in first if k[0] <= 10} <= set(second)
    assert second == {(r["step"], r["name"]): r["value"] for r in reference
                      if r["name"] != "step_time"}
    assert sorted(s for s, n in second if n == "train_loss") == list(range(1, 31))
    # Not retrained from scratch: the prefix is attempt 1's own rows, clock readings included.
    clock1, clock2 = _rows(db, 1, "wall_s"), _rows(db, 2, "wall_s")
    assert all(clock2[k] == clock1[k] for k in first if k[0] <= 10)
    assert runs["message"][0] == "resumed from step 10"
    Recorder(db, stream).drain()  # a replay adds nothing
    assert _rows(db, 2) == second
