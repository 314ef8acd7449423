"""The one registry of optimizers.

Each entry declares its hyper-parameters as a pydantic model, so a grid point is validated
(field name and allowed range in the message) before anything reaches a worker, and a builder
that turns a model's parameters into a ``torch.optim.Optimizer``.

Spectral optimizers update 2-D hidden matrices only; every other parameter (embeddings, heads,
biases, norm gains) is routed to AdamW, following the Muon convention in DESIGN.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field


class HParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SGDParams(HParams):
    lr: float = Field(0.05, gt=0, le=100, description="learning rate")
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0, le=1)


class AdamWParams(HParams):
    lr: float = Field(1e-3, gt=0, le=10)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0, le=1)
    weight_decay: float = Field(0.01, ge=0, le=1)


class MuonParams(HParams):
    lr: float = Field(0.02, gt=0, le=100, description="learning rate of the matrix parameters")
    momentum: float = Field(0.95, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(0.0, ge=0, le=1)
    ns_steps: int = Field(5, ge=1, le=20)
    adamw_lr: float = Field(1e-3, gt=0, le=10, description="AdamW lr for non-matrix parameters")
    adamw_weight_decay: float = Field(0.0, ge=0, le=1)


class RoutedOptimizer(torch.optim.Optimizer):
    """Several optimizers over disjoint parameter sets, stepped together.

    ``param_groups`` is the concatenation of the parts' groups, so a learning-rate schedule
    written against one optimizer works unchanged; ``state_dict`` round-trips every part.
    """

    def __init__(self, parts: Sequence[torch.optim.Optimizer]) -> None:
        if not parts:
            raise ValueError("RoutedOptimizer needs at least one part")
        self.parts = list(parts)
        # Deliberately not calling Optimizer.__init__: the parts own the state.
        self.defaults = {}
        self.state = {}
        self._optimizer_step_pre_hooks = {}
        self._optimizer_step_post_hooks = {}

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [g for p in self.parts for g in p.param_groups]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for part in self.parts:
            part.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [p.state_dict() for p in self.parts]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        parts = state_dict["parts"]
        if len(parts) != len(self.parts):
            raise ValueError(f"state_dict has {len(parts)} parts, optimizer has {len(self.parts)}")
        for part, sd in zip(self.parts, parts, strict=True):
            part.load_state_dict(sd)


def _sgd(params: Iterable[torch.nn.Parameter], matrix: set[int], hp: SGDParams):
    return torch.optim.SGD(
        list(params), lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov and hp.momentum > 0,
        weight_decay=hp.weight_decay,
    )


def _adamw(params: Iterable[torch.nn.Parameter], matrix: set[int], hp: AdamWParams):
    return torch.optim.AdamW(
        list(params), lr=hp.lr, betas=(hp.beta1, hp.beta2), eps=hp.eps,
        weight_decay=hp.weight_decay,
    )


def _muon(params: Iterable[torch.nn.Parameter], matrix: set[int], hp: MuonParams):
    params = list(params)
    mats = [p for p in params if id(p) in matrix]
    rest = [p for p in params if id(p) not in matrix]
    parts: list[torch.optim.Optimizer] = []
    if mats:
        parts.append(torch.optim.Muon(
            mats, lr=hp.lr, weight_decay=hp.weight_decay, momentum=hp.momentum,
            nesterov=hp.nesterov, ns_steps=hp.ns_steps, adjust_lr_fn="original",
        ))
    if rest:
        parts.append(torch.optim.AdamW(rest, lr=hp.adamw_lr, weight_decay=hp.adamw_weight_decay))
    return RoutedOptimizer(parts)


@dataclass(frozen=True)
class OptimizerDef:
    name: str
    title: str
    params: type[HParams]
    build: Callable[..., torch.optim.Optimizer]
    description: str


OPTIMIZERS: dict[str, OptimizerDef] = {
    d.name: d
    for d in (
        OptimizerDef("sgd", "SGD-momentum", SGDParams, _sgd,
                     "Stochastic gradient descent with heavy-ball or Nesterov momentum."),
        OptimizerDef("adamw", "AdamW", AdamWParams, _adamw,
                     "Adam with decoupled weight decay."),
        OptimizerDef("muon", "Muon", MuonParams, _muon,
                     "torch.optim.Muon on hidden matrices (Newton–Schulz ×5, Nesterov 0.95), "
                     "AdamW on the rest."),
    )
}


def get_optimizer(name: str) -> OptimizerDef:
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise ValueError(
            f"unknown optimizer {name!r}; allowed: {', '.join(sorted(OPTIMIZERS))}"
        ) from None


def build_optimizer(
    name: str,
    hparams: dict[str, Any],
    params: Iterable[torch.nn.Parameter],
    matrix_params: Iterable[torch.nn.Parameter] = (),
) -> torch.optim.Optimizer:
    """Build optimizer ``name`` over ``params``; ``matrix_params`` get spectral updates."""
    d = get_optimizer(name)
    hp = d.params(**hparams)
    return d.build(params, {id(p) for p in matrix_params}, hp)
