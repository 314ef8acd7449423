"""What a workload is: settings, a model, batches, an evaluation and its matrix parameters."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict


class WorkloadSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class Task:
    """A workload instantiated for one seed on one device.

    ``train_loss(step)`` draws the step's batch and returns the scalar loss with a graph;
    ``evaluate()`` returns validation metrics (it runs under ``no_grad`` and ``eval()``);
    ``examples_per_step`` counts examples (or tokens) consumed by one step.
    """

    model: torch.nn.Module
    matrix_params: list[torch.nn.Parameter]
    examples_per_step: int

    def train_loss(self, step: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError


class Workload(ABC):
    """A registered training task. Subclasses set the class attributes and ``build``."""

    name: ClassVar[str]
    title: ClassVar[str]
    description: ClassVar[str]
    settings: ClassVar[type[WorkloadSettings]]
    target_metric: ClassVar[str] = "val_loss"
    default_steps: ClassVar[int] = 200

    @classmethod
    @abstractmethod
    def build(cls, settings: WorkloadSettings, seed: int, device: torch.device) -> Task:
        """Make the model and data for ``seed``; all randomness comes from ``seed``."""
