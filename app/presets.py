"""Ready-made studies: the TOML files in ``examples/presets/``, for the New-study page and
``approximant run --preset NAME``.

A preset is an ordinary spec file; its leading comment block is the description a person reads
before running it. ``shorten`` cuts a spec's steps (and, for smoke tests, its seeds and grid
lists) without touching anything else, so a shortened preset runs the same code paths in
seconds.
"""

from __future__ import annotations

import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from approximant.engine.settings import ENV as SETTINGS_ENV
from approximant.engine.settings import current as current_settings

# The checkout's presets, else the copy `pip install .` puts under the environment's prefix
# (pyproject's data-files); the variable overrides both.
ENV_PRESETS = SETTINGS_ENV["presets_dir"]
_CHECKOUT_DIR = Path(__file__).resolve().parent.parent / "examples" / "presets"
_INSTALLED_DIR = Path(sys.prefix) / "share" / "approximant" / "presets"


def presets_dir() -> Path:
    chosen = current_settings().presets_dir
    if chosen is not None:
        return chosen
    return _CHECKOUT_DIR if _CHECKOUT_DIR.is_dir() else _INSTALLED_DIR


@dataclass(frozen=True)
class Preset:
    name: str  # the file's stem: ``spectral-families``
    path: Path
    text: str  # the TOML as written, comments included

    @property
    def description(self) -> str:
        """The leading comment block, without the ``#`` marks: what the preset is for, what it
        costs and what it shrank."""
        lines = []
        for line in self.text.splitlines():
            if not line.startswith("#"):
                break
            lines.append(line[1:].strip())
        return "\n".join(lines).strip()

    @property
    def summary(self) -> str:
        """The description's first sentence-line, for lists."""
        return self.description.split("\n\n")[0].replace("\n", " ")

    def data(self) -> dict[str, Any]:
        return tomllib.loads(self.text)


def presets() -> dict[str, Preset]:
    """Every preset by name, sorted; empty when the folder is missing."""
    folder = presets_dir()
    if not folder.is_dir():
        return {}
    return {p.stem: Preset(p.stem, p, p.read_text())
            for p in sorted(folder.glob("*.toml"))}


def get(name: str) -> Preset:
    """The preset ``name``; ``ValueError`` naming the ones there are."""
    found = presets()
    if name not in found:
        known = ", ".join(found) or f"none (no folder {presets_dir()}; set {ENV_PRESETS})"
        raise ValueError(f"--preset: no preset {name!r}; presets: {known}")
    return found[name]


def shorten(data: dict[str, Any], max_steps: int | None = None,
            max_values: int | None = None) -> dict[str, Any]:
    """``data`` (a raw spec) with every run cut to ``max_steps`` steps and, with
    ``max_values``, at most that many seeds and values of each grid list (the first ones).

    Cadences (evaluation, diagnostics, warmup, capture steps) are cut to fit the new length so
    the shortened spec still validates and still evaluates and measures at least once. The name
    says it was shortened, which also gives it its own study id.
    """
    for flag, value in (("--max-steps", max_steps), ("--max-values", max_values)):
        if value is not None and value < 1:
            raise ValueError(f"{flag}: must be ≥ 1 (got {value})")
    out = dict(data)
    notes = []
    if max_steps is not None and isinstance(out.get("steps", 200), int):
        steps = min(out.get("steps", 200), max_steps)
        out["steps"] = steps
        for key in ("eval_every", "diagnostics_every", "warmup_steps"):
            if isinstance(out.get(key), int) and out[key] > steps:
                out[key] = steps
        if "eval_every" not in out:
            out["eval_every"] = min(25, steps)  # the spec's default, fitted to the new length
        if isinstance(out.get("capture_steps"), list):
            out["capture_steps"] = [s for s in out["capture_steps"] if s <= steps]
        notes.append(f"≤ {steps} steps")
    if max_values is not None:
        if isinstance(out.get("seeds"), list):
            out["seeds"] = out["seeds"][:max_values]
        if isinstance(out.get("optimizers"), list):
            out["optimizers"] = [
                {**e, "grid": {k: (v[:max_values] if isinstance(v, list) else v)
                               for k, v in e.get("grid", {}).items()}}
                if isinstance(e, dict) and isinstance(e.get("grid"), dict) else e
                for e in out["optimizers"]]
        notes.append(f"≤ {max_values} seeds and values per grid list")
    if notes and isinstance(out.get("name"), str):
        out["name"] = f"{out['name']} (shortened: {', '.join(notes)})"[:120]
    return out
