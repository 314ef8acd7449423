"""Tiny GPT: corpora (stdlib, user text, uint16 .bin), their errors, the model and training."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from approximant.engine.errors import SpecError
from approximant.engine.specs import expand, parse_study
from approximant.engine.training import train
from approximant.engine.workloads import WORKLOADS
from approximant.engine.workloads.corpus import stdlib_bytes

TINY = {"depth": 1, "width": 32, "heads": 2, "context": 16, "batch_size": 8,
        "corpus_bytes": 20_000, "eval_batches": 2, "diagnostics_batch": 4}
CPU = torch.device("cpu")


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path as the operator's data folder: user corpora are read only from there."""
    monkeypatch.setenv("APPROXIMANT_FILES_DIR", str(tmp_path))
    return tmp_path


def build(seed: int = 0, **settings):
    wl = WORKLOADS["tiny_gpt"]
    return wl.build(wl.settings(**{**TINY, **settings}), seed, CPU)


def study(settings: dict, steps: int = 25) -> dict:
    return {
        "name": "gpt", "workload": {"name": "tiny_gpt", "settings": settings},
        "optimizers": [{"name": "adamw", "grid": {"lr": [0.01]}}],
        "steps": steps, "eval_every": steps,
    }


def test_loss_goes_down_with_adamw_and_bits_per_byte_is_the_loss_in_bits():
    rows: list[dict] = []
    result = train(expand(parse_study(study(TINY)))[0], rows.extend)
    assert result.status == "finished"
    val = {r["step"]: r["value"] for r in rows if r["name"] == "val_loss"}
    bpb = {r["step"]: r["value"] for r in rows if r["name"] == "val_bpb"}
    assert val[25] < val[0] - 1.0  # from ≈ ln 256 = 5.5 nats
    assert bpb[25] == pytest.approx(val[25] / np.log(2))
    assert result.info["corpus_fingerprint"].startswith("sha256:")
    assert [r["tokens"] for r in rows if r["name"] == "train_loss"][-1] == 25 * 8 * 16


def test_the_stdlib_corpus_is_deterministic_and_recorded():
    a, b = stdlib_bytes(5_000), stdlib_bytes(5_000)
    assert a == b and len(a) == 5_000
    assert a.decode("utf-8", errors="strict")  # whole files at the start, valid text
    task = build()
    want = "sha256:" + hashlib.sha256(stdlib_bytes(20_000)).hexdigest()
    assert task.info["corpus_fingerprint"] == want
    assert task.info["corpus_train_tokens"] + task.info["corpus_val_tokens"] == 20_000


def test_matrix_parameters_are_the_block_weights_only():
    task = build(depth=2)
    ids = {id(p) for p in task.matrix_params}
    names = sorted(n for n, p in task.model.named_parameters() if id(p) in ids)
    assert len(names) == 12
    assert all(n.startswith("blocks.") and n.endswith(".weight") and "ln" not in n
               for n in names)
    assert all(p.dim() == 2 for p in task.matrix_params)


def test_attention_is_causal():
    task = build()
    x = torch.randint(0, 256, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 256
    with torch.no_grad():
        a, b = task.model(x), task.model(y)
    assert torch.equal(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_a_user_text_folder_is_read_in_sorted_order(data_dir: Path):
    tmp_path = data_dir
    (tmp_path / "b.txt").write_text("second file. " * 40)
    (tmp_path / "a.txt").write_text("first file! " * 40)
    (tmp_path / ".hidden").write_text("never read")
    task = build(corpus="text", corpus_path=str(tmp_path))
    want = (tmp_path / "a.txt").read_bytes() + (tmp_path / "b.txt").read_bytes()
    assert task.info["corpus_fingerprint"] == "sha256:" + hashlib.sha256(want).hexdigest()
    assert task.train_loss(1).item() > 0


def test_a_bin_corpus_trains(data_dir: Path):
    tmp_path = data_dir
    rng = np.random.default_rng(0)
    np.arange(4_000, dtype="<u2").__mod__(7).tofile(tmp_path / "train.bin")
    rng.integers(0, 7, 500).astype("<u2").tofile(tmp_path / "val.bin")
    settings = {**TINY, "corpus": "bin", "corpus_path": str(tmp_path), "vocab_size": 7}
    rows: list[dict] = []
    assert train(expand(parse_study(study(settings, 20)))[0], rows.extend).status == "finished"
    names = {r["name"] for r in rows}
    assert "val_loss" in names and "val_bpb" not in names  # bytes per token unknown
    loss = [r["value"] for r in rows if r["name"] == "train_loss"]
    assert loss[-1] < loss[0] - 0.5  # the training stream is periodic, hence learnable


def errors_of(**settings) -> str:
    with pytest.raises(ValueError) as err:
        build(**settings)
    return str(err.value)


def test_corpus_errors_name_the_setting(data_dir: Path):
    tmp_path = data_dir
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert "corpus_path" in errors_of(corpus="text", corpus_path=str(empty))
    assert "empty" in errors_of(corpus="text", corpus_path=str(empty))
    (tmp_path / "empty_dir").mkdir()
    assert "no text" in errors_of(corpus="text", corpus_path=str(tmp_path / "empty_dir"))
    assert "'nope' is not in the data folder" in errors_of(corpus="text", corpus_path="nope")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 100)
    msg = errors_of(corpus="text", corpus_path=str(binary))
    assert "workload.settings.corpus_path" in msg and "not UTF-8" in msg
    short = tmp_path / "short.txt"
    short.write_text("hello world, too short")
    assert "too few" in errors_of(corpus="text", corpus_path=str(short))


def test_bin_corpus_errors_name_the_setting(data_dir: Path):
    tmp_path = data_dir
    np.zeros(100, dtype="<u2").tofile(tmp_path / "train.bin")
    msg = errors_of(corpus="bin", corpus_path=str(tmp_path))
    assert "workload.settings.corpus_path" in msg and "val.bin" in msg and "missing" in msg
    (tmp_path / "val.bin").write_bytes(b"\x00" * 41)
    assert "not a whole number of uint16" in errors_of(corpus="bin", corpus_path=str(tmp_path))
    np.full(100, 300, dtype="<u2").tofile(tmp_path / "val.bin")
    msg = errors_of(corpus="bin", corpus_path=str(tmp_path), vocab_size=256)
    assert "workload.settings.vocab_size" in msg and "300" in msg
    assert "not a folder" in errors_of(corpus="bin", corpus_path=str(tmp_path / "train.bin"))


def test_settings_errors_reach_the_spec_with_the_field_name(data_dir: Path):
    with pytest.raises(SpecError, match=r"workload\.settings\.corpus_path: required"):
        parse_study(study({"corpus": "text"}))
    with pytest.raises(SpecError, match=r"workload\.settings\.heads: must divide width \(32\)"):
        parse_study(study({"width": 32, "heads": 3}))
