"""A page's view settings kept in the URL, so a link reproduces what its sender saw.

Each setting has a default and a parser; values that fail to parse fall back to the default
(a hand-edited link must not break the page). Widgets take their first value from the URL and
write back every change; defaults are left out so links stay short.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import streamlit as st


@dataclass(frozen=True)
class Setting:
    default: Any
    parse: Callable[[str], Any]
    allowed: tuple | None = None
    bounds: tuple[float, float] | None = None

    def read(self, raw: str | None) -> Any:
        if raw is None:
            return self.default
        try:
            value = self.parse(raw)
        except (TypeError, ValueError):
            return self.default
        if self.allowed is not None and value not in self.allowed:
            return self.default
        if self.bounds is not None and not self.bounds[0] <= value <= self.bounds[1]:
            return self.default
        return value

    def write(self, value: Any) -> str:
        if isinstance(value, bool):
            return "1" if value else "0"
        return str(value)


def flag(raw: str) -> bool:
    if raw not in ("0", "1"):
        raise ValueError(raw)
    return raw == "1"


def optional_float(raw: str) -> float | None:
    return float(raw) if raw != "" else None


_METRIC = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


def metric_name(raw: str) -> str:
    """A metric as workloads name them (``val_loss``): anything else in a hand-edited link is
    refused here rather than shown on the page."""
    if not _METRIC.fullmatch(raw):
        raise ValueError(raw)
    return raw


def unit_interval(raw: str) -> float:
    v = float(raw)
    if not 0 <= v < 1:
        raise ValueError(raw)
    return v


class ViewState:
    """Settings of one page, bound to widget keys ``view.<name>`` and to query parameters."""

    def __init__(self, settings: dict[str, Setting], scope: str) -> None:
        self.settings = settings
        self.scope = scope  # e.g. the study id: a new study starts from its own URL

    def key(self, name: str) -> str:
        return f"view.{name}"

    def load(self) -> None:
        """Seed the widgets: from the URL when this scope is new to the session, otherwise
        only those Streamlit dropped (it forgets a page's widget keys once the page is left),
        from the URL or else from what this scope last showed."""
        memory = st.session_state.setdefault("view.memory", {}).setdefault(self.scope, {})
        fresh = st.session_state.get("view.scope") != self.scope
        st.session_state["view.scope"] = self.scope
        for name, setting in self.settings.items():
            key = self.key(name)
            if fresh or key not in st.session_state:
                raw = st.query_params.get(name)
                st.session_state[key] = (setting.read(raw) if raw is not None or fresh
                                         else memory.get(name, setting.default))

    def value(self, name: str) -> Any:
        return st.session_state.get(self.key(name), self.settings[name].default)

    def save(self) -> None:
        """Put every non-default setting in the URL and drop the defaults."""
        memory = st.session_state.setdefault("view.memory", {}).setdefault(self.scope, {})
        for name, setting in self.settings.items():
            value = self.value(name)
            memory[name] = value
            if value == setting.default or value is None:
                if name in st.query_params:
                    del st.query_params[name]
            else:
                st.query_params[name] = setting.write(value)

    def query(self, **fixed: str) -> str:
        """The query string of this view (non-defaults only), with ``fixed`` parameters first."""
        params = dict(fixed)
        for name, setting in self.settings.items():
            value = self.value(name)
            if value != setting.default and value is not None:
                params[name] = setting.write(value)
        return urlencode(params)
