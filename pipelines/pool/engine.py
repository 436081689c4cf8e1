"""The front process's engine with ``--pool``: the same ``Engine`` the UI and the API call, its jobs run by replicas.

``PoolEngine`` is a ``PipelineManager`` whose generation jobs go to the pool instead of its own worker: the model
lists, the prompt checks, Settings and the token counter are the front's own (same folders as every replica), and a
job is checked here before it queues, exactly as without a pool. Then::

    submit → PoolQueue (one FIFO for the whole pool; as many jobs out as replicas are up)
           → cluster.stream(job) → a replica (one holding the checkpoint when free) → messages (wire)
           → progress events on the front's job → the pictures saved here, in the one outputs folder

A replica lost mid-job (its process or node died) costs a retry on another replica, said in the job's notes; a
second loss is an error. Stop and Skip are posted to the board and reach the replica within ``replica.POLL_S``.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .. import outputs
from ..errors import AtelierError, Cancelled, QueueFull
from ..interface import EngineStatus, ReplicaStatus
from ..jobs import Job, run_to_end
from ..manager import PipelineManager
from ..progress import JobState, ProgressEvent, ProgressState
from ..request import GenerationRequest, Result
from . import wire

log = logging.getLogger(__name__)

REFRESH_S = 2.0  # how often the front re-reads how many replicas are up (and a GPU pool looks for new GPUs)
ETA_HISTORY = 20  # jobs whose durations give a waiting job's ETA


class PoolJob(Job):
    """A job of the pool's queue; ``replica`` and ``node`` say where it runs once a replica took it."""

    def __init__(self, queue: PoolQueue, request: GenerationRequest,
                 on_progress: Callable[[ProgressEvent], Any] | None = None):
        super().__init__(queue, request, on_progress)  # type: ignore[arg-type] - the pool's queue, same face
        self.replica: str | None = None
        self.node: str | None = None
        self.pid: int | None = None
        self.pool = queue

    @property
    def progress(self) -> ProgressEvent:
        """The latest event; a waiting job's has its place in the pool's queue and the time until it starts."""
        event = super().progress
        if self.state == JobState.QUEUED:
            event = replace(event, eta_s=self.pool.eta(self))
        return event

    def cancel(self) -> None:
        """Remove the job if it waits; stop it on its replica within a step if it runs."""
        self._cancel.set()
        if not self.pool.remove_waiting(self) and not self.done:
            self.pool.post(self, "stop")

    def skip(self) -> None:
        super().skip()
        if self.state == JobState.RUNNING:
            self.pool.post(self, "skip")


