"""Train a model of your own with Approximant's optimizers and log it to a study.

Start the dashboard (`approximant up`) in this folder, then, from another terminal:

    python examples/own_script.py --optimizer freon --c 0.6667 --seed 0
    python examples/own_script.py --optimizer muon --seed 0
    python examples/own_script.py --optimizer adamw --lr 0.001 --seed 0

Each call is one run of the study "digits, my own loop"; its curves appear live on the
dashboard beside each other (group by optimizer and config, seeds as bands). With
``--checkpoint FILE`` the script saves its state every 100 steps: kill it and start it again
with the same arguments and it continues from its checkpoint, as the same run, with no row
twice. The data are scikit-learn's 8×8 digits (shipped with it: nothing is downloaded).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from sklearn.datasets import load_digits

import approximant

SPECTRAL = {"freon": approximant.Freon, "muon": approximant.Muon, "kaon": approximant.Kaon,
            "truncated_sgd": approximant.TruncatedSGD}


def data() -> tuple[torch.Tensor, ...]:
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    val, train = order[:360], order[360:]
    return x[train], y[train], x[val], y[val]


def build(optimizer: str, seed: int, lr: float | None = None, c: float = 2 / 3
          ) -> tuple[torch.nn.Module, list[torch.optim.Optimizer], dict[str, float]]:
    """The model, its optimizers and the config to log (the options given, with defaults
    filled in by the optimizer)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 10))
    # The Muon convention: spectral steps for hidden matrices, AdamW for the input layer, the
    # head and every bias.
    hidden = [model[2].weight]
    rest = [p for p in model.parameters() if all(p is not h for h in hidden)]
    if optimizer == "adamw":
        config = {"lr": lr or 1e-3}
        return model, [torch.optim.AdamW(model.parameters(), lr=config["lr"])], config
    options = {"c": c} if optimizer == "freon" else {}
    if lr is not None:
        options["lr"] = lr
    spectral = SPECTRAL[optimizer](hidden, **options)
    config = {k: v for k, v in spectral.hparams.model_dump().items() if k in ("lr", *options)}
    return model, [spectral, torch.optim.AdamW(rest, lr=1e-3, weight_decay=0.0)], config


def train_step(model: torch.nn.Module, optimizers: list[torch.optim.Optimizer],
               xt: torch.Tensor, yt: torch.Tensor, seed: int, step: int) -> float:
    """One step on a batch of 64; returns the loss."""
    # Each step's batch is a function of (seed, step): a resumed run sees the batches the
    # uninterrupted one would have.
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    idx = torch.randint(0, len(yt), (64,), generator=g)
    loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
    for opt in optimizers:
        opt.zero_grad()
    loss.backward()
    for opt in optimizers:
        opt.step()
    return loss.item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default="digits, my own loop")
    ap.add_argument("--optimizer", choices=[*SPECTRAL, "adamw"], default="freon")
    ap.add_argument("--lr", type=float, default=None, help="default: the optimizer's own")
    ap.add_argument("--c", type=float, default=2 / 3, help="Freon's exponent")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--checkpoint", type=Path, default=None)
    args = ap.parse_args()

    xt, yt, xv, yv = data()
    model, optimizers, config = build(args.optimizer, args.seed, args.lr, args.c)
    step = 0
    if args.checkpoint and args.checkpoint.exists():
        state = torch.load(args.checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        for opt, s in zip(optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(s)
        step = state["step"]

    with approximant.start_run(args.study, optimizer=args.optimizer, config=config,
                               seed=args.seed, steps=args.steps) as run:
        print(f"run {run.run_id} attempt {run.attempt}: from step {step + 1} "
              f"(recorded up to {run.resume_step})", flush=True)
        if step == 0:
            run.log(0, **evaluate(model, xv, yv))
        while step < args.steps and not run.cancelled:
            step += 1
            run.log(step, train_loss=train_step(model, optimizers, xt, yt, args.seed, step))
            if step % args.eval_every == 0 or step == args.steps:
                run.log(step, **evaluate(model, xv, yv))
            if args.checkpoint and step % 100 == 0:
                run.flush()  # the rows up to this step are recorded before the checkpoint is
                tmp = args.checkpoint.with_suffix(".tmp")
                torch.save({"model": model.state_dict(), "step": step,
                            "optimizers": [o.state_dict() for o in optimizers]}, tmp)
                tmp.replace(args.checkpoint)  # never a half-written checkpoint
        if run.cancelled:
            run.finish("cancelled", f"cancelled from the dashboard at step {step}")


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    logits = model(x)
    return {"val_loss": torch.nn.functional.cross_entropy(logits, y).item(),
            "val_accuracy": (logits.argmax(1) == y).float().mean().item()}


if __name__ == "__main__":
    main()
