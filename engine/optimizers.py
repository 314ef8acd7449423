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
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from approximant.engine.errors import short
from approximant.engine.spectral.common import DTYPES
from approximant.engine.spectral.freon import SUPPORTED_C
from approximant.engine.spectral.optimizer import ConfiguredMap, SpectralOptimizer, configure_map


class HParams(BaseModel):
    # strict: lr = "0.001" or nesterov = "yes" is refused naming the field, never coerced
    # (an int is still a valid float: lr = 1).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


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


ShapeScale = Literal["original", "match_rms_adamw", "none"]


class SpectralParams(HParams):
    """Fields every spectral optimizer shares (matrix step, momentum, AdamW for the rest)."""

    lr: float = Field(0.02, gt=0, le=100, description="learning rate of the matrix parameters")
    momentum: float = Field(0.95, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(0.0, ge=0, le=1)
    shape_scale: ShapeScale = Field(
        "original", description="step scale: √max(1, rows/cols) | 0.2·√max(rows, cols) | none"
    )
    adamw_lr: float = Field(1e-3, gt=0, le=10, description="AdamW lr for non-matrix parameters")
    adamw_weight_decay: float = Field(0.0, ge=0, le=1)

    def spectral_map(self) -> ConfiguredMap:
        """The map ``M ↦ D`` these parameters configure."""
        raise NotImplementedError

    def step_options(self) -> dict[str, Any]:
        """SpectralOptimizer's keyword arguments besides the map."""
        return dict(lr=self.lr, momentum=self.momentum, nesterov=self.nesterov,
                    weight_decay=self.weight_decay, shape_scale=self.shape_scale)


class MuonParams(SpectralParams):
    ns_steps: int = Field(5, ge=1, le=20)
    schedule: Literal["keller", "polar_express", "cans", "classical"] = Field(
        "keller", description="Newton–Schulz coefficient table (engine/spectral/schedules.py)"
    )
    ns_dtype: Literal["bfloat16", "float32"] = Field(
        "bfloat16", description="Newton–Schulz arithmetic (bfloat16 matches torch.optim.Muon)"
    )

    def spectral_map(self) -> ConfiguredMap:
        return configure_map("newton_schulz", schedule=self.schedule, steps=self.ns_steps,
                             dtype=DTYPES[self.ns_dtype], eps=1e-7)


class TorchMuonParams(HParams):
    lr: float = Field(0.02, gt=0, le=100, description="learning rate of the matrix parameters")
    momentum: float = Field(0.95, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(0.0, ge=0, le=1)
    ns_steps: int = Field(5, ge=1, le=20)
    adjust_lr_fn: Literal["original", "match_rms_adamw"] = "original"
    adamw_lr: float = Field(1e-3, gt=0, le=10, description="AdamW lr for non-matrix parameters")
    adamw_weight_decay: float = Field(0.0, ge=0, le=1)


class FreonParams(SpectralParams):
    c: float = Field(
        2 / 3, ge=0, le=1,
        description="exponent of (MMᵀ)^(−c)M; 0 SGD-momentum, ½ Muon, > ½ inverted spectrum",
    )
    method: Literal["rational", "svd", "gram_eigh"] = Field(
        "rational", description="rational iteration (c in {0, 1/4, 1/3, 1/2, 2/3, 3/4, 1}), "
        "or the exact SVD / Gram-eigh references (any c)",
    )
    floor: float = Field(
        1e-3, ge=0, le=0.1,
        description="δ in (MMᵀ + δ²I)^(−c)M, relative to ‖M‖_F; needed for c > ½",
    )
    dtype: Literal["float32", "float64"] = "float32"

    @model_validator(mode="after")
    def _c_supported(self) -> FreonParams:
        if self.method == "rational" and _snap_c(self.c) is None:
            allowed = ", ".join(str(k) for k in SUPPORTED_C)
            raise ValueError(
                f"c: method 'rational' supports {allowed}, to 3 decimals (got {self.c}); "
                "use method 'svd' for other c"
            )
        if self.method == "rational" and self.c > 0.5 and self.floor == 0:
            # Momenta are often rank-deficient (batch smaller than the layer, the first
            # step); without a floor the iteration has no stable answer there for c > ½
            # (c = 1 stops with an error, other c return amplified rounding).
            raise ValueError(
                f"floor: must be > 0 for c > 1/2 with method 'rational' (got 0 at c = "
                f"{self.c}); use method 'svd' for the pseudo-inverse convention"
            )
        return self

    def exponent(self) -> float:
        """c as the map uses it: the rational iteration's supported fraction nearest c."""
        return _snap_c(self.c) if self.method == "rational" else self.c  # validated: not None

    def spectral_map(self) -> ConfiguredMap:
        # The map sees M/‖M‖_F (prescale), so the floor is relative and, for the rational
        # iteration, ‖M‖_F ≤ 1 gives the scale and ℓ₀ = δ/scale from shapes alone.
        c, dtype = self.exponent(), DTYPES[self.dtype]
        if self.method == "rational":
            # probe=False: in training the schedule stays a function of the options alone (no
            # host sync; momentum matrices are rarely conditioned well enough for it to pay).
            return configure_map("freon", prescale=True, c=c, delta=self.floor, dtype=dtype,
                                 norm_bound=1.0, probe=False)
        name = "spectral_power" if self.method == "svd" else "gram_eigh"
        return configure_map(name, prescale=True, c=c, delta=self.floor, dtype=dtype)

    def step_options(self) -> dict[str, Any]:
        return {**super().step_options(), "schatten_c": self.exponent(),
                "schatten_floor": self.floor}


def _snap_c(c: float) -> float | None:
    """The supported fraction within 5e-4 of ``c`` (so TOML's 0.667 means 2/3), else None."""
    return next((float(k) for k in SUPPORTED_C if abs(c - float(k)) < 5e-4), None)


class KaonParams(SpectralParams):
    form: Literal["chaos", "iid"] = Field(
        "chaos", description="chaotic matmul map, or SVD with i.i.d. singular values"
    )
    steps: int = Field(5, ge=1, le=20, description="chaos iterations")
    low: float = Field(0.5, gt=0, le=10, description="i.i.d. form: lower end of the spectrum")
    high: float = Field(1.5, gt=0, le=10, description="i.i.d. form: upper end of the spectrum")
    distribution: Literal["uniform", "loguniform"] = "uniform"
    seed: int = Field(0, ge=0, le=2**31 - 1,
                      description="seed of the i.i.d. draws; unless set, the run's seed")

    @model_validator(mode="after")
    def _range(self) -> KaonParams:
        if self.low > self.high:
            raise ValueError(f"low: must be <= high (got low={self.low}, high={self.high})")
        return self

    def spectral_map(self) -> ConfiguredMap:
        if self.form == "chaos":
            return configure_map("kaon_chaos", steps=self.steps)
        return configure_map("kaon_iid", low=self.low, high=self.high,
                             distribution=self.distribution)

    def step_options(self) -> dict[str, Any]:
        return {**super().step_options(), "seed": self.seed}


class TruncatedSGDParams(SpectralParams):
    lr: float = Field(0.05, gt=0, le=100, description="learning rate of the matrix parameters")
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    shape_scale: ShapeScale = "none"
    fraction: float = Field(0.1, ge=0, lt=1, description="top fraction of σ set to zero")

    def spectral_map(self) -> ConfiguredMap:
        return configure_map("truncated_sgd", fraction=self.fraction)


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


def _spectral(params: Iterable[torch.nn.Parameter], matrix: set[int], hp: SpectralParams
              ) -> RoutedOptimizer:
    """Matrices to one SpectralOptimizer over the map ``hp`` configures, the rest to AdamW."""
    # "propagate": a NaN gradient reaches the parameters and the training loop records the
    # run as diverged (a result), instead of an exception that would crash the task.
    return _route(params, matrix, hp, lambda mats: SpectralOptimizer(
        mats, hp.spectral_map(), nonfinite="propagate", **hp.step_options()))


def _route(params: Iterable[torch.nn.Parameter], matrix: set[int],
           hp: SpectralParams | TorchMuonParams,
           matrix_opt: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]
           ) -> RoutedOptimizer:
    """The matrix parameters to ``matrix_opt``, the rest (embeddings, heads, biases, gains)
    to AdamW with the hyper-parameters' own AdamW lr and weight decay."""
    params = list(params)
    mats = [p for p in params if id(p) in matrix]
    rest = [p for p in params if id(p) not in matrix]
    parts: list[torch.optim.Optimizer] = []
    if mats:
        parts.append(matrix_opt(mats))
    if rest:
        parts.append(torch.optim.AdamW(rest, lr=hp.adamw_lr, weight_decay=hp.adamw_weight_decay))
    return RoutedOptimizer(parts)


def _torch_muon(params: Iterable[torch.nn.Parameter], matrix: set[int], hp: TorchMuonParams):
    return _route(params, matrix, hp, lambda mats: torch.optim.Muon(
        mats, lr=hp.lr, weight_decay=hp.weight_decay, momentum=hp.momentum,
        nesterov=hp.nesterov, ns_steps=hp.ns_steps, adjust_lr_fn=hp.adjust_lr_fn,
    ))


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
        OptimizerDef("muon", "Muon", MuonParams, _spectral,
                     "Muon on hidden matrices (Newton–Schulz ×5 in bf16, Nesterov 0.95; "
                     "identical to torch.optim.Muon by default), AdamW on the rest."),
        OptimizerDef("torch_muon", "torch.optim.Muon", TorchMuonParams, _torch_muon,
                     "PyTorch's own Muon as a peer baseline, AdamW on the rest."),
        OptimizerDef("freon", "Freon", FreonParams, _spectral,
                     "Momentum direction (MMᵀ + δ²I)^(−c)M with mean-Schatten normalisation; "
                     "c = ½ is Muon, c > ½ inverts the spectrum. AdamW on the rest."),
        OptimizerDef("kaon", "Kaon", KaonParams, _spectral,
                     "Singular values replaced by noise (chaotic map or i.i.d. draws), "
                     "AdamW on the rest."),
        OptimizerDef("truncated_sgd", "TruncatedSGD", TruncatedSGDParams, _spectral,
                     "SGD-momentum direction with its top singular values zeroed, "
                     "AdamW on the rest."),
    )
}


def get_optimizer(name: str) -> OptimizerDef:
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise ValueError(
            f"unknown optimizer {short(name)}; allowed: {', '.join(sorted(OPTIMIZERS))}"
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
