"""Every write the dashboard can make, each behind the editor check.

Pages call these instead of ``tasks``/``storage`` directly, so the role is checked on the server
for each action whether or not its button was shown: one place to read, one place to test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from approximant.app.access import Principal, require_editor

if TYPE_CHECKING:
    from approximant.app.services import Services
    from approximant.engine.approx.spec import LabSpec
    from approximant.engine.specs import RunSpec, StudySpec
    from approximant.tasks.lab import LabSubmission
    from approximant.tasks.submit import Submission


def _broker(services: Services, action: str) -> str:
    if not services.broker_url:
        raise RuntimeError(f"{action}: no broker configured for this dashboard")
    return services.broker_url


def submit_study(who: Principal, services: Services, spec: StudySpec) -> Submission:
    require_editor(who, f"launch study {spec.study_id}")
    from approximant.tasks.submit import submit_study as submit

    return submit(spec, _broker(services, "launch"))


def cancel_study(who: Principal, services: Services, study_id: str) -> None:
    require_editor(who, f"cancel study {study_id}")
    from approximant.tasks.submit import cancel_study as cancel

    cancel(study_id, _broker(services, "cancel"))


def cancel_runs(who: Principal, services: Services, run_ids: Sequence[str]) -> None:
    require_editor(who, f"cancel {len(run_ids)} run(s)")
    from approximant.tasks.submit import cancel_run

    url = _broker(services, "cancel")
    for rid in run_ids:
        cancel_run(rid, url)


def rerun_runs(who: Principal, services: Services, runs: list[RunSpec],
               keep_cancelled: Sequence[str]) -> int:
    require_editor(who, f"re-run {len(runs)} run(s)")
    from approximant.tasks.submit import rerun

    return rerun(runs, _broker(services, "re-run"), keep_cancelled=keep_cancelled)


def add_seeds(who: Principal, services: Services, spec: StudySpec, existing: list[RunSpec],
              label: str, seeds: list[int], keep_cancelled: Sequence[str]) -> Submission:
    require_editor(who, f"add seeds to {spec.study_id}")
    from approximant.tasks.submit import add_seeds as add

    return add(spec, existing, label, seeds, _broker(services, "add seeds"),
               keep_cancelled=keep_cancelled)


def create_share(who: Principal, services: Services, study_id: str) -> str:
    require_editor(who, f"share study {study_id}")
    from approximant.storage.shares import Shares

    return Shares(services.db).create(study_id)


def revoke_share(who: Principal, services: Services, token: str) -> None:
    require_editor(who, "revoke a share link")
    from approximant.storage.shares import Shares

    Shares(services.db).revoke(token)


def submit_lab(who: Principal, services: Services, spec: LabSpec,
               matrices: dict) -> LabSubmission:
    require_editor(who, f"run lab job {spec.job_id}")
    from approximant.tasks.lab import submit_lab as submit

    return submit(spec, _broker(services, "lab job"), matrices)


def cancel_lab(who: Principal, services: Services, job_id: str) -> None:
    require_editor(who, f"cancel lab job {job_id}")
    from approximant.tasks.lab import cancel_lab as cancel

    cancel(job_id, _broker(services, "cancel"))