class PoolQueue:
    """One FIFO for the whole pool. A dispatcher hands the oldest waiting job out whenever fewer jobs are out than
    replicas are up; each job out is followed by a thread of its own (it waits on its replica's stream)."""

    def __init__(self, run: Callable[[PoolJob], Result], max_waiting: Callable[[], int],
                 capacity: Callable[[], int], post: Callable[[str, str], None]):
        self._run = run
        self._max_waiting = max_waiting
        self._capacity = capacity
        self._post = post
        self._waiting: deque[PoolJob] = deque()
        self._running: list[PoolJob] = []
        self._durations: deque[float] = deque(maxlen=ETA_HISTORY)
        self._cond = threading.Condition()
        self._closed = False
        self._dispatcher: threading.Thread | None = None

    def start(self) -> None:
        with self._cond:
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(target=self._dispatch, name="atelier-pool", daemon=True)
                self._dispatcher.start()

    def close(self) -> None:
        """Cancel the waiting jobs and stop the running ones."""
        with self._cond:
            self._closed = True
            waiting, running = list(self._waiting), list(self._running)
            self._waiting.clear()
            self._cond.notify_all()
        for job in waiting:
            job._cancel.set()
            job.finish(error=Cancelled("Atelier is shutting down; the job was not run."))
        for job in running:
            job.cancel()

    def put(self, job: PoolJob) -> PoolJob:
        with self._cond:
            if self._closed:
                raise AtelierError("Atelier is shutting down; no new jobs are taken.")
            limit = self._max_waiting()
            if len(self._waiting) >= limit:
                raise QueueFull(f"The queue is full ({limit} jobs waiting). Try again when some have finished.")
            self._waiting.append(job)
            self._cond.notify_all()
        return job

    def remove_waiting(self, job: Job) -> bool:
        """Take a job that has not gone to a replica out of the queue (it ends as cancelled). False if it had."""
        with self._cond:
            try:
                self._waiting.remove(job)  # type: ignore[arg-type]
            except ValueError:
                return False
        job.finish(error=Cancelled("Cancelled before it started."))
        return True

    def post(self, job: PoolJob, flag: str) -> None:
        self._post(job.id, flag)

    # --- facts ----------------------------------------------------------------------------------------------
    def position(self, job: Job) -> int:
        """Jobs ahead of ``job``: the waiting ones before it and the ones out on replicas; 0 once it is out."""
        with self._cond:
            if job not in self._waiting:
                return 0
            return self._waiting.index(job) + len(self._running)  # type: ignore[arg-type]

    def eta(self, job: Job) -> float | None:
        """Seconds until a waiting job starts: the recent jobs' mean time, for each round of the pool before it."""
        with self._cond:
            if job not in self._waiting or not self._durations:
                return None
            mean = sum(self._durations) / len(self._durations)
            rounds = self._waiting.index(job) // max(1, self._capacity()) + (1 if self._running else 0)  # type: ignore[arg-type]
            return round(mean * rounds, 1)

    def preloading(self) -> str | None:
        return None  # a pool has no start-up load of its own: each replica loads with its first job

    def current(self) -> PoolJob | None:
        """The oldest job out on a replica (A1111's "current job")."""
        with self._cond:
            return self._running[0] if self._running else None

    def running(self) -> list[PoolJob]:
        with self._cond:
            return list(self._running)

    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    # --- the dispatcher -------------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not (self._waiting and len(self._running) < self._capacity()):
                    self._cond.wait(REFRESH_S)  # the replicas up may change without a notify
                if self._closed:
                    return
                job = self._waiting.popleft()
                self._running.append(job)
                job.state = JobState.RUNNING
                job.started = time.time()
            threading.Thread(target=self._follow, args=(job,), name=f"atelier-pool-{job.id}", daemon=True).start()

    def _follow(self, job: PoolJob) -> None:
        try:
            run_to_end(job, functools.partial(self._run, job))
        finally:
            with self._cond:
                self._running.remove(job)
                if job.state == JobState.DONE and job.started is not None and job.finished is not None:
                    self._durations.append(job.finished - job.started)
                self._cond.notify_all()


