"""Presets: each validates, is the size its issue asks for, shows in the New-study page, and
runs shortened through the real stack (`approximant run --preset … --max-steps`), after which
`approximant report` writes its reproduction report."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest
from streamlit.testing.v1 import AppTest

from approximant.app import presets
from approximant.app.cli import main
from approximant.engine.specs import parse_study
from approximant.storage.db import DB_FILENAME

MAIN = str(Path(__file__).resolve().parent.parent / "app" / "main.py")

NAMES = ["digits-quick", "spectral-families", "step-size-optimality"]
SPECTRAL = {"sgd", "truncated_sgd", "muon", "kaon[form=chaos]", "kaon[form=iid]",
            "freon[c=0.25]", "freon[c=0.5]", "freon[c=0.6667]", "freon[c=0.75]", "adamw"}


@pytest.fixture(autouse=True)
def no_env_broker(monkeypatch):
    monkeypatch.delenv("APPROXIMANT_BROKER_URL", raising=False)


def _families(spec) -> dict[str, list]:
    """Each optimizer entry named by the choices that tell families apart (``freon[c=0.25]``,
    ``kaon[form=iid]``), with its lr list."""
    out = {}
    for e in spec.optimizers:
        fixed = sorted((k, v[0]) for k, v in e.grid.items() if k in ("c", "form"))
        inner = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in fixed)
        out[f"{e.name}[{inner}]" if inner else e.name] = e.grid["lr"]
    return out


def test_every_preset_validates_and_says_what_it_is():
    found = presets.presets()
    assert list(found) == NAMES
    for name, preset in found.items():
        spec = parse_study(preset.data())
        assert spec.name.startswith("preset: ")
        assert len(preset.description) > 200, name  # what it is, what it costs, what shrank
        said = " ".join(preset.description.split())
        assert re.search(r"measured .* on 2 (shared )?CPU cores", said), name  # its cost


def test_spectral_families_is_the_issue_s_study():
    spec = parse_study(presets.get("spectral-families").data())
    fams = _families(spec)
    assert set(fams) == SPECTRAL
    assert all(len(lrs) >= 6 for lrs in fams.values())
    assert len(spec.seeds) >= 3 and spec.workload.name == "tiny_gpt"
    assert spec.workload.settings["corpus"] == "stdlib"
    assert spec.n_runs() == 180


def test_step_size_optimality_has_diagnostics_and_the_same_optimizers():
    spec = parse_study(presets.get("step-size-optimality").data())
    assert spec.workload.name == "random_features" and spec.diagnostics_every >= 1
    fams = _families(spec)
    assert set(fams) == SPECTRAL  # plain GD is a second sgd entry (momentum 0)
    momenta = [e.grid["momentum"] for e in spec.optimizers if e.name == "sgd"]
    assert sorted(momenta) == [[0.0], [0.9]]


def test_shorten_cuts_steps_cadences_seeds_and_grids():
    data = presets.get("step-size-optimality").data()
    short = parse_study(presets.shorten(data, max_steps=3, max_values=1))
    assert (short.steps, short.eval_every, short.diagnostics_every) == (3, 3, 1)
    assert short.seeds == [0] and short.n_runs() == 11
    assert short.name.endswith("(shortened: ≤ 3 steps, ≤ 1 seeds and values per grid list)")
    assert short.study_id != parse_study(data).study_id
    assert presets.shorten(data) == data  # nothing asked, nothing cut
    with pytest.raises(ValueError, match="--max-steps: must be ≥ 1"):
        presets.shorten(data, max_steps=0)


def test_cli_lists_presets_and_refuses_unknown_ones(capsys):
    assert main(["run", "--list-presets"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^spectral-families \(180 runs\): Spectral families", out, re.M)
    assert main(["run", "--preset", "nope"]) == 2
    assert "no preset 'nope'; presets: digits-quick, spectral-families" in \
        capsys.readouterr().err
    assert main(["run"]) == 2
    assert "give a spec file or --preset NAME" in capsys.readouterr().err


def test_new_study_page_shows_copies_and_runs_a_preset(services):
    at = AppTest.from_file(MAIN, default_timeout=60).run()
    at.switch_page("screens/new_study.py").run()
    assert [t.label for t in at.tabs] == ["Form", "TOML spec", "Presets"]
    at.selectbox(key="preset").set_value("digits-quick").run()
    assert not at.exception
    assert any("45 runs" in i.value for i in at.info)
    assert any("Digits, quickly" in m.value and "45 runs: measured under a minute" in m.value
               for m in at.markdown)
    assert any("[[optimizers]]" in c.value for c in at.code)
    at.button(key="edit_preset").click().run()
    assert at.text_area(key="toml").value == presets.get("digits-quick").text
    assert "preset is in the TOML spec tab" in at.success[0].value
    at.selectbox(key="preset").set_value("digits-quick").run()
    at.button(key="run_preset").click().run()
    assert not at.exception
    services.recorder.drain()
    studies = services.queries.studies()
    assert list(studies["name"]) == ["preset: digits quick"]
    assert studies.loc[0, "n_runs"] == 45


@pytest.mark.integration
def test_each_preset_runs_shortened_through_the_stack_and_reports(tmp_path, capsys,
                                                                  monkeypatch):
    data = tmp_path / "data"
    # digits-quick whole (45 runs of 3 steps); the two big ones at one seed and one lr each.
    cases = {"digits-quick": [], "step-size-optimality": ["--max-values", "1"],
             "spectral-families": ["--max-values", "1"]}
    names = []
    for name, extra in cases.items():
        # tasks.celery_app.configure exports the broker URL of the run before it (stopped
        # now); a command of its own process would never see it.
        monkeypatch.delenv("APPROXIMANT_BROKER_URL", raising=False)
        code = main(["run", "--preset", name, "--max-steps", "3", *extra,
                     "--data-dir", str(data)])
        out, err = capsys.readouterr()
        runs = parse_study(presets.shorten(presets.get(name).data(), 3,
                                           1 if extra else None))
        assert code == 0, out + err
        assert f"run: done — {runs.n_runs()} finished" in out, out[-2000:]
        names.append(runs.name)
    con = duckdb.connect(str(data / DB_FILENAME), read_only=True)
    steps = con.execute("SELECT DISTINCT steps FROM runs").fetchall()
    diag = con.execute("SELECT count(*) FROM metrics WHERE name = 'diag_eta_opt'").fetchone()[0]
    con.close()
    assert steps == [(3,)]
    assert diag == 11 * 3  # every step of every step-size run was diagnosed

    out_dir = tmp_path / "report"
    assert main(["report", *names, "--data-dir", str(data), "--out", str(out_dir),
                 "--name", "repro", "--command", "approximant run --preset …"]) == 0
    assert "wrote" in capsys.readouterr().out
    text = (out_dir / "repro.md").read_text()
    assert "## Verdicts at a glance" in text and "approximant run --preset …" in text
    for name in names:
        assert f"| {name} |" in text  # every study in the studies table
    verdicts = re.findall(r"^\*\*preset: [^*]*: ([a-z ]+)\.\*\*", text, re.M)
    assert verdicts and set(verdicts) <= {"supported", "contradicted",
                                          "not resolved at this scale"}
    assert all(f.read_text().startswith("<svg") for f in (out_dir / "img").iterdir())
    assert main(["report", "nope", "--data-dir", str(data)]) == 2
    assert "study 'nope' matches no study" in capsys.readouterr().err
