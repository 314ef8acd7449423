"""What `pip install .` ships: every folder of Python files of the four layers, under the one
package name (the tests themselves run on an editable install, which would not notice)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LAYERS = ("app", "engine", "storage", "tasks")


def test_every_folder_of_python_files_is_a_listed_package() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    folders = {f"approximant.{p.parent.relative_to(ROOT).as_posix().replace('/', '.')}"
               for layer in LAYERS for p in (ROOT / layer).rglob("*.py")
               if "__pycache__" not in p.parts}
    assert folders | {"approximant"} == listed


def test_the_wheel_holds_the_page_scripts_and_the_public_entry(tmp_path) -> None:
    # Built from a copy of what the wheel is made of: setuptools builds in the source tree,
    # and the checkout should not collect a build/ folder.
    src = tmp_path / "src"
    for item in ("pyproject.toml", "README.md", "approximant", *LAYERS, "examples/presets"):
        if (ROOT / item).is_dir():
            shutil.copytree(ROOT / item, src / item,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy(ROOT / item, src / item)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps",
                    "--no-build-isolation", "-q", "-w", str(tmp_path / "dist")], check=True,
                   timeout=300)
    (wheel,) = (tmp_path / "dist").glob("approximant-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for layer in LAYERS:
        for p in (ROOT / layer).rglob("*.py"):
            if "__pycache__" not in p.parts:
                assert f"approximant/{p.relative_to(ROOT).as_posix()}" in names
    assert "approximant/__init__.py" in names and "approximant/client.py" in names
    assert any(n.endswith("share/approximant/presets/digits-quick.toml") for n in names)
