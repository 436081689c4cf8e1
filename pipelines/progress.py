"""Progress of a job as structured events, and the per-step hook that makes them.

The engine reports facts (state, step, total, batch, phase, ETA, a preview); the UI and the API each word them for
their own readers (``ui/jobs.py`` ``progress_text``, ``api/routes.py`` ``progress``). ``message`` carries only
what has no field of its own: what is being loaded, a slow one-off preparation, or why a job ended.

``StepReporter`` is diffusers' ``callback_on_step_end`` (and the older ``callback(step, t, latents)`` form the x4
upscale pipeline still uses): it checks Stop, measures the ETA and makes a cheap preview every few steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import Cancelled, Skipped
from .preview import latents_to_rgb
from .strenum import StrEnum

PREVIEW_EVERY_STEPS = 3
PREVIEW_MIN_INTERVAL_S = 0.25
# TAESD previews come every step, unless they would cost more than this share of the sampling time so far (a 256 px
# TAESD decode is a few tenths of a second on a 2-core CPU: a fraction of a 512² step, not of a 64² one)
TAESD_PREVIEW_BUDGET = 0.10


class ProgressState(StrEnum):
    """What a job is doing; the first two and the last three are also ``Job.state`` (see ``JobState``)."""

    QUEUED = "queued"
    LOADING = "loading"
    RUNNING = "running"
    SAVING = "saving"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobState(StrEnum):
    """A job's life: waiting, running, then one of three ends."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})


@dataclass(frozen=True)
class ProgressEvent:
    """The latest state of a job, for progress bars (UI) and ``/sdapi/v1/progress`` (API)."""

    job_id: str
    state: str  # a ProgressState
    step: int = 0  # steps done in this batch (over all tiles, for a tiled task)
    total_steps: int = 0
    batch_index: int = 0
    batch_count: int = 1
    queue_position: int = 0  # 0: running now; n: n jobs ahead
    eta_s: float | None = None
    preview: Any = None  # PIL image or None
    message: str = ""  # only what the fields above cannot say (loading what, a slow preparation, an error)
    phase: str = ""  # which pass of a multi-pass task is running ("" for single-pass tasks)

    @property
    def fraction(self) -> float:
        """Overall progress 0..1 across batches."""
        if self.state == ProgressState.DONE:
            return 1.0
        if self.total_steps <= 0:
            return 0.0
        per_batch = 1.0 / max(1, self.batch_count)
        return min(1.0, per_batch * (self.batch_index + self.step / self.total_steps))


class ProgressSink(Protocol):
    """What a ``StepReporter`` reports to (a ``Job``)."""

    id: str

    @property
    def cancel_requested(self) -> bool: ...

    # optional: ``skip_requested`` (a Job has it), read with getattr so that a plain sink needs none

    @property
    def latest(self) -> ProgressEvent: ...

    def emit(self, event: ProgressEvent) -> None: ...


