"""The data folder: a study names files only inside APPROXIMANT_FILES_DIR, refused alike
whether or not an outside path exists, at validation and again where the worker reads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from approximant.engine.errors import SpecError
from approximant.engine.files import ENV, files_dir, resolve_data_file
from approximant.engine.specs import expand, parse_study
from approximant.engine.training import train
from approximant.engine.workloads.tiny_gpt import TinyGPTSettings, load_corpus

TINY = {"depth": 1, "width": 16, "heads": 2, "context": 8, "batch_size": 4,
        "corpus_bytes": 2_000, "eval_batches": 1, "diagnostics_batch": 2}
TEXT = "the quick brown fox jumps over the lazy dog. " * 20


@pytest.fixture
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(data folder, a sibling outside it with a secret in it); the variable names the first."""
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    (data / "corpus.txt").write_text(TEXT)
    (data / "sub").mkdir()
    (data / "sub" / "more.txt").write_text(TEXT)
    (outside / "secret.txt").write_text("s3cret " * 100)
    monkeypatch.setenv(ENV, str(data))
    return data, outside


def study(path: str, corpus: str = "text") -> dict:
    return {
        "name": "files", "steps": 2, "eval_every": 2,
        "workload": {"name": "tiny_gpt",
                     "settings": {**TINY, "corpus": corpus, "corpus_path": path}},
        "optimizers": [{"name": "adamw", "grid": {"lr": [0.01]}}],
    }


def refusal(path: str, corpus: str = "text") -> str:
    with pytest.raises(SpecError) as err:
        parse_study(study(path, corpus))
    return str(err.value)


def test_a_relative_path_inside_the_folder_is_accepted_and_kept_as_written(folders):
    data, _ = folders
    spec = parse_study(study("corpus.txt"))
    assert spec.workload.settings["corpus_path"] == "corpus.txt"  # resolved per worker
    assert resolve_data_file("corpus.txt", "f") == (data / "corpus.txt").resolve()
    assert resolve_data_file("sub/../sub/more.txt", "f") == (data / "sub" / "more.txt").resolve()
    # "~" is not the home folder here: it is a name inside the data folder like any other.
    assert resolve_data_file("~/.bashrc", "f") == data.resolve() / "~" / ".bashrc"
    # An absolute path is fine when it lies inside the folder.
    assert parse_study(study(str(data / "sub")))
    result = train(expand(spec)[0], lambda rows: None)
    assert result.status == "finished"
    assert result.info["corpus"] == "corpus.txt"  # relative: the worker's layout stays private


@pytest.mark.parametrize("path", [
    "../outside/secret.txt", "sub/../../outside/secret.txt", "/etc/passwd", "/etc/shadow",
    "/proc/self/environ", "..", "/", "sub/../../data/../outside",
])
def test_paths_outside_the_folder_are_refused_at_validation(folders, path):
    text = refusal(path)
    assert "workload.settings.corpus_path:" in text
    assert "is outside the data folder" in text and ENV in text
    assert "s3cret" not in text and "sha256" not in text


def test_an_absolute_path_outside_is_refused(folders):
    _, outside = folders
    assert "is outside the data folder" in refusal(str(outside / "secret.txt"))
    assert "is outside the data folder" in refusal(str(outside), corpus="bin")


def test_a_symlink_out_of_the_folder_is_refused(folders):
    data, outside = folders
    (data / "link.txt").symlink_to(outside / "secret.txt")
    (data / "linkdir").symlink_to(outside)
    assert "is outside the data folder" in refusal("link.txt")
    assert "is outside the data folder" in refusal("linkdir/secret.txt")
    assert "is outside the data folder" in refusal("linkdir", corpus="bin")


def test_a_link_inside_a_corpus_folder_is_not_followed_out(folders):
    data, outside = folders
    (data / "mixed").mkdir()
    (data / "mixed" / "a.txt").write_text(TEXT)
    (data / "mixed" / "b.txt").symlink_to(outside / "secret.txt")
    s = TinyGPTSettings(**{**TINY, "corpus": "text", "corpus_path": "mixed"})
    with pytest.raises(ValueError) as err:
        load_corpus(s)
    assert "'mixed/b.txt' leads outside the data folder" in str(err.value)
    assert "s3cret" not in str(err.value)


