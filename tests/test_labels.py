"""Names as people write them: configs, metrics and spec fields."""

from __future__ import annotations

import pytest

from approximant.app.labels import (
    MISSING,
    config_title,
    field_title,
    fmt,
    group_titles,
    human_problems,
    metric_title,
)
from approximant.engine.errors import SpecError
from approximant.engine.specs import parse_study


@pytest.mark.parametrize("label, title", [
    ("freon[c=0.6667,lr=0.02]", "Freon (c = ⅔, lr = 0.02)"),
    ("freon[c=0.25,lr=0.02]", "Freon (c = ¼, lr = 0.02)"),
    ("freon[c=0.5]", "Freon (c = ½)"),
    # Not ⅔ to the digits printed, and not a fraction at all: printed as given.
    ("freon[c=0.667,lr=0.02]", "Freon (c = 0.667, lr = 0.02)"),
    ("freon[c=0.3]", "Freon (c = 0.3)"),
    # Only exponents become glyphs: "lr = ½" is no one's notation.
    ("sgd[lr=0.5]", "SGD-momentum (lr = 0.5)"),
    ("adamw[beta1=0.9,lr=0.001,weight_decay=0]", "AdamW (β₁ = 0.9, lr = 0.001, wd = 0)"),
    ("adamw", "AdamW"),
    ("muon[lr=0.02,ns_steps=3]", "Muon (lr = 0.02, NS steps = 3)"),
    ("kaon[distribution=iid,lr=0.02]", "Kaon (distribution = iid, lr = 0.02)"),
    # Labels of another shape are left as they are.
    ("my script run", "my script run"),
    ("unknown_opt[lr=1]", "unknown_opt (lr = 1)"),
])
def test_config_titles(label, title):
    assert config_title(label) == title


def test_two_configs_never_share_a_title():
    titles = group_titles(["freon[c=0.6667]", "freon[c=0.66667]", "sgd[lr=0.1]"])
    # Both c values are ⅔ to their printed digits: both keep their labels instead.
    assert titles == {"freon[c=0.6667]": "freon[c=0.6667]",
                      "freon[c=0.66667]": "freon[c=0.66667]",
                      "sgd[lr=0.1]": "SGD-momentum (lr = 0.1)"}


def test_metric_titles_are_words_with_units():
    assert metric_title("val_loss") == "Validation loss"
    assert metric_title("step_time") == "Step time (s)"
    assert metric_title("diag_gamma") == "Alignment γ"
    assert metric_title("diag_gamma/fc1.weight") == "Alignment γ · fc1.weight"
    assert metric_title("custom_metric") == "custom_metric"


SPEC = {"name": "x", "workload": {"name": "digits_mlp", "settings": {"hidden": -1}},
        "optimizers": [{"name": "sgd", "grid": {"lr": [0.1]}},
                       {"name": "adamw", "grid": {"lr": [-1], "beta1": [2]}}],
        "seeds": [0], "steps": 5}


def test_spec_errors_name_fields_as_the_form_does():
    with pytest.raises(SpecError) as err:
        parse_study(SPEC)
    lines = human_problems(err.value, SPEC).splitlines()
    assert "AdamW lr: Input should be greater than 0 (got -1)" in lines
    assert "AdamW β₁: Input should be less than 1 (got 2)" in lines
    assert any(line.startswith("MLP on digits hidden: ") for line in lines)
    # For a spec the user wrote, the path stays beside the name.
    assert "AdamW lr (optimizers.1.grid.lr): Input should be greater than 0 (got -1)" in \
        human_problems(err.value, SPEC, show_path=True).splitlines()


def test_field_titles_survive_a_malformed_spec():
    assert field_title("optimizers.7.grid.lr", SPEC) == "Optimizer 8 lr"
    assert field_title("optimizers.0.grid.lr", {"optimizers": "nonsense"}) == "Optimizer 1 lr"
    assert field_title("seeds") == "Seeds"
    assert field_title("something.else.entirely") is None
    assert human_problems("not a path problem") == "not a path problem"


def test_numbers_read_with_a_dash_for_missing_and_signed_infinities():
    assert [fmt(0.123456), fmt(None), fmt(float("nan")), fmt(float("inf")),
            fmt(-float("inf")), fmt(2 / 3, 2)] == ["0.1235", MISSING, MISSING, "∞", "−∞", "0.67"]
