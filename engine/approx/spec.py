"""The lab job spec: methods × test matrices × dtypes, validated before anything is queued.

Every problem is reported as ``field.path: message`` naming the allowed values, like the
study spec (engine/specs.py). A method's options are checked by calling its map once on a
tiny matrix, so the map's own validation (which names the option and its range) speaks.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engine.approx.cases import parse_shape, parse_spectrum
from engine.approx.methods import ITERATION_OPTION, POWER_MAPS, RESERVED_OPTIONS
from engine.errors import SpecError, format_validation_error
from engine.specs import run_label
from engine.spectral import SPECTRAL_MAPS, get_map
from engine.spectral.schedules import SCHEDULES

# Elements × methods × dtypes above this is refused: hours of CPU, not a lab run.
MAX_WORK = 4e9
LAB_MAPS = tuple(n for n in SPECTRAL_MAPS if n != "svd")  # "svd" takes a Python callable
Scalar = bool | int | float | str


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabMethod(_Strict):
    map: str = Field(description="registered spectral map (engine.spectral)")
    options: dict[str, Scalar] = Field(default_factory=dict,
                                       description="the map's keyword options")

    @property
    def label(self) -> str:
        return run_label(self.map, dict(self.options))


class CapturedRef(_Strict):
    key: str = Field(min_length=1, max_length=200, description="captured matrix id")
    label: str = Field(min_length=1, max_length=200)


class LabSpec(_Strict):
    name: str = Field("approximation lab", min_length=1, max_length=120)
    target: Literal["polar", "power"] = Field(
        "polar", description="polar: U Vᵀ; power: (GGᵀ)^(−c) G = U Σ^(1−2c) Vᵀ")
    c: float = Field(0.5, ge=0, le=1, description="the power c (0.5 for polar)")
    methods: list[LabMethod] = Field(min_length=1, max_length=32)
    spectra: list[str] = Field(default_factory=list, max_length=32)
    shapes: list[str] = Field(default_factory=list, max_length=16)
    captured: list[CapturedRef] = Field(default_factory=list, max_length=64)
    dtypes: list[Literal["float32", "float64", "bfloat16"]] = Field(
        default_factory=lambda: ["float32"], min_length=1)
    repeats: int = Field(3, ge=1, le=50, description="timed repeats per method and case")
    seed: int = Field(0, ge=0, lt=2**31)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("spectra", "shapes")
    @classmethod
    def _names(cls, v: list[str], info) -> list[str]:
        parse = parse_spectrum if info.field_name == "spectra" else parse_shape
        for s in v:
            parse(s)
        return v

    @model_validator(mode="after")
    def _deep_check(self) -> LabSpec:
        problems = _problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def job_id(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return "lab-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def cases(self) -> list[tuple[str, str]]:
        """(spectrum, shape) pairs in a fixed order; captured matrices come after these."""
        return [(sp, sh) for sh in self.shapes for sp in self.spectra]

    def method_options(self, method: LabMethod) -> dict[str, Any]:
        """The options a method runs with: its own plus the job's c for the power maps."""
        opts = dict(method.options)
        if method.map in POWER_MAPS:
            opts.setdefault("c", self.c)
        return opts


def _problems(spec: LabSpec) -> list[str]:
    problems: list[str] = []
    if spec.target == "polar" and spec.c != 0.5:
        problems.append(f"c: the polar target is c = 0.5 (got {spec.c}); choose target power")
    if not spec.cases() and not spec.captured:
        problems.append("spectra, shapes: choose at least one spectrum and one shape, "
                        "or a captured matrix")
    elif bool(spec.spectra) != bool(spec.shapes):
        problems.append("spectra, shapes: give both (each spectrum is built at each shape)")
    caps = [c.label for c in spec.captured]
    if len(set(caps)) != len(caps):
        problems.append(f"captured: labels must be distinct (got {caps})")
    labels = [m.label for m in spec.methods]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        problems.append(f"methods: the same method appears twice: {', '.join(dupes)}")
    probe = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for i, m in enumerate(spec.methods):
        where = f"methods.{i}"
        if m.map not in LAB_MAPS:
            problems.append(f"{where}.map: unknown {m.map!r}; allowed: {', '.join(LAB_MAPS)}")
            continue
        bad = [k for k in m.options if k in RESERVED_OPTIONS]
        if bad:
            problems.append(f"{where}.options.{bad[0]}: set by the lab (dtypes, seed), "
                            "not per method")
            continue
        typed = _option_type_problems(where, m.map, m.options)
        if typed:
            problems.extend(typed)
            continue
        if m.map in POWER_MAPS and "c" in m.options and float(m.options["c"]) != spec.c:
            problems.append(f"{where}.options.c: must equal the job's c ({spec.c}) "
                            f"(got {m.options['c']})")
            continue
        if m.map == "newton_schulz" and m.options.get("schedule", "keller") not in SCHEDULES:
            problems.append(f"{where}.options.schedule: unknown {m.options['schedule']!r}; "
                            f"allowed: {', '.join(SCHEDULES)}")
            continue
        it = ITERATION_OPTION.get(m.map)
        if it and it in m.options and not isinstance(m.options[it], int):
            problems.append(f"{where}.options.{it}: must be an integer (got {m.options[it]!r})")
            continue
        opts = spec.method_options(m)
        if get_map(m.map).random:
            opts["generator"] = torch.Generator().manual_seed(0)
        try:
            get_map(m.map).fn(probe, dtype=torch.float64, **opts)
        except (TypeError, ValueError) as err:
            # The maps name the option first ("l0: must be ..."); anything else is the map's.
            named = str(err).split(":", 1)[0] in opts
            problems.append(f"{where}.options{'.' if named else ': '}{err}")
    if not problems:
        elements = sum(_elements(sh) for sh in spec.shapes) * max(1, len(spec.spectra))
        work = elements * len(spec.methods) * len(spec.dtypes) * spec.repeats
        if work > MAX_WORK:
            problems.append(f"methods × spectra × shapes × dtypes × repeats: {work:.3g} "
                            f"element-runs exceeds the limit of {MAX_WORK:.0g}")
    return problems


