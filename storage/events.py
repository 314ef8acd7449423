"""The events on the stream, one typed model per type: the wire format of ``storage.stream``.

Producers (workers, the submitter, the lab, a script's client) build these models, so a
misspelt field fails where it is written instead of reaching the recorder as a dead letter;
the recorder parses each entry back into its model (``parse_event``) and applies it through
one handler table (``storage.recorder.HANDLERS``). An entry that does not parse is parked on
the dead-letter stream like any entry that cannot be applied.

Fields added after an event type was first released have defaults, so entries written by an
earlier release (still on a stream during an upgrade) parse.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

# A study logged by training scripts (approximant.client): its spec's ``source`` and its runs'
# workload name. Such a study has no spec of its own; each script registers its own run.
SCRIPT = "script"

Status = Literal["queued", "running", "finished", "diverged", "failed", "cancelled"]
# [step, name, value, wall_s, tokens]: positional, as 2 000 rows of a flush are most of the
# stream's bytes.
MetricRow = tuple[int, str, float | None, float | None, int | None]


class _Event(BaseModel):
    # NaN and ±inf go out as JSON's NaN/Infinity (what json.dumps wrote before the models), not
    # as null: a diverged run's last loss is NaN, and arg_max over values skips NULLs.
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")


class StudyEvent(_Event):
    """A study was submitted (or grew): its spec and every run it has now, in order."""

    type: Literal["study"] = "study"
    study_id: str
    spec: dict[str, Any]
    runs: list[dict[str, Any]]
    ts: float | None = None


class ResumedFrom(_Event):
    attempt: int
    step: int


class StatusEvent(_Event):
    """A run's attempt moved on (status only moves forward, see ``stream.status_change``)."""

    type: Literal["status"] = "status"
    run_id: str
    attempt: int
    status: Status
    step: int = 0
    message: str | None = None
    worker: str | None = None
    ts: float | None = None
    # Facts about the run's data (a corpus hash) on a terminal event.
    info: dict[str, Any] | None = None
    # The attempt continues an earlier one from a checkpoint and owns its rows up to there.
    resumed_from: ResumedFrom | None = None
    # A re-run asked for: moves an ended attempt back to "queued" and nothing else.
    requeued: bool = False


class MetricsEvent(_Event):
    type: Literal["metrics"] = "metrics"
    run_id: str
    attempt: int
    rows: list[MetricRow]


class LabJobEvent(_Event):
    type: Literal["lab_job"] = "lab_job"
    job_id: str
    spec: dict[str, Any]
    n_cases: int
    ts: float | None = None


class LabStatusEvent(_Event):
    type: Literal["lab_status"] = "lab_status"
    job_id: str
    attempt: int
    status: Status
    cases_done: int = 0
    message: str | None = None
    worker: str | None = None
    ts: float | None = None
    info: dict[str, Any] | None = None


class Table(_Event):
    """Rows with their column names: inserted BY NAME, so producer and table agree by name."""

    columns: list[str]
    rows: list[list[Any]]


class LabCaseEvent(_Event):
    """Everything measured on one test matrix (a curve row carries its points as two lists)."""

    type: Literal["lab_case"] = "lab_case"
    job_id: str
    attempt: int
    cases: Table
    results: Table
    curves: Table


class MatrixEvent(_Event):
    """A matrix captured from a training run; its bytes wait in the broker under ``blob``."""

    type: Literal["matrix"] = "matrix"
    matrix_id: str
    run_id: str
    attempt: int
    step: int
    param: str
    kind: str
    rows: int
    cols: int
    dtype: str
    blob: str
    ts: float | None = None


Event = Annotated[
    StudyEvent | StatusEvent | MetricsEvent | LabJobEvent | LabStatusEvent | LabCaseEvent
    | MatrixEvent,
    Field(discriminator="type"),
]
_EVENT: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(raw: dict[str, Any]) -> Event:
    """The typed event of a stream entry (pydantic's ``ValidationError``, a ``ValueError``,
    when it is none)."""
    return _EVENT.validate_python(raw)
