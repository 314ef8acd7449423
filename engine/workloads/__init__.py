"""The one registry of workloads (training tasks)."""

from approximant.engine.errors import short
from approximant.engine.workloads.base import Task, Workload
from approximant.engine.workloads.digits import DigitsCNN, DigitsMLP
from approximant.engine.workloads.random_features import RandomFeatures
from approximant.engine.workloads.tiny_gpt import TinyGPT

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
