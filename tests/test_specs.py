"""Study specs: validation with field-named errors, expansion, deterministic run ids."""

from __future__ import annotations

import pytest

from approximant.engine.errors import SpecError
from approximant.engine.specs import expand, parse_study, parse_study_toml, run_label

GOOD = {
    "name": "s",
    "workload": {"name": "digits_mlp", "settings": {"hidden": 16}},
    "optimizers": [
        {"name": "adamw", "grid": {"lr": [1e-3, 3e-3]}},
        {"name": "sgd", "grid": {"lr": 0.1, "momentum": [0.0, 0.9]}},
    ],
    "seeds": [0, 1, 2],
    "steps": 10,
}


def with_(**changes):
    return {**GOOD, **changes}


def errors_of(data) -> str:
    with pytest.raises(SpecError) as info:
        parse_study(data)
    return str(info.value)


def test_good_spec_expands_in_order_with_sorted_labels():
    spec = parse_study(GOOD)
    runs = expand(spec)
    assert spec.n_runs() == len(runs) == (2 + 2) * 3
    assert [r.label for r in runs[::3]] == [
        "adamw[lr=0.001]", "adamw[lr=0.003]",
        "sgd[lr=0.1,momentum=0]", "sgd[lr=0.1,momentum=0.9]",
    ]
    assert [r.seed for r in runs[:3]] == [0, 1, 2]
    # Defaults are resolved into the run's config, so the run records every choice.
    assert runs[0].hparams["weight_decay"] == 0.01 and runs[0].hparams["lr"] == 1e-3
    assert len({r.run_id for r in runs}) == len(runs)
    assert all(r.run_id.startswith(spec.study_id + "-") for r in runs)


def test_ids_are_deterministic_and_change_with_the_spec():
    a, b = expand(parse_study(GOOD)), expand(parse_study(dict(GOOD)))
    assert [r.run_id for r in a] == [r.run_id for r in b]
    c = expand(parse_study(with_(steps=11)))
    assert c[0].run_id != a[0].run_id


def test_label_formats_sorted_keys():
    assert run_label("adamw", {"weight_decay": 0.0, "lr": 0.001}) == (
        "adamw[lr=0.001,weight_decay=0]")
    assert run_label("sgd", {}) == "sgd"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"workload": {"name": "nope"}}, "workload.name: unknown workload 'nope'; allowed:"),
        ({"workload": {"name": "digits_mlp", "settings": {"hidden": 0}}},
         "workload.settings.hidden: Input should be greater than or equal to 4 (got 0)"),
        ({"workload": {"name": "digits_mlp", "settings": {"colour": 1}}},
         "workload.settings.colour: Extra inputs are not permitted"),
        ({"optimizers": [{"name": "adamx"}]}, "optimizers.0.name: unknown optimizer 'adamx'"),
        ({"optimizers": [{"name": "adamw", "grid": {"lr": [-0.1]}}]},
         "optimizers.0.grid.lr: Input should be greater than 0 (got -0.1)"),
        ({"optimizers": [{"name": "adamw", "grid": {"lr": [0]}}]},
         "optimizers.0.grid.lr: Input should be greater than 0 (got 0)"),
        ({"optimizers": [{"name": "adamw", "grid": {"lr": ["fast"]}}]},
         "optimizers.0.grid.lr: Input should be a valid number"),
        ({"optimizers": [{"name": "adamw", "grid": {"lr": []}}]},
         "optimizers.0.grid.lr: empty list"),
        ({"optimizers": [{"name": "adamw", "grid": {"betas": [0.9]}}]},
         "optimizers.0.grid.betas: not a hyper-parameter of adamw; allowed: lr, "),
        ({"optimizers": []}, "optimizers: List should have at least 1 item"),
        ({"seeds": []}, "seeds: List should have at least 1 item"),
        ({"seeds": [-1]}, "seeds: every seed must be in [0, 2^31)"),
        ({"seeds": [1, 1]}, "seeds must be distinct"),
        ({"steps": 0}, "steps: Input should be greater than or equal to 1 (got 0)"),
        ({"steps": "many"}, "steps: Input should be a valid integer"),
        ({"device": "tpu"}, "device: Input should be 'auto', 'cpu' or 'cuda'"),
        ({"colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"optimizers": [{"name": "adamw", "grid": {"lr": [1e-3]}},
                         {"name": "adamw", "grid": {"lr": 1e-3}}]},
         "optimizers: the same configuration appears twice: adamw[lr=0.001]"),
    ],
)
def test_bad_specs_name_the_field(change, expected):
    assert expected in errors_of(with_(**change))


def test_every_problem_is_reported_at_once():
    msg = errors_of(with_(optimizers=[{"name": "adamw", "grid": {"lr": [-1], "eps": [0]}},
                                      {"name": "nope"}]))
    assert "optimizers.0.grid.lr" in msg
    assert "optimizers.0.grid.eps" in msg
    assert "optimizers.1.name" in msg


