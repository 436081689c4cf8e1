"""The one FIFO job queue and its worker thread: UI and REST jobs run in arrival order, one at a time.

Three kinds of job share the queue:

* ``generate``: a ``GenerationRequest`` to run (the manager's ``_generate``);
* ``preload``: the start-up load of ``--checkpoint`` (no image); a request queued behind it shows "Loading ..."
  instead of a queue position;
* ``control``: a change to the engine's own state (Settings that swap the device choice or resize the cache), run
  on the worker so that it never races a job checking a model out. Control jobs go ahead of waiting jobs (they
  take milliseconds) but never interrupt the running one, and are not counted as positions.

The queue knows nothing of models or devices: the manager hands it one function, ``run(job)``.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .errors import AtelierError, Cancelled, QueueFull
from .progress import JobState, ProgressEvent, ProgressState
from .request import GenerationRequest, Result
from .strenum import StrEnum

log = logging.getLogger(__name__)


class JobKind(StrEnum):
    GENERATE = "generate"
    PRELOAD = "preload"
    CONTROL = "control"


class Job:
    """One queued request. ``position()`` 0 = running now; ``wait()`` returns its ``Result`` or raises its error."""

    def __init__(self, queue: JobQueue, request: GenerationRequest | None,
                 on_progress: Callable[[ProgressEvent], Any] | None = None, kind: JobKind = JobKind.GENERATE,
                 work: Callable[[], Any] | None = None):
        self.id = uuid.uuid4().hex[:12]
        self.request = request  # None for a control job
        self.kind = kind
        self.work = work  # a control job's function
        self.runs_next = False  # a control job queued while nothing ran (set by the queue)
        self.state = JobState.QUEUED
        self.created = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self._queue = queue
        self._on_progress = on_progress
        self._cancel = threading.Event()
        self._skip = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._progress = ProgressEvent(job_id=self.id, state=ProgressState.QUEUED)
        self._result: Any = None
        self._error: BaseException | None = None

    @property
    def preload(self) -> bool:
        return self.kind == JobKind.PRELOAD

    def position(self) -> int:
        """0 when running (or finished), n when n jobs are ahead of it in the queue."""
        return self._queue.position(self)

    @property
    def progress(self) -> ProgressEvent:
        """The latest progress event (older ones are dropped: consumers only ever need the newest)."""
        event = self.latest
        if self.state == JobState.QUEUED:
            position = self.position()
            event = replace(event, queue_position=position)
            loading = self._queue.preloading() if position == 0 else None
            if loading is not None:  # nothing ahead but the start-up load: say what it waits for
                event = replace(event, state=ProgressState.LOADING,
                                message=f"Loading {loading} (started with Atelier)…")
        return event

    @property
    def latest(self) -> ProgressEvent:
        """The last event the worker emitted, as it was (no queue position filled in)."""
        with self._lock:
            return self._progress

    def cancel(self) -> None:
        """Remove the job if it waits; stop it within one step if it runs. Images already finished are kept."""
        self._cancel.set()
        self._queue.remove_waiting(self)

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def skip(self) -> None:
        """End the batch being drawn and go on with the next one (A1111's Skip); a job that waits or loads is not
        affected (the manager clears the request as each batch starts, as A1111 does)."""
        self._skip.set()

    @property
    def skip_requested(self) -> bool:
        return self._skip.is_set()

    def clear_skip(self) -> None:
        """Forget a Skip (called by the worker as each batch starts)."""
        self._skip.clear()

    def wait(self, timeout: float | None = None) -> Result:
        """Block until the job ends. Returns the ``Result`` (``cancelled=True`` if stopped after some images);
        raises the job's ``AtelierError`` (``Cancelled`` when stopped before any image), ``TimeoutError`` on timeout."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.id} still {self.state} after {timeout} s")
        if self._error is not None:
            raise self._error
        return self._result

    @property
    def done(self) -> bool:
        return self._done.is_set()

    # --- worker side --------------------------------------------------------------------------------------------
    def emit(self, event: ProgressEvent) -> None:
        """Record ``event`` as the latest and tell the listener (a failing listener never fails the job)."""
        with self._lock:
            self._progress = event
        if self._on_progress is not None:
            try:
                self._on_progress(event)
            except Exception:
                log.exception("progress listener failed")

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        """End the job with its result or error; ``wait()`` returns from here on."""
        self._result, self._error = result, error
        if error is not None:
            self.state = JobState.CANCELLED if isinstance(error, Cancelled) else JobState.FAILED
        else:
            cancelled = isinstance(result, Result) and result.cancelled
            self.state = JobState.CANCELLED if cancelled else JobState.DONE
        self.finished = time.time()
        last = self.latest
        self.emit(replace(last, state=ProgressState(self.state), queue_position=0, eta_s=0.0,
                          message=str(error) if error is not None else last.message))
        self._done.set()


def run_to_end(job: Job, work: Callable[[], Any]) -> None:
    """Run ``work()`` and finish ``job`` with its result or error; a bug (not an ``AtelierError``) is logged and
    said in words, so that the worker that runs jobs stays alive."""
    try:
        job.finish(result=work())
    except AtelierError as exc:
        job.finish(error=exc)
    except Exception as exc:
        log.exception("job %s failed", job.id)
        err = AtelierError(f"Generation failed unexpectedly ({type(exc).__name__}: {exc}). See the log.")
        err.__cause__ = exc
        job.finish(error=err)


class JobQueue:
    """The FIFO queue, its condition variable and the worker thread that runs ``run(job)`` for each job."""

    def __init__(self, run: Callable[[Job], Any], max_waiting: Callable[[], int]):
        self._run = run
        self._max_waiting = max_waiting  # read at each submit: the Settings' queue size may change live
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._current: Job | None = None
        self._worker: threading.Thread | None = None
        self._closed = False

    # --- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._cond:
            if self._worker is None or not self._worker.is_alive():
                self._closed = False
                self._worker = threading.Thread(target=self._loop, name="atelier-worker", daemon=True)
                self._worker.start()

    def close(self, timeout: float = 30.0) -> None:
        """Cancel waiting jobs, stop the running one, and end the worker."""
        with self._cond:
            self._closed = True
            waiting = list(self._queue)
            self._queue.clear()
            current = self._current
            self._cond.notify_all()
        for job in waiting:
            job._cancel.set()
            job.finish(error=Cancelled("Atelier is shutting down; the job was not run."))
        if current is not None:
            current._cancel.set()
        if self._worker is not None:
            self._worker.join(timeout)

    # --- adding and removing --------------------------------------------------------------------------------
    def put(self, job: Job) -> Job:
        """Queue ``job`` (control jobs ahead of the waiting ones). Raises ``QueueFull`` or, after ``close``,
        ``AtelierError``."""
        with self._cond:
            if self._closed and self._worker is not None:
                raise AtelierError("Atelier is shutting down; no new jobs are taken.")
            if job.kind == JobKind.CONTROL:
                ahead = sum(1 for other in self._queue if other.kind == JobKind.CONTROL)
                self._queue.insert(ahead, job)
                job.runs_next = self._current is None  # control jobs go first: the worker takes it next
            else:
                limit = self._max_waiting()
                if self.waiting() >= limit:
                    raise QueueFull(f"The queue is full ({limit} jobs waiting). Try again when some have finished.")
                self._queue.append(job)
            self._cond.notify_all()
        self.start()
        return job

    def run_soon(self, work: Callable[[], Any]) -> Job:
        """Run ``work()`` on the worker as a control job: at once when nothing runs (this call then returns when
        it is done), else right after the running job, ahead of the waiting ones. Returns the job."""
        job = self.put(Job(self, None, kind=JobKind.CONTROL, work=work))
        if job.runs_next:
            job.wait()
        return job

    def remove_waiting(self, job: Job) -> None:
        """Take a job that has not started out of the queue (it ends as cancelled); a running job is left alone."""
        with self._cond:
            try:
                self._queue.remove(job)
            except ValueError:
                return
        job.finish(error=Cancelled("Cancelled before it started."))

    # --- facts ----------------------------------------------------------------------------------------------
    def current(self) -> Job | None:
        """The running job; None while nothing runs or the worker applies a control job (it is no one's job)."""
        with self._cond:
            job = self._current
        return job if job is not None and job.kind != JobKind.CONTROL else None

    def idle(self) -> bool:
        """Nothing runs and nothing waits."""
        with self._cond:
            return self._current is None and not self._queue

    def waiting(self) -> int:
        """Jobs waiting (not counting the running one, nor control jobs)."""
        with self._cond:
            return sum(1 for job in self._queue if job.kind != JobKind.CONTROL)

    def position(self, job: Job) -> int:
        """Jobs ahead of ``job``, the running one included; start-up loads and control jobs are not counted (a
        request waiting for a start-up load shows "Loading ..." instead of a queue position)."""
        with self._cond:
            if job is self._current or job.state != JobState.QUEUED:
                return 0
            try:
                index = self._queue.index(job)
            except ValueError:
                return 0
            ahead = [other for other in list(self._queue)[:index] if other.kind == JobKind.GENERATE]
            running = self._current is not None and self._current.kind == JobKind.GENERATE
            return len(ahead) + int(running)

    def preloading(self) -> str | None:
        """The checkpoint a start-up load is loading now (or is about to), else None."""
        with self._cond:
            for job in (self._current, *self._queue):
                if job is not None and job.preload:
                    return job.request.checkpoint
        return None

    def closed(self) -> bool:
        with self._cond:
            return self._closed and self._worker is not None

    # --- the worker -----------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._queue.popleft()
                self._current = job
                job.state = JobState.RUNNING
                job.started = time.time()
            try:
                run_to_end(job, job.work if job.work is not None else functools.partial(self._run, job))
            finally:
                with self._cond:
                    self._current = None
                    self._cond.notify_all()