def _option_type_problems(where: str, map_name: str, options: dict[str, Any]) -> list[str]:
    """Options given as text where the map takes a number, and numbers that are not finite."""
    params = inspect.signature(get_map(map_name).fn).parameters
    problems = []
    for key, value in options.items():
        # Annotations are strings here (postponed evaluation): "float", "float | None", "int".
        note = str(params[key].annotation) if key in params else ""
        numeric = ("float" in note or "int" in note) and "str" not in note
        if numeric and isinstance(value, str | bool):
            problems.append(f"{where}.options.{key}: must be a number (got {value!r})")
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{where}.options.{key}: must be finite (got {value})")
    return problems


def _elements(shape: str) -> int:
    s = parse_shape(shape)
    return (s.batch or 1) * s.rows * s.cols


def parse_lab(data: dict[str, Any]) -> LabSpec:
    """Validate a lab job from plain data; ``SpecError`` lists every problem, one per line."""
    try:
        return LabSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err)) from None


# The default methods for each target: every polar method the registry has, at its defaults.
POLAR_METHODS: tuple[dict[str, Any], ...] = (
    {"map": "newton_schulz", "options": {"schedule": "keller", "steps": 5}},
    {"map": "newton_schulz", "options": {"schedule": "polar_express", "steps": 8}},
    {"map": "newton_schulz", "options": {"schedule": "cans", "steps": 5}},
    {"map": "newton_schulz", "options": {"schedule": "classical", "steps": 12}},
    {"map": "qdwh", "options": {"max_iter": 6}},
    {"map": "freon", "options": {}},
    {"map": "gram_eigh", "options": {}},
    {"map": "svd_polar", "options": {}},
)
POWER_METHODS: tuple[dict[str, Any], ...] = (
    {"map": "freon", "options": {}},
    {"map": "gram_eigh", "options": {}},
    {"map": "spectral_power", "options": {}},
)
DEFAULT_SPECTRA = ("loguniform:1e-2", "loguniform:1e-4", "loguniform:1e-8", "powerlaw:1",
                   "lowrank:16", "gaussian")
DEFAULT_SHAPES = ("256x256", "1024x256", "512x1024")


def default_lab(**overrides: Any) -> LabSpec:
    """The default lab run: every polar method, six spectra, three shapes up to 1024, fp32."""
    data: dict[str, Any] = {
        "name": "default lab run", "methods": list(POLAR_METHODS),
        "spectra": list(DEFAULT_SPECTRA), "shapes": list(DEFAULT_SHAPES),
        "dtypes": ["float32"],
    }
    data.update(overrides)
    return parse_lab(data)


def _scalar(text: str) -> Scalar:
    t = text.strip()
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    for cast in (int, float):
        try:
            return cast(t)
        except ValueError:
            pass
    return t


def parse_method_lines(text: str) -> list[dict[str, Any]]:
    """Methods written one per line as their labels: ``newton_schulz[schedule=keller,steps=5]``.

    The form is the label the lab shows, so a line can be copied from a chart's legend.
    ``ValueError`` names the line. Values are read as bool, int, float, else string.
    """
    out: list[dict[str, Any]] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, bracket, rest = line.partition("[")
        if bracket and not rest.endswith("]"):
            raise ValueError(f"methods line {n}: missing ']' in {line!r}")
        options: dict[str, Scalar] = {}
        for item in filter(None, (p.strip() for p in rest[:-1].split(","))) if bracket else ():
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"methods line {n}: expected key=value, got {item!r}")
            options[key.strip()] = _scalar(value)
        out.append({"map": name.strip(), "options": options})
    return out


def method_lines(methods: Any) -> str:
    """The text form of a list of method dicts (inverse of :func:`parse_method_lines`)."""
    return "\n".join(LabMethod.model_validate(m).label for m in methods)
