"""Hypothesis strategies for study specs and lab method lines: what a browser, a TOML file or
a copied legend line may hold, hostile or careless.

Shared by tests/test_fuzz_specs.py (the parsers answer only with a SpecError naming the field)
and benchmarks/bench_specs.py (what a parse costs); benchmarks/ is on pytest's pythonpath.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import strategies as st

from approximant.engine.approx.spec import LAB_MAPS, LAB_OPTIONS
from approximant.engine.optimizers import OPTIMIZERS
from approximant.engine.specs import StudySpec
from approximant.engine.workloads import WORKLOADS

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


# -- the lab's method lines

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
