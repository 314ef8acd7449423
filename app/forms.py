"""Turning what a person typed into a study spec (pure functions, tested without a browser)."""

from __future__ import annotations

import re
from typing import Any

from pydantic.fields import FieldInfo

from approximant.engine.errors import SpecError

_SPLIT = re.compile(r"[,\s;]+")


def parse_values(text: str, field: str, kind: type = float) -> list[Any]:
    """``"1e-3, 3e-3"`` → ``[0.001, 0.003]``; a clear error naming ``field`` otherwise."""
    items = [t for t in _SPLIT.split(text.strip()) if t]
    if not items:
        raise SpecError(f"{field}: give at least one value")
    out: list[Any] = []
    for t in items:
        try:
            if kind is bool:
                if t.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                out.append(t.lower() in ("true", "1"))
            elif kind is int:
                out.append(int(t))
            elif kind is float:
                out.append(float(t))
            else:
                out.append(t)
        except ValueError:
            raise SpecError(f"{field}: {t!r} is not a valid {kind.__name__}") from None
    return out


def field_kind(info: FieldInfo) -> type:
    ann = info.annotation
    return ann if ann in (bool, int, float) else str


def default_text(info: FieldInfo) -> str:
    d = info.default
    return str(d).lower() if isinstance(d, bool) else f"{d:g}" if isinstance(d, float) else str(d)


def optimizer_entry(name: str, texts: dict[str, str], fields: dict[str, FieldInfo],
                    index: int) -> dict[str, Any]:
    """A grid from per-field texts; fields left at their default stay out of the label."""
    grid: dict[str, list[Any]] = {}
    problems = []
    for key, text in texts.items():
        info = fields[key]
        if key != "lr" and text.strip() == default_text(info):
            continue
        try:
            grid[key] = parse_values(text, f"optimizers.{index}.grid.{key}", field_kind(info))
        except SpecError as err:
            problems.append(str(err))
    if problems:
        raise SpecError("\n".join(problems))
    return {"name": name, "grid": grid}


def spec_to_toml(spec: dict[str, Any]) -> str:
    """A study spec as TOML, the format ``approximant run`` reads."""
    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return repr(v)

    # TOML has no null: a field left at None is simply absent (and takes its default).
    spec = {k: v for k, v in spec.items() if v is not None}
    lines = []
    tables = {k: v for k, v in spec.items() if isinstance(v, dict)}
    arrays = {k: v for k, v in spec.items()
              if isinstance(v, list) and v and isinstance(v[0], dict)}
    # The name first, as a person would write it (the model lists its training settings first).
    for k in sorted(spec, key=lambda k: k != "name"):
        if k not in tables and k not in arrays:
            lines.append(f"{k} = {val(spec[k])}")
    for k, v in tables.items():
        scalars = {a: b for a, b in v.items() if not isinstance(b, dict)}
        lines += ["", f"[{k}]", *(f"{a} = {val(b)}" for a, b in scalars.items())]
        for a, b in v.items():
            if isinstance(b, dict):
                lines += ["", f"[{k}.{a}]", *(f"{x} = {val(y)}" for x, y in b.items())]
    for k, items in arrays.items():
        for item in items:
            lines += ["", f"[[{k}]]"]
            lines += [f"{a} = {val(b)}" for a, b in item.items() if not isinstance(b, dict)]
            for a, b in item.items():
                if isinstance(b, dict):
                    lines += [f"[{k}.{a}]", *(f"{x} = {val(y)}" for x, y in b.items())]
    return "\n".join(lines) + "\n"
