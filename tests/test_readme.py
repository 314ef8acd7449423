"""The README's Python examples run as printed."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_the_optimizer_example_builds_optimizers_that_train() -> None:
    scope: dict = {}
    exec(BLOCKS[0], scope)  # noqa: S102 - our own README
    model, opts = scope["model"], scope["opts"]
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    before = [p.detach().clone() for p in model.parameters()]
    for opt in opts:
        opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for opt in opts:
        opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(model.parameters(), before, strict=True))
    assert type(opts[0]).__name__ == "Freon"


def test_the_logging_example_is_the_client_as_it_is(clean_broker, monkeypatch) -> None:
    """The second block, with train_step given and the broker of the test."""
    monkeypatch.setenv("APPROXIMANT_BROKER_URL", clean_broker)
    scope: dict = {"train_step": lambda: 0.5}
    exec("import approximant\n" + BLOCKS[1].replace("1000", "20").replace("1001", "21"), scope)
    run = scope["run"]
    assert run.resume_step == 0 and run._ended == "finished"
