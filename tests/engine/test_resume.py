"""A run resumed from a checkpoint continues exactly where the uninterrupted run would be."""

from __future__ import annotations

import pytest

from approximant.engine.specs import expand, parse_study
from approximant.engine.training import checkpoint_bytes, load_checkpoint, train

GPT = {"depth": 1, "width": 32, "heads": 2, "context": 16, "batch_size": 4,
       "corpus_bytes": 20_000, "eval_batches": 1}
CASES = [
    ("digits_mlp", {"hidden": 16, "batch_size": 16}, "adamw", {"lr": 3e-3}, {}),
    # Kaon's i.i.d. spectra draw from the optimizer's own generator.
    ("digits_mlp", {"hidden": 16, "batch_size": 16}, "kaon", {"lr": 0.02, "form": "iid"}, {}),
    ("random_features", {}, "sgd", {"lr": 0.05},
     {"lr_schedule": "cosine", "warmup_steps": 3}),
    ("tiny_gpt", GPT, "muon", {"lr": 0.02, "ns_dtype": "float32"}, {}),
]


def _run(workload, settings, optimizer, hp, extra):
    spec = parse_study({
        "name": "resume", "workload": {"name": workload, "settings": settings},
        "optimizers": [{"name": optimizer, "grid": hp}], "seeds": [3], "steps": 12,
        "eval_every": 4, **extra,
    })
    return expand(spec)[0]


def _key(rows):
    # Everything but the clock, which differs between any two runs.
    return [(r["step"], r["name"], r["value"]) for r in rows
            if r["name"] not in ("step_time",)]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_resumed_run_reproduces_the_uninterrupted_one(case):
    run = _run(*case)
    full: list[dict] = []
    saved: dict[int, bytes] = {}

    def keep(step, make):
        if step in (5, 8):
            saved[step] = checkpoint_bytes(make())  # now: the state holds live tensors

    assert train(run, full.extend, checkpoint=keep).status == "finished"
    for step, blob in saved.items():
        state = load_checkpoint(blob)  # as the worker does
        rest: list[dict] = []
        assert train(run, rest.extend, resume=state).status == "finished"
        assert min(r["step"] for r in rest) == step + 1  # no step is trained twice
        assert _key(rest) == _key([r for r in full if r["step"] > step])


def test_a_checkpoint_of_another_run_is_refused():
    a = _run(*CASES[0])
    b = _run("digits_mlp", {"hidden": 16, "batch_size": 16}, "adamw", {"lr": 1e-3}, {})
    states = []
    train(a, lambda rows: None, checkpoint=lambda s, make: states.append(make()) if s == 2
          else None)
    with pytest.raises(ValueError, match="resume: checkpoint is for run"):
        train(b, lambda rows: None, resume=states[0])
