"""Where things live: the data directory, the broker URL, the stack file of a running ``up``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from approximant.engine.settings import ENV as SETTINGS_ENV
from approximant.engine.settings import current as current_settings
from approximant.tasks.broker import write_private

ENV_DATA_DIR = SETTINGS_ENV["data_dir"]
STACK_FILE = "stack.json"


def data_dir(flag: str | None = None) -> Path:
    """``--data-dir`` wins over ``APPROXIMANT_DATA_DIR``, which wins over ``./.approximant``."""
    return Path(flag or current_settings().data_dir).resolve()


@dataclass
class Stack:
    """What a running ``approximant up`` publishes about itself in the data directory."""

    pid: int
    broker_url: str
    dashboard_url: str

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True


def write_stack(directory: Path, stack: Stack) -> None:
    """Publish ``stack``, readable by this user only: it holds the broker's URL (a password)."""
    tmp = directory / (STACK_FILE + ".tmp")
    write_private(tmp, json.dumps(stack.__dict__))
    tmp.replace(directory / STACK_FILE)


def read_stack(directory: Path) -> Stack | None:
    """The running stack for ``directory``, or None when there is none (or it died)."""
    path = directory / STACK_FILE
    try:
        stack = Stack(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return stack if stack.alive() else None


def remove_stack(directory: Path) -> None:
    (directory / STACK_FILE).unlink(missing_ok=True)
