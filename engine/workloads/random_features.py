"""Random-feature teacher–student least squares: the paper's setting for step-size optimality.

Inputs ``x ∈ R^d`` are Gaussian with a power-law covariance ``diag(j^(−alpha))``; a linear teacher
``y = T x / s + noise·ε`` gives ``k`` outputs; the student sees fixed random features
``φ(x) = F x / s`` (or their ReLU) and fits one matrix ``W`` (k × p) by

    L(W) = ½ · mean over examples and outputs of (W φ(x) − y)².

The model is linear in ``W``, so on the training set the loss is an exact quadratic: the
full-data gradient is ``(W Φᵀ − Yᵀ) Φ / (n k)`` and the Hessian acts as ``H[D] = D ΦᵀΦ / (n k)``
(Φ is n × p, one row per example). Diagnostics computed here are exact, not estimates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import Field, ValidationInfo, field_validator

from approximant.engine.workloads.base import Task, Workload, WorkloadSettings


class RandomFeatureSettings(WorkloadSettings):
    input_dim: int = Field(128, ge=1, le=65_536, description="input dimension d")
    features: int = Field(256, ge=1, le=65_536, description="random features p (student width)")
    outputs: int = Field(16, ge=1, le=8_192, description="teacher outputs k (rows of W)")
    n_train: int = Field(4096, ge=1, le=10_000_000, description="training examples")
    n_val: int = Field(1024, ge=1, le=10_000_000, description="validation examples")
    alpha: float = Field(1.0, ge=0, le=8, description="input spectrum λ_j = j^(−alpha)")
    noise: float = Field(0.1, ge=0, le=100, description="label noise standard deviation")
    activation: Literal["linear", "relu"] = Field("linear", description="feature map")
    init_scale: float = Field(1.0, ge=0, le=100, description="W entries ~ N(0, init_scale²/p)")
    data_seed: int = Field(0, ge=0, lt=2**31, description="seed of inputs, features, teacher")
    batch_size: int = Field(64, ge=1, le=10_000_000, validate_default=True)

    @field_validator("batch_size")
    @classmethod
    def _batch_fits(cls, v: int, info: ValidationInfo) -> int:
        n = info.data.get("n_train")
        if n is not None and v > n:
            raise ValueError(f"must be at most n_train ({n}) (got {v})")
        return v


@dataclass
class RandomFeatureData:
    """Features and targets, one row per example: phi is (n, p), y is (n, k)."""

    phi_train: torch.Tensor
    y_train: torch.Tensor
    phi_val: torch.Tensor
    y_val: torch.Tensor


def make_data(s: RandomFeatureSettings) -> RandomFeatureData:
    """Draw the data set from ``s.data_seed`` alone (CPU, float32)."""
    g = torch.Generator().manual_seed(s.data_seed)
    lam = torch.arange(1, s.input_dim + 1, dtype=torch.float64) ** (-s.alpha)
    # Dividing by √tr Λ keeps features and targets at unit variance whatever alpha and d are,
    # so one learning rate suits a range of settings.
    scale = lam.sum().sqrt()
    feat = torch.randn(s.features, s.input_dim, generator=g, dtype=torch.float64)
    teacher = torch.randn(s.outputs, s.input_dim, generator=g, dtype=torch.float64)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, s.input_dim, generator=g, dtype=torch.float64) * lam.sqrt()
        phi = x @ feat.T / scale
        if s.activation == "relu":
            phi = torch.relu(phi) * 2**0.5
        y = x @ teacher.T / scale + s.noise * torch.randn(
            n, s.outputs, generator=g, dtype=torch.float64
        )
        return phi.float(), y.float()

    phi_train, y_train = draw(s.n_train)
    phi_val, y_val = draw(s.n_val)
    return RandomFeatureData(phi_train, y_train, phi_val, y_val)


def least_squares(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (pred - y).pow(2).mean()


@dataclass
class RandomFeatureTask(Task):
    data: RandomFeatureData = field(default=None)  # type: ignore[assignment]
    generator: torch.Generator = field(default=None)  # type: ignore[assignment]

    def sample_batch(self) -> torch.Tensor:
        """The next mini-batch's row indices (with replacement), from the run's generator."""
        n = self.data.phi_train.shape[0]
        return torch.randint(0, n, (self.examples_per_step,), generator=self.generator)

    def train_loss(self, step: int) -> torch.Tensor:
        idx = self.sample_batch().to(self.data.phi_train.device)
        return least_squares(self.model(self.data.phi_train[idx]), self.data.y_train[idx])

    def full_loss(self) -> torch.Tensor:
        return least_squares(self.model(self.data.phi_train), self.data.y_train)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        val = least_squares(self.model(self.data.phi_val), self.data.y_val).item()
        train = self.full_loss().item()
        return {"val_loss": val, "train_full_loss": train}


class RandomFeatures(Workload):
    name = "random_features"
    title = "Random-feature least squares"
    description = (
        "Teacher–student least squares on fixed random features of power-law Gaussian inputs; "
        "one k × p weight matrix; exact full-data gradient and Hessian."
    )
    settings = RandomFeatureSettings
    target_metric = "val_loss"
    default_steps = 300
    bf16_ok = False

    @classmethod
    def build(cls, settings: WorkloadSettings, seed: int, device: torch.device) -> Task:
        cls.check_settings(settings)
        data = make_data(settings)
        torch.manual_seed(seed)
        model = torch.nn.Linear(settings.features, settings.outputs, bias=False)
        with torch.no_grad():
            model.weight.normal_(0.0, settings.init_scale / settings.features**0.5)
        model = model.to(device)
        data = RandomFeatureData(*(t.to(device) for t in (
            data.phi_train, data.y_train, data.phi_val, data.y_val)))
        return RandomFeatureTask(
            model=model,
            # The single weight matrix is the whole model, so it is the spectral parameter.
            matrix_params=[model.weight],
            examples_per_step=settings.batch_size,
            data=data,
            generator=torch.Generator().manual_seed(seed),
        )
