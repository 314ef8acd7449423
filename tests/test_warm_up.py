"""What the dashboard and the worker import before anyone waits: every page's modules, and
what a first run would otherwise import inside its pool process."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imported_after(code: str, modules: list[str]) -> list[bool]:
    """Which of ``modules`` a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport sys\nprint([m in sys.modules for m in {modules!r}])"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, check=True)
    return ast.literal_eval(out.stdout.strip().splitlines()[-1])


def test_dashboard_warm_up_imports_every_page():
    views = sorted(p.stem for p in (ROOT / "app" / "views").glob("*.py") if p.stem != "__init__")
    code = "from approximant.app.server import warm_up\nwarm_up()"
    assert all(_imported_after(code, [f"approximant.app.views.{v}" for v in views] + ["altair"]))


def test_worker_warm_up_imports_what_a_first_run_would():
    code = "from approximant.tasks.celery_app import _warm_up\n_warm_up()"
    assert _imported_after(code, ["torch._dynamo", "sklearn.datasets"]) == [True, True]
