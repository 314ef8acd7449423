"""Property-based fuzzing of the study spec parser and the lab's method parser.

Whatever a browser, a TOML file or a copied legend line holds, the parsers answer with a
``SpecError`` (``ValueError`` for a method line) naming the field, or a valid spec; never
another exception, never a wrong type accepted. Time per case is measured in
benchmarks/bench_specs.py, not asserted here. ``APPROXIMANT_FUZZ_EXAMPLES=5000`` searches longer.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from typing import Any, get_args, get_origin

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.approx.spec import LAB_MAPS, LAB_OPTIONS, parse_lab, parse_method_lines
from engine.errors import SpecError
from engine.optimizers import OPTIMIZERS
from engine.specs import RunSpec, StudySpec, expand, parse_study, parse_study_toml
from engine.workloads import WORKLOADS

# 200 fixed examples per property keep the suite fast and repeatable on 2 cores; set
# APPROXIMANT_FUZZ_EXAMPLES=5000 for a longer, randomised search.
_DEEP = os.environ.get("APPROXIMANT_FUZZ_EXAMPLES")
FUZZ = settings(max_examples=int(_DEEP or 200), deadline=None, derandomize=not _DEEP,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- strategies -------------------------------------------------------------------------------

# Text with what hostile input holds: control characters, NUL, escapes, brackets, quotes.
nasty_text = st.text(
    alphabet=st.one_of(st.characters(codec="utf-8"), st.sampled_from("\x00\x1b\n\r\t[]=,.'\"\\")),
    max_size=40,
) | st.sampled_from(["", " ", "0.001", "64", "true", "yes", "nan", "inf", "-1", "1e999",
                     "../../etc/shadow", "/proc/self/environ", "\x00", "a" * 5_000])
numbers = st.one_of(
    st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, 1, -1, 2**31, 10**20]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, nasty_text)
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(nasty_text, inner, max_size=4), max_leaves=12)

BASE: dict[str, Any] = {
    "name": "fuzz",
    "workload": {"name": "digits_mlp", "settings": {"hidden": 16}},
    "optimizers": [{"name": "adamw", "grid": {"lr": [1e-3, 3e-3]}},
                   {"name": "sgd", "grid": {"momentum": 0.9}}],
    "seeds": [0, 1],
    "steps": 10,
    "eval_every": 5,
}
TOP = list(StudySpec.model_fields)


@st.composite
def mutated_specs(draw) -> Any:
    """A valid spec with a few parts replaced by junk (whole fields, settings, grid entries)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(junk)  # not even a dict, sometimes
    spec = json.loads(json.dumps(BASE))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(["top", "extra", "setting", "grid", "grid_key",
                                      "optimizer", "workload"]))
        if where in ("grid", "grid_key", "optimizer") and not _intact(spec):
            spec["optimizers"] = json.loads(json.dumps(BASE["optimizers"]))
        if where == "top":
            spec[draw(st.sampled_from(TOP))] = draw(junk)
        elif where == "extra":
            spec[draw(nasty_text)] = draw(junk)
        elif where == "setting":
            wl = draw(st.sampled_from(sorted(WORKLOADS)))
            key = draw(st.sampled_from(list(WORKLOADS[wl].settings.model_fields)) | nasty_text)
            spec["workload"] = {"name": wl, "settings": {key: draw(junk)}}
        elif where == "grid":
            name = draw(st.sampled_from(sorted(OPTIMIZERS)))
            key = draw(st.sampled_from(list(OPTIMIZERS[name].params.model_fields)))
            spec["optimizers"][0] = {"name": name, "grid": {key: draw(junk)}}
        elif where == "grid_key":
            spec["optimizers"][1]["grid"][draw(nasty_text)] = draw(junk)
        elif where == "optimizer":
            spec["optimizers"].append(draw(junk))
        else:
            spec["workload"] = draw(junk)
    return spec


def _intact(spec: dict[str, Any]) -> bool:
    opts = spec.get("optimizers")
    return (isinstance(opts, list) and len(opts) >= 2
            and all(isinstance(o, dict) and isinstance(o.get("grid"), dict) for o in opts[:2]))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) \
            else repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v if x is not None) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}"
                               for k, x in v.items() if x is not None) + "}"
    return json.dumps(str(v))  # a basic string, escapes included


def to_toml(spec: Any) -> str:
    """Inline-table TOML of any dict (None dropped: TOML has no null)."""
    if not isinstance(spec, dict):
        return f"x = {_toml_value(spec)}" if spec is not None else ""
    return "\n".join(f"{json.dumps(str(k))} = {_toml_value(v)}"
                     for k, v in spec.items() if v is not None)


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


valid_lrs = st.floats(min_value=1e-6, max_value=1.0) | st.integers(1, 5)


@st.composite
def valid_specs(draw) -> dict[str, Any]:
    entries = []
    for name in draw(st.lists(st.sampled_from(["adamw", "sgd", "muon", "kaon"]), min_size=1,
                              max_size=3, unique=True)):
        # Distinct as labels show them (6 significant digits): 1e-06 and 1.0000000000000002e-06
        # are one configuration to a reader, and the spec refuses them as a duplicate.
        grid: dict[str, Any] = {"lr": draw(st.lists(valid_lrs, min_size=1, max_size=3,
                                                    unique_by=lambda x: f"{float(x):g}"))}
        if name in ("sgd", "muon"):
            grid["nesterov"] = draw(st.booleans())
        if name == "muon":
            grid["schedule"] = draw(st.sampled_from(["keller", "polar_express"]))
        entries.append({"name": name, "grid": grid})
    return {
        "name": draw(st.text(st.characters(categories=["L", "N", "P", "Zs"]), min_size=1,
                             max_size=30)),
        "workload": {"name": "digits_mlp",
                     "settings": {"hidden": draw(st.integers(4, 64))}},
        "optimizers": entries,
        "seeds": draw(st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=3, unique=True)),
        "steps": draw(st.integers(1, 1000)),
        "lr_schedule": draw(st.sampled_from(["constant", "cosine", "linear"])),
        "grad_clip": draw(st.none() | st.floats(min_value=0.1, max_value=10)),
        "bf16_autocast": draw(st.booleans()),
    }


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

LAB_BASE = {"name": "fuzz lab", "spectra": ["gaussian"], "shapes": ["8x4"], "repeats": 1}
option_values = st.one_of(scalars, st.sampled_from(["keller", "auto", "uniform", "-1", "0"]))


@st.composite
def method_lines(draw) -> str:
    lines = []
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            lines.append(draw(nasty_text))
            continue
        name = draw(st.sampled_from(LAB_MAPS) | nasty_text)
        keys = list(LAB_OPTIONS.get(name, {})) or ["x"]
        opts = draw(st.dictionaries(st.sampled_from(keys) | nasty_text, option_values,
                                    max_size=3))
        inner = ",".join(f"{k}={v}" for k, v in opts.items())
        lines.append(f"{name}[{inner}]" if opts or draw(st.booleans()) else name)
    return "\n".join(lines)


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
