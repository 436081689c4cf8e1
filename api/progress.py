"""``/sdapi/v1/progress`` as SillyTavern, openOutpaint and webuiapi read it.

* idle (nothing runs, nothing waits): ``progress`` 0 and ``state.job_count`` 0, the pair clients poll for after a
  model switch (SillyTavern) or before a job (webuiapi's ``util_wait_for_ready``);
* ``state.job_count``: the running job's batches (A1111's count; a checkpoint load counts as one) plus one per
  waiting job, so a load or a queue never reads as idle; ``job_no`` the batch being drawn;
* ``progress`` 0..1 over the running job's batches, ``eta_relative`` in seconds, ``state.sampling_step`` and
  ``sampling_steps`` of the batch (both passes of a hires fix counted as one run);
* ``current_image``: the live preview as a base64 PNG, unless ``skip_current_image=true``.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from . import convert
from .models import ProgressResponse, ProgressState


def progress_response(manager: Any, skip_current_image: bool = False) -> ProgressResponse:
    """The running job's progress, or the queue's, in A1111's shape."""
    job = manager.current_job()
    waiting = manager.queue_length()
    pool = pool_report(manager)
    if job is None:
        if waiting:  # between two jobs: not idle yet
            return ProgressResponse(state=ProgressState(job_count=waiting), textinfo=f"{waiting} job(s) queued",
                                    pool=pool)
        return ProgressResponse(pool=pool)
    event = job.progress
    preview = None
    if not skip_current_image and event.preview is not None:
        preview = convert.png_base64(event.preview)
    state = ProgressState(
        job=job.id,
        job_count=max(1, event.batch_count) + waiting,
        job_no=event.batch_index,
        job_timestamp=_started(job),
        sampling_step=event.step,
        sampling_steps=event.total_steps,
        interrupted=event.state == "cancelled" or job.state == "cancelled",
        skipped=bool(getattr(job, "skip_requested", False)),
        queue_position=event.queue_position,
    )
    return ProgressResponse(
        progress=event.fraction,
        eta_relative=event.eta_s or 0.0,
        state=state,
        current_image=preview,
        textinfo=progress_text(event),
        current_task=job.id,
        pool=pool,
    )


def pool_report(manager: Any) -> list[dict[str, Any]] | None:
    """With ``--pool``: each replica as the status bar shows it; None without a pool."""
    replicas = manager.replicas()
    return None if replicas is None else [asdict(replica) for replica in replicas]


def progress_text(event: Any) -> str:
    """A1111's ``textinfo``: what the engine says in words (loading what, an error), else the step counts."""
    if event.message:
        return event.message
    if event.state == "saving":
        return "Saving"
    if event.total_steps:
        phase = f"{event.phase}: " if event.phase else ""
        return f"{phase}Step {event.step}/{event.total_steps} · batch {event.batch_index + 1}/{event.batch_count}"
    return str(event.state)


def _started(job: Any) -> str:
    """A1111's ``job_timestamp``: when the job started ("0" before)."""
    started = getattr(job, "started", None)
    return convert.job_timestamp(datetime.fromtimestamp(started)) if started else "0"
