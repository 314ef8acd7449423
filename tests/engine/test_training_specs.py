"""Study-level training settings in the spec: defaults, bounds, ids and expansion."""

from __future__ import annotations

import hashlib
import json

import pytest

from approximant.engine.errors import SpecError
from approximant.engine.specs import RunSpec, StudySpec, expand, parse_study

BASE = {
    "name": "specs",
    "workload": {"name": "digits_mlp", "settings": {"hidden": 16}},
    "optimizers": [{"name": "adamw", "grid": {"lr": [0.001, 0.003]}}],
    "seeds": [0, 1],
    "steps": 40,
}

NEW_FIELDS = {
    "lr_schedule": "constant", "warmup_steps": 0, "min_lr_ratio": 0.0, "grad_clip": None,
    "log_grad_norm": True, "max_examples": None, "max_seconds": None, "diagnostics_every": 0,
    "bf16_autocast": True, "capture_steps": [],
}


def test_new_fields_default_so_older_specs_stay_valid():
    spec = parse_study(BASE)
    assert {k: getattr(spec, k) for k in NEW_FIELDS} == NEW_FIELDS


def test_a_spec_without_the_new_fields_keeps_its_study_id():
    spec = parse_study(BASE)
    old = {k: v for k, v in spec.model_dump(mode="json").items() if k not in NEW_FIELDS}
    want = "st-" + hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:12]
    assert spec.study_id == want
    assert parse_study({**BASE, "grad_clip": 1.0}).study_id != want
    assert parse_study({**BASE, "lr_schedule": "cosine"}).study_id != want


def test_expand_carries_the_settings_to_every_run():
    spec = parse_study({**BASE, "lr_schedule": "cosine", "warmup_steps": 5, "grad_clip": 2.0,
                        "max_examples": 1000, "max_seconds": 30.0, "diagnostics_every": 10,
                        "log_grad_norm": False, "min_lr_ratio": 0.1, "bf16_autocast": False})
    runs = expand(spec)
    assert len(runs) == 4
    for run in runs:
        assert (run.lr_schedule, run.warmup_steps, run.grad_clip, run.max_examples,
                run.max_seconds, run.diagnostics_every, run.log_grad_norm, run.min_lr_ratio,
                run.bf16_autocast) == ("cosine", 5, 2.0, 1000, 30.0, 10, False, 0.1, False)


def test_a_run_spec_stored_before_the_new_fields_still_loads():
    run = expand(parse_study(BASE))[0].model_dump(mode="json")
    for k in NEW_FIELDS:
        del run[k]
    assert RunSpec.model_validate(run).lr_schedule == "constant"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lr_schedule", "exponential", "lr_schedule: Input should be 'constant', 'cosine'"),
        ("warmup_steps", -1, "warmup_steps: Input should be greater than or equal to 0"),
        ("min_lr_ratio", 1.5, "min_lr_ratio: Input should be less than or equal to 1"),
        ("grad_clip", 0, "grad_clip: Input should be greater than 0"),
        ("max_examples", 0, "max_examples: Input should be greater than or equal to 1"),
        ("max_seconds", -5, "max_seconds: Input should be greater than 0"),
        ("diagnostics_every", -2, "diagnostics_every: Input should be greater than or equal"),
    ],
)
def test_out_of_range_settings_are_refused_naming_the_field(field, value, message):
    with pytest.raises(SpecError) as err:
        parse_study({**BASE, field: value})
    assert message in str(err.value)


def test_every_new_field_is_documented():
    for name in NEW_FIELDS:
        assert StudySpec.model_fields[name].description, name


def test_capture_steps_are_validated_and_reach_the_run():
    with pytest.raises(SpecError, match=r"capture_steps: every step must be in \[1, steps = "):
        parse_study({**BASE, "capture_steps": [0, 3]})
    spec = parse_study({**BASE, "capture_steps": [2]})
    assert spec.study_id != parse_study(BASE).study_id
    assert {r.capture_steps == [2] for r in expand(spec)} == {True}
