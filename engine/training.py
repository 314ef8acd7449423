"""The training loop: one run spec in, metric rows out through ``sink``.

Only the training step is timed; the clock pauses for evaluation and, on CUDA, the device is
synchronised before the clock is read. A NaN or infinite loss ends the run as ``diverged``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine.optimizers import build_optimizer
from engine.specs import RunSpec, resolve_device
from engine.workloads import get_workload

Row = dict[str, float | int | str]
Sink = Callable[[list[Row]], None]


@dataclass
class RunResult:
    status: str  # finished | diverged | cancelled
    steps_done: int
    final: dict[str, float] = field(default_factory=dict)
    message: str = ""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(
    run: RunSpec,
    sink: Sink,
    should_stop: Callable[[], bool] | None = None,
) -> RunResult:
    """Train ``run`` to its step budget, sending metric rows to ``sink``.

    Rows are ``{step, name, value, wall_s, tokens}``: ``wall_s`` is cumulative training time
    (evaluation excluded) and ``tokens`` the examples (or tokens) seen so far. ``should_stop``
    is polled between steps for cooperative cancellation.
    """
    device = torch.device(resolve_device(run.device))
    wl = get_workload(run.workload.name)
    task = wl.build(wl.settings(**run.workload.settings), run.seed, device)
    params = [p for p in task.model.parameters() if p.requires_grad]
    opt = build_optimizer(run.optimizer, run.hparams, params, task.matrix_params)
    per_step = task.examples_per_step
    wall = 0.0
    final: dict[str, float] = {}

    def evaluate(step: int) -> None:
        metrics = task.evaluate()
        final.update(metrics)
        sink([
            {"step": step, "name": k, "value": float(v), "wall_s": wall, "tokens": step * per_step}
            for k, v in metrics.items()
        ])

    task.model.train()
    evaluate(0)
    for step in range(1, run.steps + 1):
        if should_stop is not None and should_stop():
            return RunResult("cancelled", step - 1, final, "cancelled by request")
        _sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = task.train_loss(step)
        loss.backward()
        opt.step()
        loss_value = loss.item()  # a device sync point on CUDA, so the clock below is honest
        dt = time.perf_counter() - t0
        wall += dt
        tokens = step * per_step
        lr = opt.param_groups[0]["lr"]
        sink([
            {"step": step, "name": "train_loss", "value": loss_value, "wall_s": wall,
             "tokens": tokens},
            {"step": step, "name": "lr", "value": float(lr), "wall_s": wall, "tokens": tokens},
            {"step": step, "name": "step_time", "value": dt, "wall_s": wall, "tokens": tokens},
        ])
        final["train_loss"] = loss_value
        if not math.isfinite(loss_value):
            return RunResult("diverged", step, final, f"loss became {loss_value} at step {step}")
        if step % run.eval_every == 0 or step == run.steps:
            evaluate(step)
    return RunResult("finished", run.steps, final)
