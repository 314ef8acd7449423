"""Names as people write them: metrics as words with units, optimizer configs as
"Freon (c = ⅔, lr = 0.02)" rather than the run label ``freon[c=0.6667,lr=0.02]``.

Run labels stay what they are everywhere data is keyed (run ids hash them, URLs carry them);
these titles are for what a person reads: legends, table cells, axis titles, errors.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from approximant.engine.optimizers import OPTIMIZERS

METRIC_TITLES = {
    "train_loss": "Training loss",
    "val_loss": "Validation loss",
    "val_accuracy": "Validation accuracy",
    "lr": "Learning rate",
    "grad_norm": "Gradient norm ‖g‖",
    "step_time": "Step time (s)",
    "diag_gamma": "Alignment γ",
    "diag_phi": "Descent potential Φ",
    "diag_eta_opt": "Optimal step η*",
    "diag_best_decrease": "Best decrease γ²Φ/2",
    "diag_pred_change": "Predicted loss change",
    "diag_loss_change": "Loss change (measured)",
    "diag_full_loss": "Full-data loss",
    "diag_gtd_batch": "⟨g_batch, d⟩",
    "diag_gtd_full": "⟨g_full, d⟩",
    "diag_dhd": "Curvature ⟨d, Hd⟩",
    "diag_sv_max": "Update σ_max",
    "diag_sv_median": "Update σ median",
    "diag_sv_min": "Update σ_min",
    "diag_stable_rank": "Update stable rank",
}

# What a table cell or tooltip shows for a missing number (Streamlit's default is "None").
MISSING = "–"


def fmt(v: float | None, digits: int = 4) -> str:
    """A number as a person reads it: ``digits`` significant digits, ∞ for an infinity and
    ``MISSING`` for a missing value."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return MISSING
    if isinstance(v, float) and math.isinf(v):
        return "∞" if v > 0 else "−∞"
    return f"{v:.{digits}g}"


# Metrics where more is better; every other metric is read as a loss (lower is better).
HIGHER_IS_BETTER = {"val_accuracy", "train_accuracy"}

# Titles of the optimizers' hyper-parameters where the key is not already what people write.
PARAM_TITLES = {"weight_decay": "wd", "beta1": "β₁", "beta2": "β₂", "eps": "ε",
                "adamw_lr": "AdamW lr", "adamw_weight_decay": "AdamW wd", "ns_steps": "NS steps",
                "ns_dtype": "NS dtype"}


def param_title(key: str) -> str:
    return PARAM_TITLES.get(key, key.replace("_", " "))


# Exponents people write as fractions (Freon's c); a value that is the fraction to the digits
# printed is shown as its glyph ("c = ⅔"). Other parameters print as they are: "lr = ½" is no
# one's notation.
FRACTION_PARAMS = {"c"}
GLYPHS = {Fraction(1, 4): "¼", Fraction(1, 3): "⅓", Fraction(1, 2): "½", Fraction(2, 3): "⅔",
          Fraction(3, 4): "¾"}

_LABEL = re.compile(r"^(?P<name>[a-z_][a-z0-9_]*)(?:\[(?P<inner>.*)\])?$")


def metric_title(name: str) -> str:
    """A metric as words, with its unit where it has one; unknown names as they are."""
    if name in METRIC_TITLES:
        return METRIC_TITLES[name]
    base, _, part = name.partition("/")
    if part and base in METRIC_TITLES:
        return f"{METRIC_TITLES[base]} · {part}"
    return name


def optimizer_title(name: str) -> str:
    d = OPTIMIZERS.get(name)
    return d.title if d is not None else name


def _value(key: str, text: str) -> str:
    if key not in FRACTION_PARAMS:
        return text
    try:
        v = float(text)
    except ValueError:
        return text
    decimals = len(text.partition(".")[2]) if "e" not in text else 0
    for frac, glyph in GLYPHS.items():
        if frac.denominator in (2, 4):  # exact in decimal: the printed value must be exact
            if v == float(frac):
                return glyph
        # ⅓ and ⅔ only rounded, and only to four places or more: 0.667 stays 0.667, so two
        # configs whose c differ in the fourth place never share a title.
        elif decimals >= 4 and round(float(frac), decimals) == v:
            return glyph
    return text