class PoolEngine(PipelineManager):
    """The ``Engine`` with ``--pool``: generation on the replicas, everything else here (see the module's text).

    ``cluster`` is a started ``cluster.PoolCluster`` (or anything with its ``stream``, ``post``,
    ``running_replicas``, ``refresh`` and ``close``).
    """

    def __init__(self, settings: Any, registry: Any, cluster: Any, **kwargs: Any):
        super().__init__(settings, registry, **kwargs)
        self.cluster = cluster
        self.pool = PoolQueue(self._run_remote, lambda: self.settings.queue_size, self._capacity, cluster.post)
        self._replicas: dict[str, ReplicaStatus] = {}
        self._replicas_up = 1
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> None:
        super().start()  # the front's own worker: Settings changes (control jobs) only
        self._refresh()
        self.pool.start()
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="atelier-pool-watch", daemon=True)
            self._watcher.start()

    def close(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.pool.close()
        super().close(timeout)
        self.cluster.close()

    # --- jobs -----------------------------------------------------------------------------------------------
    def submit(self, request: GenerationRequest, on_progress: Callable[[ProgressEvent], Any] | None = None) -> Job:
        """Check ``request`` as without a pool, then queue it for the pool."""
        return self.pool.put(PoolJob(self.pool, self.checked_request(request), on_progress))

    def preload(self, name: str | None = None) -> Job | None:
        """Nothing to preload in the front: each replica loads a checkpoint with its first job that needs it."""
        return None

    def current_job(self) -> Job | None:
        return self.pool.current()

    def queue_length(self) -> int:
        return self.pool.waiting()

    def replicas(self) -> tuple[ReplicaStatus, ...]:
        """The pool's replicas: those that ran a job (where, what now), then those up that have not yet."""
        with self._lock:
            known = list(self._replicas.values())
        unseen = [ReplicaStatus(name=f"replica {i + 1}") for i in range(len(known), self._replicas_up)]
        return tuple(known + unseen)

    def status(self) -> EngineStatus:
        """The front's status with the pool's replicas and the checkpoints they hold."""
        replicas = self.replicas()
        held = [replica.checkpoint for replica in replicas if replica.checkpoint]
        return replace(super().status(), pool=replicas, running=bool(self.pool.running()),
                       queue=self.pool.waiting(), loaded_checkpoint=held[0] if held else None,
                       loaded_checkpoints=sorted(set(held)))

    def _capacity(self) -> int:
        return max(1, self._replicas_up)

    def _refresh(self) -> None:
        try:
            self.cluster.refresh()
            self._replicas_up = self.cluster.running_replicas()
        except Exception as exc:  # the cluster is restarting a replica, or going away: keep the last count
            log.debug("pool refresh: %s", exc)

    def _watch(self) -> None:
        while not self._stop.wait(REFRESH_S):
            self._refresh()

    # --- one job on a replica -------------------------------------------------------------------------------
    def _run_remote(self, job: PoolJob) -> Result:
        """Send the job, follow its messages, save its pictures here. One retry when its replica is lost."""
        from .cluster import REPLICA_LOST

        request = job.request
        targets = self.catalog.resolve(request)
        checkpoint = targets.checkpoint.name
        files = [str(info.path) for info in (targets.checkpoint, targets.vae, targets.upscaler, targets.depth)
                 if getattr(info, "path", None) is not None]  # built-ins (Lanczos) have none
        payload = {"id": job.id, "request": request, "files": files,
                   "settings": {name: getattr(self.settings, name) for name in wire.SYNCED_SETTINGS}}
        notes: list[str] = []
        for attempt in (1, 2):
            try:
                result = self._follow_stream(job, payload, checkpoint)
            except REPLICA_LOST as exc:
                lost = f"{job.replica} on {job.node}" if job.replica else "a replica"
                if job.cancel_requested:
                    raise Cancelled("Stopped (its pool replica was lost meanwhile).") from exc
                if attempt == 2:
                    raise AtelierError(f"The pool lost {lost} during this job, and the replica that ran it again "
                                       "too. Check the Ray log of those nodes, then try again.") from exc
                note = f"Pool replica {lost} stopped during this job; it ran again on another replica."
                log.warning("%s (%s)", note, exc)
                notes.append(note)
                job.emit(ProgressEvent(job.id, ProgressState.LOADING, message=note))
                self._forget(job)
                continue
            finally:
                self._replica_idle(job)
            result.notes[:0] = notes
            return result
        raise AssertionError("unreachable")

    def _follow_stream(self, job: PoolJob, payload: dict[str, Any], checkpoint: str) -> Result:
        for message in self.cluster.stream(payload, checkpoint):
            kind = message["kind"]
            if kind == wire.STARTED:
                job.replica, job.node, job.pid = message["replica"], message["node"], message["pid"]
                self._replica_busy(job, checkpoint)
                job.emit(ProgressEvent(job.id, ProgressState.LOADING,
                                       message=f"On pool replica {job.replica} ({job.node})"))
            elif kind == wire.PROGRESS:
                job.emit(wire.progress_event(message, job.id))
            elif kind == wire.RESULT:
                result, pictures = wire.result_of(message, job.request)
                self._save_pictures(job, result, pictures)
                return result
            elif kind == wire.ERROR:
                raise wire.error_of(message)
        raise AtelierError("The pool replica ended the job without a result; see its log.")

    def _save_pictures(self, job: PoolJob, result: Result, pictures: list[dict[str, Any]]) -> None:
        """Write the pictures a replica sent into this process's outputs folder (the pool's one folder)."""
        job.emit(replace(job.latest, state=ProgressState.SAVING, message=""))
        for record in pictures:  # the replica's PNG file as it is: the pixels and the infotext are already in it
            folder = outputs.output_folder(self.settings.outputs_dir, record["task"])
            result.paths.append(outputs.write_png_bytes(record["png"], folder, int(record["seed"])))

    # --- what the front knows of each replica ---------------------------------------------------------------
    def _replica_busy(self, job: PoolJob, checkpoint: str) -> None:
        with self._lock:
            known = self._replicas.get(job.replica or "")
            done = known.jobs_done if known else 0
            self._replicas[job.replica or ""] = ReplicaStatus(
                name=job.replica or "", node=job.node or "", pid=job.pid, job=job.id, task=job.request.task,
                checkpoint=checkpoint, jobs_done=done)

    def _replica_idle(self, job: PoolJob) -> None:
        with self._lock:
            known = self._replicas.get(job.replica or "")
            if known is not None and known.job == job.id:
                self._replicas[known.name] = replace(known, job=None, jobs_done=known.jobs_done + 1)

    def _forget(self, job: PoolJob) -> None:
        """A lost replica leaves the list (Serve starts a new one, which shows up with its first job)."""
        with self._lock:
            self._replicas.pop(job.replica or "", None)
        job.replica = job.node = job.pid = None