def test_run_limit_is_configurable(monkeypatch):
    monkeypatch.setenv("APPROXIMANT_MAX_RUNS", "5")
    msg = errors_of(GOOD)
    assert "12 runs exceeds the limit of 5 (APPROXIMANT_MAX_RUNS)" in msg
    monkeypatch.setenv("APPROXIMANT_MAX_RUNS", "12")
    assert parse_study(GOOD).n_runs() == 12


def test_toml_round_trip_and_malformed_toml():
    from approximant.app.forms import spec_to_toml

    spec = parse_study(GOOD)
    again = parse_study_toml(spec_to_toml(spec.model_dump(mode="json")))
    assert again == spec and again.study_id == spec.study_id
    with pytest.raises(SpecError, match="malformed TOML"):
        parse_study_toml("name = 'x\nsteps = 3")


def test_an_optimizers_own_seed_follows_the_run_seed_unless_the_grid_fixes_it():
    spec = parse_study(with_(optimizers=[{"name": "kaon", "grid": {"form": "iid"}},
                                         {"name": "kaon", "grid": {"form": "chaos", "seed": 7}}]))
    runs = expand(spec)
    assert [r.hparams["seed"] for r in runs] == [0, 1, 2, 7, 7, 7]


def test_extra_seed_runs_follow_the_study_rules_and_ids():
    from approximant.engine.specs import extra_seed_runs

    spec = parse_study({"name": "x", "workload": {"name": "digits_mlp"},
                        "optimizers": [{"name": "kaon", "grid": {"lr": [0.01, 0.02]}}],
                        "seeds": [0, 1]})
    runs = expand(spec)
    label = runs[2].label
    again = extra_seed_runs(spec, label, [1, 5])
    assert again[0] == runs[3]  # the id and spec expand gives seed 1 of that config
    assert again[1].hparams["seed"] == 5  # Kaon's draws follow the new seed
    for bad, msg in (([2**31], r"seeds: every seed must be in \[0, 2\^31\)"),
                     ([3, 3], "seeds: seeds must be distinct")):
        with pytest.raises(SpecError, match=msg):
            extra_seed_runs(spec, label, bad)
    with pytest.raises(SpecError, match="label: no configuration 'sgd' in study"):
        extra_seed_runs(spec, "sgd", [1])


# -- hostile input ----------------------------------------------------------------------------

@pytest.mark.parametrize(("change", "field"), [
    ({"steps": True}, "steps: Input should be a valid integer"),
    ({"steps": 10.0}, "steps: Input should be a valid integer"),
    ({"bf16_autocast": "yes"}, "bf16_autocast: Input should be a valid boolean"),
    ({"bf16_autocast": 1}, "bf16_autocast: Input should be a valid boolean"),
    ({"min_lr_ratio": "0.1"}, "min_lr_ratio: Input should be a valid number"),
    ({"seeds": ["0"]}, "seeds.0: Input should be a valid integer"),
    ({"name": 5}, "name: Input should be a valid string"),
    ({"workload": {"name": "digits_mlp", "settings": {"hidden": "64"}}},
     "workload.settings.hidden: Input should be a valid integer"),
    ({"workload": {"name": "digits_mlp", "settings": {"val_fraction": "0.2"}}},
     "workload.settings.val_fraction: Input should be a valid number"),
    ({"optimizers": [{"name": "adamw", "grid": {"lr": ["0.001"]}}]},
     "optimizers.0.grid.lr: Input should be a valid number (got '0.001')"),
    ({"optimizers": [{"name": "adamw", "grid": {"lr": [True]}}]},
     "optimizers.0.grid.lr: Input should be a valid number (got True)"),
    ({"optimizers": [{"name": "sgd", "grid": {"nesterov": ["yes"]}}]},
     "optimizers.0.grid.nesterov: Input should be a valid boolean (got 'yes')"),
    ({"optimizers": [{"name": "muon", "grid": {"ns_steps": [5.0]}}]},
     "optimizers.0.grid.ns_steps: Input should be a valid integer (got 5.0)"),
])
def test_wrong_types_are_refused_naming_the_field_not_coerced(change, field):
    assert field in errors_of(with_(**change))


def test_an_int_is_still_a_float_and_stored_specs_validate_again():
    spec = parse_study(with_(optimizers=[{"name": "sgd", "grid": {"lr": [1], "momentum": 0}}],
                             min_lr_ratio=0, grad_clip=1, max_seconds=60))
    assert spec.min_lr_ratio == 0.0 and spec.grad_clip == 1.0
    # What storage keeps (JSON) and what the worker receives must validate unchanged.
    import json

    from approximant.engine.specs import RunSpec, StudySpec

    stored = json.loads(json.dumps(spec.model_dump(mode="json")))
    assert parse_study(stored) == spec
    assert StudySpec.model_validate(stored).study_id == spec.study_id
    for run in expand(spec):
        sent = json.loads(json.dumps(run.model_dump(mode="json")))
        assert RunSpec.model_validate(sent) == run
        assert run.hparams["lr"] == 1.0


