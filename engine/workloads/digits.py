"""An MLP on scikit-learn's bundled 8×8 digits (1 797 images, shipped with the package)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from pydantic import Field

from engine.workloads.base import Task, Workload, WorkloadSettings


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

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        was_training = self.model.training
        self.model.eval()
        logits = self.model(self.x_val)
        loss = torch.nn.functional.cross_entropy(logits, self.y_val).item()
        acc = (logits.argmax(dim=1) == self.y_val).float().mean().item()
        self.model.train(was_training)
        return {"val_loss": loss, "val_accuracy": acc}


class DigitsMLP(Workload):
    name = "digits_mlp"
    title = "MLP on digits"
    description = "ReLU MLP classifying scikit-learn's 8×8 handwritten digits (bundled data)."
    settings = DigitsSettings
    default_steps = 300

    @classmethod
    def build(cls, settings: WorkloadSettings, seed: int, device: torch.device) -> Task:
        assert isinstance(settings, DigitsSettings)
        x, y = load_digits_tensors()
        # The split is fixed (seed 0) so that seeds vary only the model and the batches.
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
        n_val = int(round(settings.val_fraction * x.shape[0]))
        val, train = perm[:n_val], perm[n_val:]
        torch.manual_seed(seed)
        layers: list[torch.nn.Module] = []
        width_in = x.shape[1]
        for _ in range(settings.depth):
            layers += [torch.nn.Linear(width_in, settings.hidden), torch.nn.ReLU()]
            width_in = settings.hidden
        layers.append(torch.nn.Linear(width_in, 10))
        model = torch.nn.Sequential(*layers).to(device)
        # Every weight but the classifier head's is a matrix parameter: pixels are dense
        # inputs, not an embedding table. Head and biases go to AdamW (Muon convention).
        linears = [m for m in model if isinstance(m, torch.nn.Linear)]
        matrix = [m.weight for m in linears[:-1]]
        return DigitsTask(
            model=model,
            matrix_params=matrix,
            examples_per_step=min(settings.batch_size, train.numel()),
            x_train=x[train].to(device),
            y_train=y[train].to(device),
            x_val=x[val].to(device),
            y_val=y[val].to(device),
            generator=torch.Generator().manual_seed(seed),
        )
