"""Study and run specs: validation, expansion into runs, deterministic ids.

A study is workload × optimizer entries (each a hyper-parameter grid) × seeds. It expands into
runs in a fixed order; a run's label uses sorted keys (``adamw[lr=0.001]``) and its id is a hash
of the study id and the label, so resubmitting a spec is idempotent.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import tomllib
from collections import Counter
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from approximant.engine.errors import (
    Printable,
    SpecError,
    check_name,
    clip,
    field_part,
    format_validation_error,
    join_problems,
    short,
)
from approximant.engine.optimizers import OPTIMIZERS
from approximant.engine.settings import current as current_settings
from approximant.engine.workloads import WORKLOADS

# A spec is a page of text; anything near this is an attack or an accident, and parsing and
# echoing it would only cost time.
MAX_SPEC_CHARS = 1_000_000
# Hyper-parameters per optimizer and settings per workload are a dozen or two: more keys than
# this are junk, refused before each is validated (and reported) one by one.
MAX_KEYS = 64
# Categorical hyper-parameters (a schedule name, a dtype) are strings.
GridValue = bool | int | float | str


def max_runs() -> int:
    """The largest study accepted (``APPROXIMANT_MAX_RUNS``, engine/settings.py)."""
    return current_settings().max_runs


class _Strict(BaseModel):
    # strict: a spec says what it means. "0.001" is not a learning rate and true is not a
    # step count; pydantic's lax mode would coerce both silently. An int is still accepted
    # where a float is expected (lr = 1).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _few_keys(v: Any, what: str) -> Any:
    if isinstance(v, dict) and len(v) > MAX_KEYS:
        raise ValueError(f"at most {MAX_KEYS} {what} (got {len(v)})")
    return v


class WorkloadSpec(_Strict):
    name: Printable = Field(max_length=120, description="registered workload name")
    settings: dict[str, Any] = Field(default_factory=dict)

    @field_validator("settings", mode="before")
    @classmethod
    def _bounded(cls, v: Any) -> Any:
        return _few_keys(v, "settings")


class OptimizerEntry(_Strict):
    name: Printable = Field(max_length=120, description="registered optimizer name")
    # Values are checked against the optimizer's hyper-parameter model in _deep_problems,
    # which names the field and its range; a union type here would give vaguer messages.
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="hyper-parameter → values; the runs take the product"
    )

    @field_validator("grid", mode="before")
    @classmethod
    def _scalars_are_singletons(cls, v: Any) -> Any:
        if isinstance(v, dict):
            _few_keys(v, "grid keys")
            for k in v:
                if isinstance(k, str):
                    check_name(k)
            return {k: (x if isinstance(x, list) else [x]) for k, x in v.items()}
        return v


def _size_problems(data: Any) -> list[str]:
    """The run count of raw spec data and the lengths behind it, by arithmetic alone.

    Runs before any field is validated, so an over-limit study is refused in time that does
    not grow with its size: no value is validated and no grid point is built. An empty grid
    list counts as one value here (it is reported as empty later); this keeps the bound that
    matters, that no more than ``max_runs()`` grid points' worth of values are validated.
    """
    if not isinstance(data, dict):
        return []
    limit = max_runs()
    problems: list[str] = []
    seeds = data.get("seeds", [0])
    n_seeds = len(seeds) if isinstance(seeds, list) else 1
    if n_seeds > limit:
        problems.append(f"seeds: {n_seeds} seeds; at most {limit} (APPROXIMANT_MAX_RUNS)")
    entries = data.get("optimizers")
    if not isinstance(entries, list):
        return problems
    if len(entries) > limit:
        problems.append(f"optimizers: {len(entries)} entries; at most {limit} "
                        "(APPROXIMANT_MAX_RUNS)")
        return problems
    points = 0
    for i, entry in enumerate(entries):
        grid = entry.get("grid") if isinstance(entry, dict) else None
        if not isinstance(grid, dict):
            points += 1
            continue
        if len(grid) > MAX_KEYS:
            problems.append(f"optimizers.{i}.grid: at most {MAX_KEYS} grid keys "
                            f"(got {len(grid)})")
            continue
        product = 1
        for key, values in grid.items():
            n = len(values) if isinstance(values, list) else 1
            if n > limit:
                name = field_part(key)
                problems.append(f"optimizers.{i}.grid.{name}: {n} values; a grid list holds "
                                f"at most {limit} (APPROXIMANT_MAX_RUNS)")
            product *= max(n, 1)
        points += product
    if not problems and points * n_seeds > limit:
        problems.append(
            f"optimizers × grid × seeds: {points * n_seeds} runs exceeds the limit of {limit} "
            "(APPROXIMANT_MAX_RUNS)"
        )
    return problems


def _fmt(v: GridValue) -> str:
    return repr(v) if isinstance(v, bool) else f"{v:g}" if isinstance(v, float) else str(v)


def run_label(optimizer: str, point: dict[str, GridValue]) -> str:
    """benchopt-style name: ``adamw[lr=0.001,weight_decay=0]`` with sorted keys."""
    inner = ",".join(f"{k}={_fmt(point[k])}" for k in sorted(point))
    return f"{optimizer}[{inner}]" if inner else optimizer


MAX_CAPTURE_STEPS = 20


class TrainingSettings(_Strict):
    """How every run of a study trains beyond its steps and evaluations: set on the study,
    carried by each of its runs (one definition for both).

    All were added after the first release, so each has a default: run specs already queued or
    stored stay valid, and a study spec that leaves them at their defaults keeps its id.
    """

    lr_schedule: Literal["constant", "cosine", "linear"] = Field(
        "constant", description="multiplier on every group's lr after warmup; decays over `steps`"
    )
    warmup_steps: int = Field(
        0, ge=0, le=10_000_000, description="linear warmup from lr/warmup_steps to lr"
    )
    min_lr_ratio: float = Field(
        0.0, ge=0, le=1, description="final lr as a fraction of the peak (cosine and linear)"
    )
    grad_clip: float | None = Field(
        None, gt=0, le=1e6, description="clip the global gradient norm to this; none: off"
    )
    log_grad_norm: bool = Field(
        True, description="record the global gradient norm (before clipping) every step"
    )
    max_examples: int | None = Field(
        None, ge=1, le=10**15, description="stop after this many examples (tokens for LMs)"
    )
    max_seconds: float | None = Field(
        None, gt=0, le=30 * 86_400, description="stop after this much timed training"
    )
    diagnostics_every: int = Field(
        0, ge=0, le=10_000_000, description="steps between alignment diagnostics; 0: off"
    )
    bf16_autocast: bool = Field(
        True, description="bf16 autocast on CUDA; ignored on CPU and by fp32-only workloads"
    )
    capture_steps: list[int] = Field(
        default_factory=list, max_length=MAX_CAPTURE_STEPS,
        description="steps at which every matrix parameter's gradient and momentum are saved "
        "for the approximation lab; empty: off",
    )

    def training_settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in TRAINING_FIELDS}


TRAINING_FIELDS = tuple(TrainingSettings.model_fields)


class RunSpec(TrainingSettings):
    """Everything a worker needs to train one run; travels as JSON."""

    study_id: str
    run_id: str
    label: str = Field(description="optimizer config label, shared by the seeds of a config")
    workload: WorkloadSpec
    optimizer: str
    hparams: dict[str, GridValue] = Field(description="resolved, defaults included")
    seed: int
    steps: int
    eval_every: int
    device: str


class StudySpec(TrainingSettings):
    name: Printable = Field(min_length=1, max_length=120)
    workload: WorkloadSpec
    optimizers: list[OptimizerEntry] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    steps: int = Field(200, ge=1, le=10_000_000, description="training steps per run")
    eval_every: int = Field(25, ge=1, le=10_000_000, description="steps between evaluations")
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _size_first(cls, data: Any) -> Any:
        problems = _size_problems(data)
        if problems:
            raise ValueError(join_problems(problems))
        return data

    @field_validator("seeds")
    @classmethod
    def _seeds_in_range(cls, v: list[int]) -> list[int]:
        bad = [s for s in v if not 0 <= s < 2**31]
        if bad:
            raise ValueError(f"every seed must be in [0, 2^31); got {short(bad)}")
        if len(set(v)) != len(v):
            dupes = sorted(k for k, n in Counter(v).items() if n > 1)
            raise ValueError(f"seeds must be distinct; repeated: {short(dupes)}")
        return v

    @model_validator(mode="after")
    def _deep_check(self) -> StudySpec:
        problems = _schedule_problems(self) + _deep_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def study_id(self) -> str:
        data = self.model_dump(mode="json")
        # Fields added later are hashed only when set away from their default, so a spec written
        # before they existed keeps its id and resubmitting it stays idempotent.
        for name in TRAINING_FIELDS:
            if data[name] == StudySpec.model_fields[name].get_default(
                    call_default_factory=True):
                del data[name]
        canonical = json.dumps(data, sort_keys=True)
        return "st-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def grid_points(self) -> list[tuple[str, dict[str, GridValue]]]:
        out = []
        for entry in self.optimizers:
            keys = sorted(entry.grid)
            for values in itertools.product(*(entry.grid[k] for k in keys)):
                out.append((entry.name, dict(zip(keys, values, strict=True))))
        return out

    def n_runs(self) -> int:
        """Runs the study expands into, by arithmetic (no grid point is built)."""
        points = sum(math.prod(len(v) for v in e.grid.values()) for e in self.optimizers)
        return points * len(self.seeds)


def _schedule_problems(spec: StudySpec) -> list[str]:
    problems = []
    bad = [s for s in spec.capture_steps if not 1 <= s <= spec.steps]
    if bad:
        problems.append(f"capture_steps: every step must be in [1, steps = {spec.steps}] "
                        f"(got {short(bad)})")
    if spec.warmup_steps > spec.steps:
        problems.append(
            f"warmup_steps: must be at most steps ({spec.steps}) (got {spec.warmup_steps})"
        )
    return problems


def _deep_problems(spec: StudySpec) -> list[str]:
    problems: list[str] = []
    wl = WORKLOADS.get(spec.workload.name)
    if wl is None:
        problems.append(
            f"workload.name: unknown workload {short(spec.workload.name)}; "
            f"allowed: {', '.join(sorted(WORKLOADS))}"
        )
    else:
        try:
            wl.settings(**spec.workload.settings)
        except ValidationError as err:
            problems.append(format_validation_error(err, "workload.settings"))
    for i, entry in enumerate(spec.optimizers):
        where = f"optimizers.{i}"
        d = OPTIMIZERS.get(entry.name)
        if d is None:
            problems.append(
                f"{where}.name: unknown optimizer {short(entry.name)}; "
                f"allowed: {', '.join(sorted(OPTIMIZERS))}"
            )
            continue
        allowed = d.params.model_fields
        for key, values in entry.grid.items():
            shown = field_part(key)
            if key not in allowed:
                problems.append(
                    f"{where}.grid.{shown}: not a hyper-parameter of {entry.name}; "
                    f"allowed: {', '.join(allowed)}"
                )
                continue
            if not values:
                problems.append(f"{where}.grid.{key}: empty list; give at least one value")
            for v in values:
                if isinstance(v, list | dict):
                    problems.append(f"{where}.grid.{key}: must be a single value "
                                    f"(got {short(v)})")
                    continue
                try:
                    # Strict like the spec itself: "0.001" and true are refused, not coerced.
                    d.params(**{key: v})
                except ValidationError as err:
                    for item in err.errors():
                        problems.append(f"{where}.grid.{key}: {item['msg']} (got {short(v)})")
    if problems:
        return problems
    n = spec.n_runs()
    limit = max_runs()
    if n > limit:
        # Also refused before validation (_size_problems); kept for specs built in code.
        problems.append(
            f"optimizers × grid × seeds: {n} runs exceeds the limit of {limit} "
            "(APPROXIMANT_MAX_RUNS)"
        )
        return problems
    counts = Counter(run_label(name, point) for name, point in spec.grid_points())
    dupes = sorted(x for x, c in counts.items() if c > 1)
    if dupes:
        problems.append(f"optimizers: the same configuration appears twice: "
                        f"{clip(', '.join(dupes))}")
    return problems


def parse_study(data: dict[str, Any]) -> StudySpec:
    """Validate a study from plain data; raise ``SpecError`` listing every problem.

    Nothing else escapes for any input: a malformed spec is a ``SpecError``.
    """
    try:
        return StudySpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err)) from None
    except (ValueError, TypeError, RecursionError) as err:  # a limit's own env var, say
        raise SpecError(f"<spec>: {short(str(err), 200)}") from None


def parse_study_toml(text: str) -> StudySpec:
    """``parse_study`` of a TOML document; ``SpecError`` for malformed or oversized text."""
    if not isinstance(text, str):
        raise SpecError(f"<toml>: expected text (got {type(text).__name__})")
    if len(text) > MAX_SPEC_CHARS:
        raise SpecError(f"<toml>: {len(text)} characters; a spec may have at most "
                        f"{MAX_SPEC_CHARS}")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"<toml>: malformed TOML: {short(str(err), 200)}") from None
    except RecursionError:
        raise SpecError("<toml>: nested too deeply") from None
    return parse_study(data)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _run(spec: StudySpec, study_id: str, name: str, point: dict[str, GridValue], seed: int
         ) -> RunSpec:
    """One run; ``study_id`` is ``spec.study_id``, hashed once by the caller (it dumps and
    hashes the whole spec)."""
    label = run_label(name, point)
    params = OPTIMIZERS[name].params
    hparams = params(**point).model_dump()
    if "seed" in params.model_fields and "seed" not in point:
        # An optimizer's own randomness (Kaon's draws) follows the run's seed unless the grid
        # fixes it, so seeds replicate the whole run.
        hparams["seed"] = seed
    digest = hashlib.sha256(f"{study_id}|{label}|seed={seed}".encode()).hexdigest()
    return RunSpec(
        study_id=study_id,
        run_id=f"{study_id}-{digest[:10]}",
        label=label,
        workload=spec.workload,
        optimizer=name,
        hparams=hparams,
        seed=seed,
        steps=spec.steps,
        eval_every=spec.eval_every,
        device=spec.device,
        **spec.training_settings(),
    )


def expand(spec: StudySpec) -> list[RunSpec]:
    """All runs of a study in a fixed order: optimizer entry, grid point, seed."""
    sid = spec.study_id
    return [_run(spec, sid, name, point, seed)
            for name, point in spec.grid_points() for seed in spec.seeds]


def extra_seed_runs(spec: StudySpec, label: str, seeds: list[int]) -> list[RunSpec]:
    """Runs of one configuration of ``spec`` at more seeds, with the ids ``expand`` would give
    them, so adding a seed twice (or adding one the study already has) names the same run."""
    try:
        seeds = StudySpec._seeds_in_range(list(seeds))  # the study's own rule for seeds
    except ValueError as err:
        raise SpecError(f"seeds: {err}") from None
    for name, point in spec.grid_points():
        if run_label(name, point) == label:
            sid = spec.study_id
            return [_run(spec, sid, name, point, seed) for seed in seeds]
    raise SpecError(f"label: no configuration {short(label)} in study {spec.study_id}")
