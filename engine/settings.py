"""Every operator setting, in one validated object read from the environment.

The processes of a stack (``approximant up``, its worker, its dashboard, a headless ``run``, a
script logging with ``approximant.client``) are configured by ``APPROXIMANT_*`` variables, which
children inherit with the rest of their parent's environment. This module is the one place that
names them, gives their defaults and ranges, and reads them: ``Settings.from_env()`` refuses a
bad value naming the variable, and the CLI calls it before it starts anything, so a typo shows
at start and not at a run's first checkpoint. ``current()`` reads the environment at the time
of the call (cheap), so a test or a CLI flag that sets a variable is seen at once.

The sign-in settings (passwords, the editors list) stay with access control (app/access.py),
which keeps secrets out of any object that might be printed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# field -> variable
ENV: dict[str, str] = {
    "data_dir": "APPROXIMANT_DATA_DIR",
    "broker_url": "APPROXIMANT_BROKER_URL",
    "files_dir": "APPROXIMANT_FILES_DIR",
    "presets_dir": "APPROXIMANT_PRESETS_DIR",
    "max_runs": "APPROXIMANT_MAX_RUNS",
    "lease_s": "APPROXIMANT_LEASE_S",
    "checkpoint_s": "APPROXIMANT_CHECKPOINT_S",
    "visibility_timeout_s": "APPROXIMANT_VISIBILITY_TIMEOUT_S",
    "torch_threads": "APPROXIMANT_TORCH_THREADS",
    "worker_concurrency": "APPROXIMANT_WORKER_CONCURRENCY",
}


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = Field(Path(".approximant"),
                           description="where the database, the broker's files and logs live")
    broker_url: str | None = Field(None, description="a team broker (redis://…); none: each "
                                   "`up` or `run` starts an embedded one")
    files_dir: Path | None = Field(None, description="the folder workloads may read corpora "
                                   "from; none: reading files is off")
    presets_dir: Path | None = Field(None, description="the presets folder; none: the "
                                     "checkout's or the installed copy")
    max_runs: int = Field(500, ge=1, le=10_000_000, description="the largest study accepted")
    lease_s: int = Field(30, ge=2, le=86_400, description="a run's lease: a lost worker's run "
                         "is queued again within about 1.75 × this")
    checkpoint_s: float = Field(60.0, le=86_400, description="longest gap between a run's "
                                "checkpoints; ≤ 0: none")
    visibility_timeout_s: int = Field(3600, ge=60, le=30 * 86_400, description="redelivery "
                                      "of an unacknowledged run by the broker (a fallback)")
    torch_threads: int | None = Field(None, ge=1, le=4096, description="torch threads per "
                                      "worker process; none: cores ÷ processes")
    worker_concurrency: int = Field(1, ge=1, le=1024, description="processes of a worker")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings the variables give (unset or empty: the default); ``ValueError``
        naming each bad variable, its allowed range and what it holds."""
        env = os.environ if env is None else env
        given: dict[str, Any] = {}
        for name, var in ENV.items():
            raw = env.get(var, "").strip()
            if raw:
                given[name] = raw
        try:
            # Lax mode on purpose: every value arrives as text ("30" is the int 30).
            return cls.model_validate(given)
        except ValidationError as err:
            lines = []
            for item in err.errors(include_url=False):
                var = ENV[str(item["loc"][0])]
                lines.append(f"{var}: {item['msg']} (got {given.get(item['loc'][0])!r})")
            raise ValueError("\n".join(lines)) from None


def current() -> Settings:
    """The settings of this process now (see the module's note on reading at call time)."""
    return Settings.from_env()
