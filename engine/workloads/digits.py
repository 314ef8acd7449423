"""An MLP and a small CNN on scikit-learn's bundled 8×8 digits (1 797 images, no download)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from pydantic import Field

from approximant.engine.workloads.base import Task, Workload, WorkloadSettings


class DigitsSettings(WorkloadSettings):
    hidden: int = Field(128, ge=4, le=4096, description="width of each hidden layer")
    depth: int = Field(2, ge=1, le=8, description="number of hidden layers")
    batch_size: int = Field(64, ge=1, le=1437)
    val_fraction: float = Field(0.2, gt=0, lt=1)


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """Return (x, y): x is (1797, 64) float32 in [0, 1], y is (1797,) int64."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    return x, y


@dataclass
class DigitsTask(Task):
    x_train: torch.Tensor = field(default=None)  # type: ignore[assignment]
    y_train: torch.Tensor = field(default=None)  # type: ignore[assignment]
    x_val: torch.Tensor = field(default=None)  # type: ignore[assignment]
    y_val: torch.Tensor = field(default=None)  # type: ignore[assignment]
    generator: torch.Generator = field(default=None)  # type: ignore[assignment]

    def train_loss(self, step: int) -> torch.Tensor:
        idx = torch.randint(
            0, self.x_train.shape[0], (self.examples_per_step,), generator=self.generator
        ).to(self.x_train.device)
        logits = self.model(self.x_train[idx])
        return torch.nn.functional.cross_entropy(logits, self.y_train[idx])

    def full_loss(self) -> torch.Tensor:
        # The whole training split is only 1 437 images: G here is the exact full-data gradient.
        return torch.nn.functional.cross_entropy(self.model(self.x_train), self.y_train)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        was_training = self.model.training
        self.model.eval()
        logits = self.model(self.x_val)
        loss = torch.nn.functional.cross_entropy(logits, self.y_val).item()
        acc = (logits.argmax(dim=1) == self.y_val).float().mean().item()
        self.model.train(was_training)
        return {"val_loss": loss, "val_accuracy": acc}


def _split(val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation and training indices; fixed (seed 0) so seeds vary only model and batches."""
    n = 1797
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    n_val = int(round(val_fraction * n))
    return perm[:n_val], perm[n_val:]


def _digits_task(
    model: torch.nn.Module,
    matrix: list[torch.nn.Parameter],
    batch_size: int,
    val_fraction: float,
    seed: int,
    device: torch.device,
) -> DigitsTask:
    x, y = load_digits_tensors()
    val, train = _split(val_fraction)
    return DigitsTask(
        model=model.to(device),
        matrix_params=matrix,
        examples_per_step=min(batch_size, train.numel()),
        x_train=x[train].to(device),
        y_train=y[train].to(device),
        x_val=x[val].to(device),
        y_val=y[val].to(device),
        generator=torch.Generator().manual_seed(seed),
    )


class DigitsMLP(Workload):
    name = "digits_mlp"
    title = "MLP on digits"
    description = "ReLU MLP classifying scikit-learn's 8×8 handwritten digits (bundled data)."
    settings = DigitsSettings
    target_metric = "val_accuracy"
    default_steps = 300

    @classmethod
    def build(cls, settings: WorkloadSettings, seed: int, device: torch.device) -> Task:
        cls.check_settings(settings)
        torch.manual_seed(seed)
        layers: list[torch.nn.Module] = []
        width_in = 64
        for _ in range(settings.depth):
            layers += [torch.nn.Linear(width_in, settings.hidden), torch.nn.ReLU()]
            width_in = settings.hidden
        layers.append(torch.nn.Linear(width_in, 10))
        model = torch.nn.Sequential(*layers)
        # Every weight but the classifier head's is a matrix parameter: pixels are dense
        # inputs, not an embedding table. Head and biases go to AdamW (Muon convention).
        linears = [m for m in model if isinstance(m, torch.nn.Linear)]
        matrix = [m.weight for m in linears[:-1]]
        return _digits_task(
            model, matrix, settings.batch_size, settings.val_fraction, seed, device
        )


class DigitsCNNSettings(WorkloadSettings):
    channels: int = Field(16, ge=1, le=512, description="filters of the first conv; second: 2×")
    hidden: int = Field(128, ge=4, le=4096, description="width of the dense layer before the head")
    batch_size: int = Field(64, ge=1, le=1437)
    val_fraction: float = Field(0.2, gt=0, lt=1)


class DigitsCNN(Workload):
    name = "digits_cnn"
    title = "Small CNN on digits"
    description = (
        "Two 3×3 conv layers, max-pool and a dense layer on scikit-learn's 8×8 digits "
        "(bundled data)."
    )
    settings = DigitsCNNSettings
    target_metric = "val_accuracy"
    default_steps = 300

    @classmethod
    def build(cls, settings: WorkloadSettings, seed: int, device: torch.device) -> Task:
        cls.check_settings(settings)
        torch.manual_seed(seed)
        c1, c2 = settings.channels, 2 * settings.channels
        conv1 = torch.nn.Conv2d(1, c1, 3, padding=1)
        conv2 = torch.nn.Conv2d(c1, c2, 3, padding=1)
        dense = torch.nn.Linear(c2 * 4 * 4, settings.hidden)
        head = torch.nn.Linear(settings.hidden, 10)
        model = torch.nn.Sequential(
            torch.nn.Unflatten(1, (1, 8, 8)),  # (B, 64) -> (B, 1, 8, 8)
            conv1, torch.nn.ReLU(),
            conv2, torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),  # (B, c2, 8, 8) -> (B, c2, 4, 4)
            torch.nn.Flatten(),  # (B, c2, 4, 4) -> (B, c2·16)
            dense, torch.nn.ReLU(),
            head,
        )
        # Conv filters are matrix parameters (optimizers view them as out × in·kh·kw);
        # the head and the biases are not.
        matrix = [conv1.weight, conv2.weight, dense.weight]
        return _digits_task(
            model, matrix, settings.batch_size, settings.val_fraction, seed, device
        )