class StepReporter:
    """The per-step hook: slows steps (test-only), checks Stop, emits progress with ETA and a cheap preview.

    ``preview_factors`` is the family's latent→RGB matrix (None: the default one; False: no previews, for tasks
    whose latents are not SD latents). ``taesd``: an ``AutoencoderTiny`` that draws the previews instead, every step
    but the last (its picture comes next) within ``TAESD_PREVIEW_BUDGET``. ``offset`` counts steps done in earlier
    calls of the same batch (tiles).
    """

    def __init__(self, sink: ProgressSink, batch_index: int, batch_count: int, steps: int, size: tuple[int, int],
                 preview_factors: Any = None, preview_bias: Any = None, step_delay_s: float = 0.0,
                 phase: str = "", taesd: Any = None):
        self.sink = sink
        self.batch_index = batch_index
        self.batch_count = batch_count
        self.steps = steps
        self.size = size
        self.factors = preview_factors
        self.bias = preview_bias
        self.step_delay_s = step_delay_s
        self.phase = phase
        self.taesd = taesd
        self.started = time.monotonic()
        self.last_preview = 0.0
        self.preview_s = 0.0  # time spent on TAESD previews in this batch
        self.done_steps = 0
        self.first_step: tuple[int, float] | None = None  # (steps done, when) at the first reported step
        self.offset = 0
        # Several passes counted as one (hires fix): ``total`` fixes the count over all of them; the ETA then needs
        # this pass's end, the steps still to come after it in this pass's step time, and a whole batch's cost.
        self.total: int | None = None
        self.pass_end: int | None = None
        self.pending_cost = 0.0
        self.batch_cost: float | None = None

    def next_pass(self, phase: str, offset: int, pass_end: int | None = None, pending_cost: float = 0.0,
                  batch_cost: float | None = None) -> None:
        """Start another pass of the same batch: its ``phase`` name, the steps done before it (``offset``), where it
        ends, and the later passes' and a whole batch's cost in this pass's step time (their steps are timed
        afresh: a pass at four times the pixels takes longer per step)."""
        self.phase, self.offset = phase, offset
        self.pass_end, self.pending_cost, self.batch_cost = pass_end, pending_cost, batch_cost
        self.started, self.first_step = time.monotonic(), None
        self.preview_s = 0.0  # the previews' budget is a share of this pass's sampling time

    def check_cancel(self) -> None:
        """Raise ``Cancelled`` when Stop was pressed (never ``pipe._interrupt``: it would still decode), ``Skipped``
        when Skip was (a sink without ``skip_requested`` cannot be skipped)."""
        if self.sink.cancel_requested:
            raise Cancelled("Stopped by the user.")
        if getattr(self.sink, "skip_requested", False):
            raise Skipped("Skipped by the user.")

    def __call__(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        """diffusers ``callback_on_step_end``: returns the tensors unchanged."""
        total = self.total or int(getattr(pipe, "_num_timesteps", 0) or self.steps)
        self.on_step(step + 1, total, callback_kwargs.get("latents"))
        return callback_kwargs

    def legacy(self, step: int, timestep: Any, latents: Any) -> None:
        """The old ``callback(step, t, latents)`` form (the x4 upscale pipeline has no ``callback_on_step_end``)."""
        self.on_step(step + 1, self.total or self.steps, latents)

    def on_step(self, done: int, total: int, latents: Any) -> None:
        if self.step_delay_s:
            time.sleep(self.step_delay_s)
        self.check_cancel()
        done, total = self.offset + done, max(total, self.offset + done)
        self.done_steps = done
        now = time.monotonic()
        # From the second step on, time per step is measured from the first step's end: prompt encoding, the
        # first call's warm-up (or an OpenVINO compile) would otherwise inflate the ETA for the whole image.
        if self.first_step is None or done <= self.first_step[0]:
            self.first_step = (done, now)
            per_step = (now - self.started) / max(1, done - self.offset)
        else:
            per_step = (now - self.first_step[1]) / (done - self.first_step[0])
        pass_end = self.pass_end if self.pass_end is not None else total
        batch_cost = self.batch_cost if self.batch_cost is not None else total
        batches_left = self.batch_count - self.batch_index - 1
        eta = per_step * ((pass_end - done) + self.pending_cost + batch_cost * batches_left)
        preview = self._preview(latents, done, now, total)
        if preview is None:
            preview = self.sink.latest.preview  # keep showing the last one
        self.sink.emit(ProgressEvent(
            job_id=self.sink.id, state=ProgressState.RUNNING, step=done, total_steps=total,
            batch_index=self.batch_index, batch_count=self.batch_count, queue_position=0, eta_s=round(eta, 2),
            preview=preview, phase=self.phase,
        ))
        self.check_cancel()

    def _preview(self, latents: Any, done: int, now: float, total: int | None = None) -> Any:
        if latents is None or self.factors is False:
            return None
        if self.taesd is not None:
            return self._taesd_preview(latents, done, now, total)
        if not (done % PREVIEW_EVERY_STEPS == 0 or done == 1) or now - self.last_preview < PREVIEW_MIN_INTERVAL_S:
            return None
        try:
            preview = latents_to_rgb(latents, self.factors, self.bias, self.size)
        except Exception:  # previews are a nicety; never fail a run for one
            return None
        self.last_preview = now
        return preview

    def _taesd_preview(self, latents: Any, done: int, now: float, total: int | None) -> Any:
        """A TAESD preview at every step but the last, unless previews already cost more than their budget."""
        from . import taesd

        if (total is not None and done >= total) or now - self.last_preview < PREVIEW_MIN_INTERVAL_S:
            return None
        sampling = now - self.started - self.preview_s
        if self.preview_s > TAESD_PREVIEW_BUDGET * sampling:
            return None
        started = time.monotonic()
        try:
            preview = taesd.preview(self.taesd, latents, self.size)
        except Exception:  # a nicety: fall back to the cheap preview for the rest of the batch
            self.taesd = None
            return self._preview(latents, done, now, total)
        finally:
            self.preview_s += time.monotonic() - started
        self.last_preview = now
        return preview