def test_an_over_limit_grid_is_refused_before_any_value_or_point(monkeypatch):
    from approximant.engine.specs import StudySpec

    def never(*_a, **_k):
        raise AssertionError("expanded or validated an over-limit grid")

    monkeypatch.setattr(StudySpec, "grid_points", never)
    monkeypatch.setattr("approximant.engine.specs._deep_problems", never)
    grid = {k: [0.5 + i / 100 for i in range(10)]
            for k in ("lr", "beta1", "beta2", "eps", "weight_decay")}
    msg = errors_of(with_(optimizers=[{"name": "adamw", "grid": grid}], seeds=[0]))
    assert msg == ("optimizers × grid × seeds: 100000 runs exceeds the limit of 500 "
                   "(APPROXIMANT_MAX_RUNS)")
    # A list longer than the limit is refused on its length; nothing in it is looked at.
    msg = errors_of(with_(optimizers=[{"name": "adamw", "grid": {"lr": ["junk"] * 100_000}}]))
    assert "optimizers.0.grid.lr: 100000 values; a grid list holds at most 500" in msg
    assert "junk" not in msg
    assert "seeds: 100000 seeds; at most 500" in errors_of(with_(seeds=list(range(100_000))))
    many = [{"name": "adamw", "grid": {"lr": [i / 1e4 + 1e-4]}} for i in range(501)]
    assert "optimizers: 501 entries; at most 500" in errors_of(with_(optimizers=many))
    keys = {f"k{i}": [1] for i in range(100)}
    assert "at most 64 grid keys" in errors_of(with_(optimizers=[{"name": "sgd", "grid": keys}]))


def test_many_duplicate_configurations_are_found_in_linear_time(monkeypatch):
    monkeypatch.setenv("APPROXIMANT_MAX_RUNS", "100000")
    same = [{"name": "adamw", "grid": {"lr": [1e-3]}}] * 2_000
    msg = errors_of(with_(optimizers=same, seeds=[0]))
    assert msg == "optimizers: the same configuration appears twice: adamw[lr=0.001]"


def test_echoes_of_bad_values_are_short():
    huge = "x" * 10_000_000
    for data in (with_(name=huge), with_(workload={"name": huge}),
                 with_(optimizers=[{"name": huge}]), with_(steps=huge),
                 with_(optimizers=[{"name": "adamw", "grid": {"lr": [huge]}}]),
                 with_(optimizers=[{"name": "adamw", "grid": {huge: [1]}}])):
        msg = errors_of(data)
        assert len(msg) < 1_000, msg[:200]
    msg = errors_of(with_(steps=huge))
    assert "… (10000000 chars)" in msg


def test_the_number_of_problems_listed_is_bounded():
    bad = [{"name": f"nope{i}"} for i in range(300)]
    msg = errors_of(with_(optimizers=bad, seeds=[0]))
    lines = msg.splitlines()
    assert len(lines) == 26 and lines[-1] == "… and 275 more problem(s)"


@pytest.mark.parametrize("where", ["name", "workload", "optimizer", "grid key", "setting"])
def test_control_characters_in_names_are_refused(where, tmp_path, monkeypatch):
    evil = "a\x00b\x1b[31m"
    data = {
        "name": with_(name=evil),
        "workload": with_(workload={"name": evil}),
        "optimizer": with_(optimizers=[{"name": evil}]),
        "grid key": with_(optimizers=[{"name": "adamw", "grid": {evil: [1]}}]),
        "setting": with_(workload={"name": "tiny_gpt", "settings": {
            "corpus": "text", "corpus_path": evil}}),
    }[where]
    monkeypatch.setenv("APPROXIMANT_FILES_DIR", str(tmp_path))
    msg = errors_of(data)
    assert "control character U+0000 at position 1" in msg
    assert "\x00" not in msg and "\x1b" not in msg


def test_toml_input_is_bounded_and_never_raises_anything_else():
    from approximant.engine.specs import MAX_SPEC_CHARS

    with pytest.raises(SpecError, match="a spec may have at most"):
        parse_study_toml("#" * (MAX_SPEC_CHARS + 1))
    with pytest.raises(SpecError, match="nested too deeply"):
        parse_study_toml("a = " + "[" * 100_000)
    with pytest.raises(SpecError, match="steps: Input should be a valid integer"):
        parse_study_toml('name = "x"\nsteps = true\n[workload]\nname = "digits_mlp"\n'
                         '[[optimizers]]\nname = "sgd"\n')
