"""Property-based fuzzing of the study spec parser and the lab's method parser.

Whatever a browser, a TOML file or a copied legend line holds, the parsers answer with a
``SpecError`` (``ValueError`` for a method line) naming the field, or a valid spec; never
another exception, never a wrong type accepted. Time per case is measured in
benchmarks/bench_specs.py, not asserted here. ``APPROXIMANT_FUZZ_EXAMPLES=5000`` searches longer.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, get_args, get_origin

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spec_strategies import (
    BASE,
    LAB_BASE,
    junk,
    method_lines,
    mutated_specs,
    to_toml,
    valid_specs,
)

from approximant.engine.approx.spec import LAB_MAPS, LAB_OPTIONS, parse_lab, parse_method_lines
from approximant.engine.errors import SpecError
from approximant.engine.optimizers import OPTIMIZERS
from approximant.engine.specs import RunSpec, StudySpec, expand, parse_study, parse_study_toml
from approximant.engine.workloads import WORKLOADS

# 200 fixed examples per property keep the suite fast and repeatable on 2 cores; set
# APPROXIMANT_FUZZ_EXAMPLES=5000 for a longer, randomised search.
_DEEP = os.environ.get("APPROXIMANT_FUZZ_EXAMPLES")
FUZZ = settings(max_examples=int(_DEEP or 200), deadline=None, derandomize=not _DEEP,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- the study parser -------------------------------------------------------------------------

def _parse(data: Any) -> StudySpec | None:
    try:
        return parse_study(data)
    except SpecError as err:
        text = str(err)
        assert text and len(text) < 20_000
        return None


@FUZZ
@given(mutated_specs())
def test_the_spec_parser_raises_only_spec_errors(data):
    spec = _parse(data)
    if spec is not None:  # whatever it accepted expands and survives storage
        again = parse_study(json.loads(json.dumps(spec.model_dump(mode="json"))))
        assert again == spec and again.study_id == spec.study_id


@FUZZ
@given(st.one_of(mutated_specs().map(to_toml), st.text(max_size=300)))
def test_the_toml_parser_raises_only_spec_errors(text):
    with contextlib.suppress(SpecError):  # anything else fails the test
        parse_study_toml(text)


def _wrong_values(annotation: Any) -> list[Any]:
    """Values of the wrong type for a field annotated ``annotation`` (bare int/float/bool/str
    and Literals of strings); empty for anything else."""
    args = set(get_args(annotation)) if get_origin(annotation) is not None else {annotation}
    if get_origin(annotation) is not None and all(isinstance(a, str) for a in args):
        return [1, True, 0.5]  # a Literal of strings
    if args - {type(None)} == {int}:
        return [True, False, "64", "1", 5.0, 2.5]
    if args - {type(None)} == {float}:
        return [True, "0.001", "1"]
    if args - {type(None)} == {bool}:
        return ["yes", "true", 1, 0, 1.0]
    if args - {type(None)} == {str}:
        return [1, True, 1.5]
    return []


def _typed_fields(model) -> list[tuple[str, Any]]:
    return [(k, v) for k, f in model.model_fields.items() for v in _wrong_values(f.annotation)]


WRONG_TOP = _typed_fields(StudySpec)
WRONG_SETTINGS = [(wl, k, v) for wl in sorted(WORKLOADS)
                  for k, v in _typed_fields(WORKLOADS[wl].settings)]
WRONG_HPARAMS = [(o, k, v) for o in sorted(OPTIMIZERS)
                 for k, v in _typed_fields(OPTIMIZERS[o].params)]


def test_the_wrong_type_tables_cover_the_fields():
    assert {k for k, _ in WRONG_TOP} >= {"steps", "bf16_autocast", "min_lr_ratio", "name"}
    assert ("digits_mlp", "hidden", "64") in WRONG_SETTINGS
    assert ("adamw", "lr", "0.001") in WRONG_HPARAMS
    assert ("muon", "schedule", 1) in WRONG_HPARAMS


@FUZZ
@given(st.sampled_from(WRONG_TOP + WRONG_SETTINGS + WRONG_HPARAMS))
def test_a_wrong_type_is_never_accepted_and_the_error_names_the_field(case):
    _refused_naming_the_field(case)


def test_every_wrong_type_in_the_tables_is_refused():
    # The sampled property above sees some of the 400-odd cases; this sees them all.
    for case in WRONG_TOP + WRONG_SETTINGS + WRONG_HPARAMS:
        _refused_naming_the_field(case)


def _refused_naming_the_field(case: tuple) -> None:
    data = json.loads(json.dumps(BASE))
    if len(case) == 2:
        key, value = case
        data[key] = value
        where = key
    elif case[0] in WORKLOADS:
        wl, key, value = case
        data["workload"] = {"name": wl, "settings": {key: value}}
        where = f"workload.settings.{key}"
    else:
        opt, key, value = case
        data["optimizers"] = [{"name": opt, "grid": {key: [value]}}]
        where = f"optimizers.0.grid.{key}"
    with pytest.raises(SpecError) as err:
        parse_study(data)
    assert f"{where}:" in str(err.value) or f"{where}." in str(err.value)


@FUZZ
@given(valid_specs())
def test_a_valid_spec_round_trips_through_json_and_its_runs_too(data):
    spec = parse_study(data)
    stored = json.loads(json.dumps(spec.model_dump(mode="json")))
    again = parse_study(stored)
    assert again == spec and again.study_id == spec.study_id
    runs = expand(spec)
    assert len(runs) == spec.n_runs()
    for run in runs[:6]:
        assert RunSpec.model_validate(json.loads(json.dumps(run.model_dump(mode="json")))) == run


# -- the lab's method lines -------------------------------------------------------------------

def _parse_lab(methods: Any) -> None:
    try:
        parse_lab({**LAB_BASE, "methods": methods})
    except SpecError as err:
        assert str(err) and len(str(err)) < 20_000


@FUZZ
@given(method_lines())
def test_the_method_line_parser_raises_only_value_errors_and_the_lab_only_spec_errors(text):
    try:
        methods = parse_method_lines(text)
    except ValueError as err:
        assert not isinstance(err, SpecError) or str(err)
        return
    _parse_lab(methods)


@FUZZ
@given(st.lists(st.dictionaries(st.sampled_from(["map", "options", "x"]),
                                st.sampled_from(LAB_MAPS) | junk, max_size=3), max_size=3)
       | junk)
def test_the_lab_parser_raises_only_spec_errors_on_junk(methods):
    _parse_lab(methods)


WRONG_OPTIONS = [(m, k, v) for m, table in LAB_OPTIONS.items() for k, opt in table.items()
                 for v in _wrong_values(opt.kind)]


@FUZZ
@given(st.sampled_from(WRONG_OPTIONS))
def test_a_wrong_option_type_is_never_accepted(case):
    _option_refused(case)


def test_every_wrong_option_type_is_refused():
    for case in WRONG_OPTIONS:
        _option_refused(case)


def _option_refused(case: tuple) -> None:
    name, key, value = case
    target = {"target": "power", "c": 0.5} if name in ("freon", "gram_eigh",
                                                        "spectral_power") else {}
    with pytest.raises(SpecError) as err:
        parse_lab({**LAB_BASE, **target, "methods": [{"map": name, "options": {key: value}}]})
    assert f"methods.0.options.{key}:" in str(err.value)