def test_the_refusal_is_the_same_whether_or_not_the_outside_file_exists(folders):
    _, outside = folders
    there = refusal(str(outside / "secret.txt"))
    missing = refusal(str(outside / "secreT.txt"))
    assert there.replace("secret", "X") == missing.replace("secreT", "X")
    a, b = refusal("../outside"), refusal("../nowhere")
    assert a.replace("outside'", "X'") == b.replace("nowhere'", "X'")
    # A directory, a file and a device outside read alike too.
    msgs = {refusal(p).replace(p, "P") for p in ("/etc", "/etc/hostname", "/dev/null")}
    assert len(msgs) == 1


def test_with_the_variable_unset_no_file_can_be_named(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV, raising=False)
    assert files_dir() is None
    (tmp_path / "c.txt").write_text(TEXT)
    for corpus in ("text", "bin"):
        text = refusal(str(tmp_path / "c.txt"), corpus)
        assert f"the operator must set {ENV} to a folder of corpora" in text
        assert "corpus = 'stdlib' needs no file" in text
    # An empty value is unset, and stdlib needs nothing.
    monkeypatch.setenv(ENV, "  ")
    assert files_dir() is None
    assert parse_study(study("", corpus="stdlib"))


def test_control_characters_and_huge_paths_are_refused_briefly(folders):
    text = refusal("corpus.txt\x00/../../etc/shadow")
    assert "control character U+0000" in text
    text = refusal("a" * 10_000_000)
    assert len(text) < 500


def test_the_worker_checks_again_against_its_own_folder(folders, monkeypatch, tmp_path):
    data, outside = folders
    spec = parse_study(study("corpus.txt"))
    run = expand(spec)[0]
    # The worker's folder differs (team mode): the same relative name is looked up there...
    other = tmp_path / "worker_data"
    other.mkdir()
    monkeypatch.setenv(ENV, str(other))
    with pytest.raises(ValueError, match=r"workload\.settings\.corpus_path: 'corpus\.txt' "
                                         r"is not in the data folder"):
        train(run, lambda rows: None)
    # ...and a worker with reading off refuses before touching the disk.
    monkeypatch.delenv(ENV)
    with pytest.raises(ValueError, match=f"the operator must set {ENV}"):
        train(run, lambda rows: None)
    # A run spec forged to point outside (never validated by a dashboard) is refused there.
    monkeypatch.setenv(ENV, str(data))
    forged = run.model_copy(update={"workload": run.workload.model_copy(update={
        "settings": {**run.workload.settings, "corpus_path": "../outside/secret.txt"}})})
    with pytest.raises(ValueError, match="is outside the data folder") as err:
        train(forged, lambda rows: None)
    assert "s3cret" not in str(err.value)


def test_files_dir_resolves_links_in_the_variable(tmp_path, monkeypatch):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    monkeypatch.setenv(ENV, str(tmp_path / "alias"))
    assert files_dir() == Path(os.path.realpath(real))
    (real / "c.txt").write_text(TEXT)
    assert resolve_data_file(str(tmp_path / "alias" / "c.txt"), "f") == files_dir() / "c.txt"


def test_a_corpus_folder_is_read_in_sorted_path_order_without_hidden_files(folders):
    from approximant.engine.workloads.corpus import user_text_bytes

    data, _ = folders
    c = data / "c"
    for rel, text in {"a.txt": "A", "a/z.txt": "Z", "b/.hidden": "H", ".git/x.txt": "G",
                      "b/c/d.txt": "D", "B.txt": "U", "a-b.txt": "M"}.items():
        (c / rel).parent.mkdir(parents=True, exist_ok=True)
        (c / rel).write_text(text)
    old_order = sorted(f for f in c.rglob("*")
                       if not any(p.startswith(".") for p in f.relative_to(c).parts)
                       and f.is_file())
    assert user_text_bytes(c, 100) == b"".join(f.read_bytes() for f in old_order) == b"UZMAD"


def test_a_corpus_folder_with_too_many_entries_is_refused_naming_the_setting(folders,
                                                                            monkeypatch):
    from approximant.engine.workloads import corpus

    data, _ = folders
    many = data / "many"
    many.mkdir()
    for i in range(30):
        (many / f"{i:03d}.txt").write_text(TEXT)
    monkeypatch.setattr(corpus, "MAX_FOLDER_ENTRIES", 20)
    s = TinyGPTSettings(**{**TINY, "corpus": "text", "corpus_path": "many"})
    with pytest.raises(ValueError) as err:
        load_corpus(s)
    assert "workload.settings.corpus_path: 'many' holds more than 20 files and folders" in str(
        err.value)
    # A folder within the limit whose bytes come early stops listing where it has them.
    monkeypatch.setattr(corpus, "MAX_FOLDER_ENTRIES", 40)
    assert len(corpus.user_text_bytes(many, 100)) == 100
