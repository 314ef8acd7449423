"""The reproduction report's verdicts on studies whose outcome is known by construction, and
the files it writes (Markdown that names every claim, SVGs that are SVG)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import numpy as np
import pytest

from approximant.app import reproduction as rep
from approximant.engine.specs import expand, parse_study
from approximant.storage.schema import INSERT_RUN, RUN_COLUMNS

SPEC = {
    "name": "report fixture",
    "workload": {"name": "random_features"},
    "optimizers": [
        {"name": "sgd", "grid": {"lr": [0.1, 0.2], "momentum": 0.0}},
        {"name": "muon", "grid": {"lr": [0.01, 0.02]}},
        {"name": "freon", "grid": {"c": 0.5, "lr": [0.01, 0.02]}},
        {"name": "freon", "grid": {"c": 0.6667, "lr": [0.01, 0.02]}},
        {"name": "kaon", "grid": {"form": "chaos", "lr": [0.01, 0.02]}},
    ],
    "seeds": [0, 1, 2],
    "steps": 20,
    "eval_every": 20,
    "diagnostics_every": 1,
}
# Final validation loss at the better lr of each optimizer (seed s adds 0.01·s); the other lr
# is 0.5 worse. Freon ⅔ is far better than Muon, Kaon far worse, Freon ½ a tie with Muon.
FINAL = {"sgd": 2.6, "muon": 2.0, "freon[c=0.5]": 2.0, "freon[c=0.6667]": 1.8,
         "kaon": 3.0}


def _family(label: str) -> str:
    name, _, inner = label.partition("[")
    rest = [kv for kv in inner.rstrip("]").split(",")
            if kv and not kv.startswith(("lr=", "form=", "momentum="))]
    return f"{name}[{','.join(rest)}]" if rest else name


def _insert(db, spec_data: dict, eta_zigzag: str = "sgd") -> str:
    spec = parse_study(spec_data)
    now = datetime.now(UTC)
    rows = []
    with db.write() as cur:
        cur.execute("INSERT INTO studies VALUES (?, ?, ?, ?, ?, ?)",
                    [spec.study_id, spec.name, spec.workload.name,
                     json.dumps(spec.model_dump(mode="json")), spec.n_runs(), now])
        for i, run in enumerate(expand(spec)):
            fam = _family(run.label)
            lr = run.hparams["lr"]
            best_lr = lr in (0.1, 0.01)
            final = FINAL[fam] + 0.01 * run.seed + (0.0 if best_lr else 0.5)
            status = "finished"
            if fam == "freon[c=0.5]" and not best_lr and run.seed == 0:
                status, final = "diverged", math.inf
            values = dict(zip(RUN_COLUMNS, [
                run.run_id, spec.study_id, i, run.label, run.optimizer, run.seed,
                json.dumps(run.hparams), run.model_dump_json(), 20, status, 1, 20, None, "w",
                None, now, now, now, now], strict=True))
            cur.execute(INSERT_RUN, list(values.values()))
            rows += [(run.run_id, 0, "val_loss", 5.0), (run.run_id, 20, "val_loss", final)]
            rng = np.random.default_rng(i)
            for step in range(1, 21):
                # η*: a zig-zag for one optimizer, nearly constant for the rest.
                zig = 1.0 + (0.5 if step % 2 else -0.5) if fam == eta_zigzag else \
                    1.0 + 0.01 * rng.standard_normal()
                potential = 1.0 / FINAL[fam]  # more one-step potential, lower final loss
                rows += [(run.run_id, step, "diag_eta_opt", zig),
                         (run.run_id, step, "diag_best_decrease", potential),
                         (run.run_id, step, "diag_full_loss", 1.0),
                         (run.run_id, step, "diag_gamma", 0.9)]
        cur.executemany("INSERT INTO metrics VALUES (?, 1, ?, ?, ?, 0.0, 0)", rows)
    return spec.study_id


# The same runs as a language-model study: claim 1 is about GPTs, claim 5 about random features.
GPT = {**SPEC, "name": "report fixture (GPT)", "workload": {"name": "tiny_gpt"}}


def _by_key(sources):
    return {c.key: [f for s in sources if (f := c.finding(s)) is not None]
            for c in rep.CLAIMS}


def test_verdicts_follow_the_data(db):
    src = rep.load(db, _insert(db, SPEC))
    gpt = rep.load(db, _insert(db, GPT))
    fams = src.families
    assert fams["freon[c=0.5]"].lr == 0.01  # the lr where a seed diverged is never "best"
    assert fams["muon"].mean == pytest.approx(2.01)
    assert fams["sgd[momentum=0]"].mean == pytest.approx(2.61)
    found = _by_key([src, gpt])
    # Each claim where it belongs: the Freon-c claim on the GPT only, step size on random
    # features only, the rest on both.
    assert [f.study for f in found["freon-c"]] == ["report fixture (GPT)"]
    assert [f.study for f in found["step-size"]] == ["report fixture"]
    assert len(found["inverted"]) == len(found["potential"]) == 2
    verdict = {k: v[0].verdict for k, v in found.items()}
    assert verdict["freon-c"] == rep.SUPPORTED  # ⅔ beats ½ and Muon, far outside the noise
    # Freon ⅔ is better: non-inferior. Kaon is a whole nat worse: contradicted.
    assert verdict["inverted"] == rep.SUPPORTED
    assert verdict["random"] == rep.CONTRADICTED
    assert verdict["budget"] == rep.SUPPORTED
    assert verdict["step-size"] == rep.SUPPORTED  # GD zig-zags, Muon does not
    assert verdict["potential"] == rep.SUPPORTED  # ρ = −1 across five optimizers
    kaon = found["random"][0].table.iloc[0]
    assert kaon["verdict"] == rep.CONTRADICTED and kaon["Δ vs Muon"] == "1"
    assert "Welch two-sided t-test" in found["inverted"][0].test
    assert "3 seeds a side (seeds 0, 1, 2)" in found["inverted"][0].test


def test_a_zigzagging_muon_contradicts_step_size_optimality(db):
    sid = _insert(db, SPEC, eta_zigzag="muon")
    assert rep.CLAIMS[4].key == "step-size"
    assert rep.CLAIMS[4].finding(rep.load(db, sid)).verdict == rep.CONTRADICTED


def test_one_seed_decides_nothing(db):
    one = [rep.load(db, _insert(db, {**spec, "seeds": [0], "name": f"one seed {i}"}))
           for i, spec in enumerate((SPEC, GPT))]
    found = _by_key(one)
    for key in ("freon-c", "inverted", "random", "budget", "step-size"):
        assert [f.verdict for f in found[key]] in ([rep.UNRESOLVED], [rep.UNRESOLVED] * 2), key


def test_a_study_without_muon_or_diagnostics_tests_nothing_it_cannot(db):
    spec = {**SPEC, "name": "no muon", "diagnostics_every": 0,
            "optimizers": [SPEC["optimizers"][0], SPEC["optimizers"][4]]}
    found = _by_key([rep.load(db, _insert(db, spec))])
    assert found["freon-c"] == [] and found["inverted"] == [] and found["budget"] == []
    text, images = rep.render([rep.load(db, parse_study(spec).study_id)])
    assert text.count("*Not tested by these studies*") >= 3


def test_written_report_names_every_claim_and_its_figures(db, tmp_path):
    sid = _insert(db, GPT)
    path, written = rep.write(db, [sid, _insert(db, SPEC)], tmp_path, "reproduction",
                              command="approximant report x")
    text = path.read_text()
    for claim in rep.CLAIMS:
        assert claim.sentence in text
    assert "## Verdicts at a glance" in text and "approximant report x" in text
    figures = sorted((tmp_path / "img").iterdir())
    assert {f.name.split("-report")[0] for f in figures} == {
        "repro-freon-c", "repro-inverted", "repro-random", "repro-budget", "repro-step-size",
        "repro-potential"}
    assert len(figures) == 10 and sorted(written) == figures  # two studies, what each can test
    for f in figures:
        assert f.read_text().startswith("<svg") and f"](img/{f.name})" in text
    assert "| 5. In a random-feature" in text and "| supported |" in text
    gpt_only = {f"img/{f.name}" for f in figures if "gpt" in f.name}
    assert zipped_names(rep.zipped(db, sid)) == {"report.md"} | gpt_only


def zipped_names(blob: bytes) -> set[str]:
    import io
    import zipfile

    return set(zipfile.ZipFile(io.BytesIO(blob)).namelist())
