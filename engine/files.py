"""The operator's data folder: the only place a study may name a file from.

A workload setting that names a file (the tiny GPT ``corpus_path``) is user input from a
browser, and the process that reads it is a worker holding the broker's and the database's
files. So a path is taken relative to the folder in ``APPROXIMANT_FILES_DIR`` and refused
unless it resolves inside it (symlinks and ``..`` followed first). With the variable unset, no
file may be named at all.

Refusals are worded the same whether or not the path exists and whatever it is: the message
carries no file's existence, type, size, contents or hash from outside the folder, so the form
cannot be used to probe the worker's disk.
"""

from __future__ import annotations

import os
from pathlib import Path

from approximant.engine.errors import control_chars, named, short
from approximant.engine.settings import ENV as SETTINGS_ENV
from approximant.engine.settings import current

ENV = SETTINGS_ENV["files_dir"]
MAX_PATH_CHARS = 4096


def files_dir() -> Path | None:
    """The data folder, fully resolved, or None when ``APPROXIMANT_FILES_DIR`` is unset or
    empty. Read on every call: a worker and a dashboard may each be configured differently."""
    folder = current().files_dir
    if folder is None:
        return None
    return Path(os.path.realpath(os.path.expanduser(folder)))


def unset_message(field: str = "") -> str:
    return named(field, f"reading files is off on this server: the operator must set {ENV} to "
                 "a folder of corpora (paths are then relative to it); corpus = 'stdlib' needs "
                 "no file")


def resolve_data_file(path: str, field: str = "") -> Path:
    """``path`` resolved inside the data folder, or ``ValueError`` naming ``field`` (leave it
    empty in a pydantic field validator, whose error location names the field).

    Relative paths are taken from the folder; an absolute path is accepted only if it
    resolves inside it. Existence is not checked here (a worker may hold the data that the
    dashboard's host does not): the reader reports a missing file, and only inside the folder.
    """
    if not isinstance(path, str):
        raise ValueError(named(field, f"must be a string (got {type(path).__name__})"))
    bad = control_chars(path)
    if bad:
        raise ValueError(named(field, f"must not contain a {bad}"))
    if len(path) > MAX_PATH_CHARS:
        raise ValueError(named(field, f"at most {MAX_PATH_CHARS} characters (got {len(path)})"))
    if not path.strip():
        raise ValueError(named(field, f"empty; give a path inside the data folder ({ENV})"))
    root = files_dir()
    if root is None:
        raise ValueError(unset_message(field))
    # expanduser is deliberately not applied: "~" would name a folder outside the data folder.
    joined = os.path.join(root, path)  # an absolute ``path`` replaces root here
    real = Path(os.path.realpath(joined))
    if not _within(real, root):
        # One wording for every refusal: it must not tell an existing file from a missing one.
        raise ValueError(named(field, f"{short(path)} is outside the data folder; give a path "
                               f"relative to the folder named by {ENV}"))
    return real


def _within(real: Path, root: Path | None) -> bool:
    """Whether the resolved path ``real`` is ``root`` or lies under it (False without a root)."""
    return root is not None and (real == root or root in real.parents)


def inside_data_folder(real: Path) -> bool:
    """Whether an already-resolved path lies in the data folder (False when it is unset)."""
    return _within(real, files_dir())


def display_path(real: Path) -> str:
    """A resolved file's path relative to the data folder, for messages and run records
    (the folder's own location on the worker is not the user's business)."""
    root = files_dir()
    if _within(real, root):
        return real.relative_to(root).as_posix() or "."
    return "<outside the data folder>"