def config_title(label: str) -> str:
    """``freon[c=0.6667,lr=0.02]`` → ``Freon (c = ⅔, lr = 0.02)``; ``adamw`` → ``AdamW``.
    A label of another shape (an old study's, a custom script's) is returned unchanged."""
    m = _LABEL.match(label)
    if m is None:
        return label
    title = optimizer_title(m["name"])
    if not m["inner"]:
        return title
    parts = []
    for item in m["inner"].split(","):
        key, eq, value = item.partition("=")
        if not eq:
            return label
        parts.append(f"{param_title(key)} = {_value(key, value)}")
    return f"{title} ({', '.join(parts)})"


def group_titles(groups: list[str]) -> dict[str, str]:
    """Each group's title; where two groups would read the same, both keep their labels, so
    a legend never merges two configs."""
    titles = {g: config_title(g) for g in groups}
    seen: dict[str, int] = {}
    for t in titles.values():
        seen[t] = seen.get(t, 0) + 1
    return {g: (t if seen[t] == 1 else g) for g, t in titles.items()}


# Spec fields as the New-study form names them, for errors a person reads there.
FIELD_TITLES = {"name": "Study name", "seeds": "Seeds", "steps": "Steps per run",
                "eval_every": "Evaluate every", "device": "Device", "optimizers": "Optimizers",
                "workload": "Workload", "lr_schedule": "lr schedule",
                "warmup_steps": "Warmup steps", "min_lr_ratio": "Final lr ratio",
                "grad_clip": "Gradient clip", "max_seconds": "Time budget",
                "diagnostics_every": "Diagnostics every", "capture_steps": "Capture steps"}
_PROBLEM = re.compile(r"^(?P<path>[A-Za-z_][\w.]*): (?P<rest>.*)$", re.S)


def field_title(path: str, spec: dict | None = None) -> str | None:
    """``optimizers.1.grid.lr`` → ``AdamW lr`` (the optimizer named by the spec at index 1),
    ``workload.settings.hidden`` → ``Digits MLP hidden``; None for a path of another shape."""
    from approximant.engine.workloads import WORKLOADS

    parts = path.split(".")
    spec = spec if isinstance(spec, dict) else {}
    if parts[0] == "optimizers" and len(parts) >= 2 and parts[1].isdigit():
        i = int(parts[1])
        entries = spec.get("optimizers")
        entry = entries[i] if isinstance(entries, list) and i < len(entries) else None
        name = entry.get("name") if isinstance(entry, dict) else None
        who = optimizer_title(name) if isinstance(name, str) else f"Optimizer {i + 1}"
        if len(parts) == 4 and parts[2] == "grid":
            return f"{who} {param_title(parts[3])}"
        if len(parts) == 3 and parts[2] == "name":
            return f"Optimizer {i + 1}"
        return who if len(parts) <= 3 else None
    if parts[:2] == ["workload", "settings"] and len(parts) == 3:
        wl = spec.get("workload")
        name = wl.get("name") if isinstance(wl, dict) else None
        d = WORKLOADS.get(name) if isinstance(name, str) else None
        return f"{d.title if d else 'Workload'} {parts[2].replace('_', ' ')}"
    if len(parts) == 1:
        return FIELD_TITLES.get(parts[0])
    return None


def human_problems(text: str, spec: dict | None = None, show_path: bool = False) -> str:
    """A spec error with each problem's field as the form names it: ``AdamW lr: …``, or
    ``AdamW lr (optimizers.1.grid.lr): …`` where the reader wrote the path (a TOML spec)."""
    out = []
    for line in str(text).splitlines():
        m = _PROBLEM.match(line)
        title = field_title(m["path"], spec) if m else None
        if title is None or (show_path and "." not in m["path"]):
            # A top-level key already reads as what the TOML calls it.
            out.append(line)
        else:
            out.append(f"{title} ({m['path']}): {m['rest']}" if show_path else
                       f"{title}: {m['rest']}")
    return "\n".join(out)
