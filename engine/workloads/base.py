"""What a workload is: settings, a model, batches, an evaluation and its matrix parameters."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict


class WorkloadSettings(BaseModel):
    # strict: hidden = "64" or a float width is refused naming the setting, never coerced.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


@dataclass
class Task:
    """A workload instantiated for one seed on one device.

    ``train_loss(step)`` draws the step's batch and returns the scalar loss with a graph;
    ``evaluate()`` returns validation metrics (it runs under ``no_grad`` and ``eval()``);
    ``examples_per_step`` counts examples (or tokens) consumed by one step.
    ``full_loss()`` is the training objective on a large fixed batch (the whole training set
    where that is affordable), with a graph: diagnostics take the "full-data" gradient G and
    Hessian products from it. It must not draw from the batch generator, so calling it never
    changes the training trajectory. ``info`` holds facts about the data worth recording with
    the run (a corpus's content hash, its size).
    """

    model: torch.nn.Module
    matrix_params: list[torch.nn.Parameter]
    examples_per_step: int
    info: dict[str, str | int | float] = field(default_factory=dict)

    def train_loss(self, step: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def full_loss(self) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no full-data loss for diagnostics")

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
    # False where bf16 would blur what the workload measures (exact least squares near its
    # noise floor); the loop then trains in fp32 on CUDA even when bf16_autocast is set.
    bf16_ok: ClassVar[bool] = True

    @classmethod
    def check_settings(cls, settings: WorkloadSettings) -> None:
        """Refuse settings of another workload (a programming error, not user input)."""
        if not isinstance(settings, cls.settings):
            raise TypeError(
                f"{cls.name} needs {cls.settings.__name__}, got {type(settings).__name__}"
            )

    @classmethod
    @abstractmethod
    def build(cls, settings: WorkloadSettings, seed: int, device: torch.device) -> Task:
        """Make the model and data for ``seed``; all randomness comes from ``seed``."""
