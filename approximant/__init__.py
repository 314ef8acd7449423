"""Approximant: a lab for optimizer comparison studies.

The public entry. The dashboard, workers and CLI live in ``approximant.app``,
``approximant.engine``, ``approximant.storage`` and ``approximant.tasks``; what a training
script of your own needs is here, imported on first use so that ``import approximant`` stays
cheap (the CLI and every worker import this package first).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it
_PUBLIC = {
    "Muon": "approximant.engine.optim",
    "Freon": "approximant.engine.optim",
    "Kaon": "approximant.engine.optim",
    "TruncatedSGD": "approximant.engine.optim",
    "start_run": "approximant.client",
    "Run": "approximant.client",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'approximant' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
