"""The lab job spec: methods × test matrices × dtypes, validated before anything is queued.

Every problem is reported as ``field.path: message`` naming the allowed values, like the
study spec (engine/specs.py). A method's options are checked by calling its map once on a
tiny matrix, so the map's own validation (which names the option and its range) speaks.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from approximant.engine.approx.cases import parse_shape, parse_spectrum
from approximant.engine.approx.methods import POWER_MAPS, RESERVED_OPTIONS
from approximant.engine.errors import (
    Printable,
    SpecError,
    check_name,
    clip,
    field_part,
    format_validation_error,
    short,
)
from approximant.engine.specs import MAX_SPEC_CHARS, run_label
from approximant.engine.spectral import SPECTRAL_MAPS, get_map
from approximant.engine.spectral.common import NULL_MODES
from approximant.engine.spectral.freon import FINISHES
from approximant.engine.spectral.schedules import SCHEDULES

# Elements × methods × dtypes above this is refused: hours of CPU, not a lab run.
MAX_WORK = 4e9
LAB_MAPS = tuple(n for n in SPECTRAL_MAPS if n != "svd")  # "svd" takes a Python callable
Scalar = bool | int | float | str


class _Strict(BaseModel):
    # strict: repeats = "3" or c = "0.5" is refused naming the field, never coerced.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


@dataclass(frozen=True)
class Option:
    """One keyword option of a lab map: its type and allowed range, as a message states it.

    ``kind`` is ``int``, ``float`` (an int is accepted), ``bool`` or ``str`` (then ``choices``).
    Bounds are inclusive unless ``open_lo``/``open_hi``.
    """

    kind: type
    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False
    choices: tuple[str, ...] = ()

    def rule(self) -> str:
        if self.kind is bool:
            return "true or false"
        if self.kind is str:
            return f"one of {', '.join(self.choices)}"
        what = "an integer" if self.kind is int else "a number"
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        hi = "inf" if self.hi is None else f"{self.hi:g}"
        return (f"{what} in {'(' if self.open_lo else '['}{lo}, {hi}"
                f"{')' if self.open_hi else ']'}")

    def accepts(self, v: Any) -> bool:
        if self.kind is bool:
            return isinstance(v, bool)
        if self.kind is str:
            return isinstance(v, str) and v in self.choices
        if isinstance(v, bool) or not isinstance(v, int | float):
            return False
        if self.kind is int and not isinstance(v, int):
            return False
        if isinstance(v, float) and not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.open_lo else v < self.lo):
            return False
        return not (self.hi is not None and (v >= self.hi if self.open_hi else v > self.hi))


_C = Option(float, 0, 1)
_DELTA = Option(float, 0, 1e3)
_EPS = Option(float, 0, 1, open_lo=True)
_L0 = Option(float, 0, 1, open_lo=True)
_NULL = Option(str, choices=NULL_MODES)
# Every option of every lab map, typed and bounded: the maps' own checks come too late for
# some (qdwh[max_iter=-1] ran zero iterations and was scored) and coerce others (steps=5.5).
# A test checks this table against the maps' signatures.
LAB_OPTIONS: dict[str, dict[str, Option]] = {
    "svd_polar": {},
    "spectral_power": {"c": _C, "delta": _DELTA},
    "gram_eigh": {"c": _C, "delta": _DELTA},
    "newton_schulz": {"schedule": Option(str, choices=tuple(SCHEDULES)),
                      "steps": Option(int, 1, 100), "eps": _EPS},
    "qdwh": {"l0": _L0, "max_iter": Option(int, 1, 50), "null": _NULL},
    "freon": {"c": _C, "delta": _DELTA, "l0": _L0, "tol": Option(float, 0, 1, True, True),
              "max_steps": Option(int, 1, 50), "norm_bound": Option(float, 0, 1e6, True),
              "probe": Option(bool), "finish": Option(str, choices=FINISHES), "null": _NULL},
    "kaon_chaos": {"steps": Option(int, 1, 100), "eps": _EPS},
    "kaon_iid": {"low": Option(float, 0, 1e3, True), "high": Option(float, 0, 1e3, True),
                 "distribution": Option(str, choices=("uniform", "loguniform"))},
    "truncated_sgd": {"fraction": Option(float, 0, 1, open_hi=True)},
}
MAX_OPTIONS = 16


class LabMethod(_Strict):
    map: Printable = Field(max_length=120,
                           description="registered spectral map (engine.spectral)")
    options: dict[str, Scalar] = Field(default_factory=dict,
                                       description="the map's keyword options")

    @field_validator("options", mode="before")
    @classmethod
    def _few_printable(cls, v: Any) -> Any:
        if isinstance(v, dict):
            if len(v) > MAX_OPTIONS:
                raise ValueError(f"at most {MAX_OPTIONS} options (got {len(v)})")
            for k, x in v.items():
                if isinstance(k, str):
                    check_name(k)
                if isinstance(x, str):
                    check_name(x)
        return v

    @property
    def label(self) -> str:
        return run_label(self.map, dict(self.options))


class CapturedRef(_Strict):
    key: Printable = Field(min_length=1, max_length=200, description="captured matrix id")
    label: Printable = Field(min_length=1, max_length=200)



class LabSpec(_Strict):
    name: Printable = Field("approximation lab", min_length=1, max_length=120)
    target: Literal["polar", "power"] = Field(
        "polar", description="polar: U Vᵀ; power: (GGᵀ)^(−c) G = U Σ^(1−2c) Vᵀ")
    c: float = Field(0.5, ge=0, le=1, description="the power c (0.5 for polar)")
    methods: list[LabMethod] = Field(min_length=1, max_length=32)
    spectra: list[str] = Field(default_factory=list, max_length=32)
    shapes: list[str] = Field(default_factory=list, max_length=16)
    captured: list[CapturedRef] = Field(default_factory=list, max_length=64)
    dtypes: list[Literal["float32", "float64", "bfloat16"]] = Field(
        default_factory=lambda: ["float32"], min_length=1, max_length=3)
    repeats: int = Field(3, ge=1, le=50, description="timed repeats per method and case")
    seed: int = Field(0, ge=0, lt=2**31)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("spectra", "shapes")
    @classmethod
    def _names(cls, v: list[str], info) -> list[str]:
        parse = parse_spectrum if info.field_name == "spectra" else parse_shape
        for s in v:
            check_name(s)
            parse(s)
        return v

    @field_validator("dtypes")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"must be distinct (got {v})")
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
    caps = Counter(c.label for c in spec.captured)
    if any(n > 1 for n in caps.values()):
        problems.append(f"captured: labels must be distinct (repeated: "
                        f"{clip(', '.join(k for k, n in caps.items() if n > 1))})")
    labels = Counter(m.label for m in spec.methods)
    dupes = sorted(x for x, n in labels.items() if n > 1)
    if dupes:
        problems.append(f"methods: the same method appears twice: {clip(', '.join(dupes))}")
    probe = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for i, m in enumerate(spec.methods):
        where = f"methods.{i}"
        if m.map not in LAB_MAPS:
            problems.append(f"{where}.map: unknown {short(m.map)}; "
                            f"allowed: {', '.join(LAB_MAPS)}")
            continue
        bad = [k for k in m.options if k in RESERVED_OPTIONS]
        if bad:
            problems.append(f"{where}.options.{bad[0]}: set by the lab (dtypes, seed), "
                            "not per method")
            continue
        typed = option_problems(where, m.map, m.options)
        if typed:
            problems.extend(typed)
            continue
        if m.map in POWER_MAPS and "c" in m.options and float(m.options["c"]) != spec.c:
            problems.append(f"{where}.options.c: must equal the job's c ({spec.c}) "
                            f"(got {m.options['c']})")
            continue
        opts = spec.method_options(m)
        if get_map(m.map).random:
            opts["generator"] = torch.Generator().manual_seed(0)
        try:
            # Rules across options (Freon's supported c, low <= high) are the map's own.
            get_map(m.map).fn(probe, dtype=torch.float64, **opts)
        except (TypeError, ValueError) as err:
            # The maps name the option first ("l0: must be ..."); anything else is the map's.
            named = str(err).split(":", 1)[0] in opts
            problems.append(f"{where}.options{'.' if named else ': '}{clip(str(err))}")
    if not problems:
        elements = sum(_elements(sh) for sh in spec.shapes) * max(1, len(spec.spectra))
        work = elements * len(spec.methods) * len(spec.dtypes) * spec.repeats
        if work > MAX_WORK:
            problems.append(f"methods × spectra × shapes × dtypes × repeats: {work:.3g} "
                            f"element-runs exceeds the limit of {MAX_WORK:.0g}")
    return problems


def option_problems(where: str, map_name: str, options: dict[str, Any]) -> list[str]:
    """Each option checked against ``LAB_OPTIONS``: unknown names, wrong types, out of range.

    Messages name the field, the method and the allowed values:
    ``methods.0.options.max_iter: must be an integer in [1, 50] for qdwh (got -1)``.
    """
    table = LAB_OPTIONS[map_name]
    problems = []
    for key, value in options.items():
        opt = table.get(key)
        shown = field_part(key)
        if opt is None:
            allowed = ", ".join(table) or "none"
            problems.append(f"{where}.options.{shown}: {map_name} has no such option; "
                            f"allowed: {allowed}")
        elif not opt.accepts(value):
            problems.append(f"{where}.options.{shown}: must be {opt.rule()} for {map_name} "
                            f"(got {short(value)})")
    return problems


def _elements(shape: str) -> int:
    s = parse_shape(shape)
    return (s.batch or 1) * s.rows * s.cols


def parse_lab(data: dict[str, Any]) -> LabSpec:
    """Validate a lab job from plain data; ``SpecError`` lists every problem, one per line.

    Nothing else escapes for any input: a malformed job is a ``SpecError``.
    """
    try:
        return LabSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err)) from None
    except (ValueError, TypeError, RecursionError) as err:
        raise SpecError(f"<lab>: {short(str(err), 200)}") from None


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
    if len(t) > 100:  # int() of thousands of digits is slow, and no option needs them
        return t
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
    if len(text) > MAX_SPEC_CHARS:
        raise ValueError(f"methods: {len(text)} characters; at most {MAX_SPEC_CHARS}")
    out: list[dict[str, Any]] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, bracket, rest = line.partition("[")
        if bracket and not rest.endswith("]"):
            raise ValueError(f"methods line {n}: missing ']' in {short(line)}")
        options: dict[str, Scalar] = {}
        for item in filter(None, (p.strip() for p in rest[:-1].split(","))) if bracket else ():
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"methods line {n}: expected key=value, got {short(item)}")
            if key.strip() in options:
                raise ValueError(f"methods line {n}: {short(key.strip())} is given twice")
            options[key.strip()] = _scalar(value)
        out.append({"map": name.strip(), "options": options})
    return out


def method_lines(methods: Any) -> str:
    """The text form of a list of method dicts (inverse of :func:`parse_method_lines`)."""
    return "\n".join(LabMethod.model_validate(m).label for m in methods)
