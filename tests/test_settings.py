"""The operator's settings: one validated object, every bad variable named at start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from approximant.engine.settings import ENV, Settings


def test_unset_or_empty_variables_give_the_defaults() -> None:
    assert Settings.from_env({}) == Settings()
    assert Settings.from_env({var: " " for var in ENV.values()}) == Settings()


def test_every_variable_reaches_its_field() -> None:
    env = {"APPROXIMANT_DATA_DIR": "/srv/lab", "APPROXIMANT_BROKER_URL": "redis://h:6379/0",
           "APPROXIMANT_FILES_DIR": "/srv/corpora", "APPROXIMANT_PRESETS_DIR": "/srv/presets",
           "APPROXIMANT_MAX_RUNS": "40", "APPROXIMANT_LEASE_S": "4",
           "APPROXIMANT_CHECKPOINT_S": "0", "APPROXIMANT_VISIBILITY_TIMEOUT_S": "600",
           "APPROXIMANT_TORCH_THREADS": "2", "APPROXIMANT_WORKER_CONCURRENCY": "3"}
    assert set(env) == set(ENV.values())
    s = Settings.from_env(env)
    assert (s.data_dir, s.broker_url, s.files_dir, s.presets_dir) == (
        Path("/srv/lab"), "redis://h:6379/0", Path("/srv/corpora"), Path("/srv/presets"))
    assert (s.max_runs, s.lease_s, s.checkpoint_s, s.visibility_timeout_s, s.torch_threads,
            s.worker_concurrency) == (40, 4, 0.0, 600, 2, 3)


def test_every_bad_variable_is_named_with_what_it_holds() -> None:
    with pytest.raises(ValueError) as err:
        Settings.from_env({"APPROXIMANT_LEASE_S": "1", "APPROXIMANT_MAX_RUNS": "many",
                           "APPROXIMANT_TORCH_THREADS": "0"})
    lines = str(err.value).splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("APPROXIMANT_MAX_RUNS: ") and "'many'" in lines[0]
    assert lines[1].startswith("APPROXIMANT_LEASE_S: ") and "2" in lines[1] and "'1'" in lines[1]
    assert lines[2].startswith("APPROXIMANT_TORCH_THREADS: ") and "'0'" in lines[2]


def test_a_bad_setting_stops_the_cli_before_anything_starts(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "approximant.app.cli", "up", "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "APPROXIMANT_LEASE_S": "one", "HOME": str(tmp_path)})
    assert out.returncode == 2
    assert "APPROXIMANT_LEASE_S: " in out.stderr and "'one'" in out.stderr
    assert not (tmp_path / "d").exists()


def test_the_readme_documents_every_variable() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    missing = [var for var in ENV.values() if f"`{var}`" not in readme]
    assert not missing, f"README's Configuration table lacks {missing}"
