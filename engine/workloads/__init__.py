"""The one registry of workloads (training tasks)."""

from engine.errors import short
from engine.workloads.base import Task, Workload
from engine.workloads.digits import DigitsCNN, DigitsMLP
from engine.workloads.random_features import RandomFeatures
from engine.workloads.tiny_gpt import TinyGPT

WORKLOADS: dict[str, type[Workload]] = {
    w.name: w for w in (DigitsMLP, DigitsCNN, RandomFeatures, TinyGPT)
}


def get_workload(name: str) -> type[Workload]:
    try:
        return WORKLOADS[name]
    except KeyError:
        raise ValueError(
            f"unknown workload {short(name)}; allowed: {', '.join(sorted(WORKLOADS))}"
        ) from None


__all__ = ["WORKLOADS", "Task", "Workload", "get_workload"]
