"""One pool replica: a Ray Serve replica that owns a ``PipelineManager`` of its own (one per GPU).

The front process sends it one job at a time (``max_ongoing_requests=1``): the ``GenerationRequest``, a snapshot of
the front's live Settings (applied here first, so a Settings change reaches every replica with its next job) and the
pool's board, where Stop and Skip are posted. The replica streams back where it runs, the job's progress events and
its pictures as PNG bytes (``wire``); it never writes the outputs folder.

Which checkpoints a replica holds is told to Serve through model multiplexing (``serve.multiplexed``), so that Serve's
router sends a request to a replica that has its checkpoint loaded when one is free, else to the one holding the
fewest (Serve's ``PowerOfTwoChoicesRequestRouter``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ray import serve

from . import wire

log = logging.getLogger(__name__)

# How often the replica reads its job's steps and the board (Stop, Skip); a new state (loading, saving, the end) wakes
# it at once. Not every step: the replica's event loop would take the CPU from its own and the other replicas' steps.
POLL_S = 0.2
CHECKPOINTS_PER_REPLICA = 4  # Serve's multiplexing memory of which checkpoints a replica holds (a routing hint)

class EngineReplica:
    """The deployment's class (made a Serve deployment by ``cluster.deploy``)."""

    def __init__(self, config: dict[str, Any]):
        from ..manager import PipelineManager
        from ..registry import ModelRegistry
        from ..settings import Settings

        settings = Settings()
        settings.update(config["settings"], respect_cli=False)
        settings.demo = bool(config.get("demo"))
        settings.step_delay_s = float(config.get("step_delay_s") or 0.0)
        settings.threads = int(config.get("threads") or 0)
        if config.get("styles_file"):
            settings.styles_file = Path(config["styles_file"])
        registry = ModelRegistry(settings.models_dir, settings.cache_dir,
                                 extra_dirs=tuple(Path(d) for d in config.get("extra_dirs", ())))
        self.manager = PipelineManager(settings, registry)
        self.manager.image_writer = self._keep_task
        self.manager.start()
        self.tasks: list[str] = []  # the task folder of each picture of the running job, in order
        context = serve.get_replica_context()
        self.name = context.replica_id.unique_id if context is not None else f"replica-{os.getpid()}"
        self.node = socket.gethostname()
        log.info("Pool replica %s ready on %s (pid %d, %s).", self.name, self.node, os.getpid(),
                 self.manager.choice.device)

    def _keep_task(self, image: Any, infotext: str, task: str, seed: int) -> None:
        """The manager's image writer here: nothing is written; the front saves the pictures it is sent."""
        self.tasks.append(task)
        return None

    @serve.multiplexed(max_num_models_per_replica=CHECKPOINTS_PER_REPLICA)
    async def checkpoint(self, name: str) -> str:
        """Serve's record of the checkpoints this replica holds (the manager's cache does the loading)."""
        return name

    async def generate(self, job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Run one job and stream its messages (``wire``)."""
        model = serve.get_multiplexed_model_id()
        if model:
            await self.checkpoint(model)
        yield wire.started(self.name, self.node, os.getpid())
        loop, changed = asyncio.get_running_loop(), asyncio.Event()
        try:
            missing = unreachable(job.get("files", ()), self.node)
            if missing is not None:
                raise missing
            self.tasks = []
            local = self._submit(job, on_progress=lambda event: (
                event.state != "running" and loop.call_soon_threadsafe(changed.set)))  # steps: read each POLL_S
        except Exception as exc:  # a checkpoint this node cannot see, a Settings value it refuses
            yield wire.error(self._where(exc))
            return
        board, job_id = job["board"], job["id"]
        last = None
        while not local.done:
            with contextlib.suppress(TimeoutError):  # woken by a new state or the end; else every POLL_S
                await asyncio.wait_for(changed.wait(), POLL_S)
            changed.clear()
            for flag in await board.take.remote(job_id):
                (local.cancel if flag == "stop" else local.skip)()
            event = local.latest
            if event is last or event.state not in ("loading", "running", "saving"):
                continue
            last = event
            yield wire.progress(event)
        try:
            result = local.wait(0)
        except Exception as exc:
            yield wire.error(self._where(exc))
            return
        yield wire.result(result, self.tasks)

    async def run(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        """``generate`` without the stream, for a front connected through Ray Client (which cannot stream): the
        same messages but the steps', returned when the job ends."""
        return [message async for message in self.generate(job) if message["kind"] != wire.PROGRESS]

    def _submit(self, job: dict[str, Any], on_progress: Any) -> Any:
        """The front's Settings, then the request, on this replica's manager. A model name this replica does not know
        (whose file it can see) was added after its scan, when the front's Refresh rescanned: look again, once."""
        from ..errors import ModelNotFound

        try:
            self._sync_settings(job["settings"])
            return self.manager.submit(job["request"], on_progress=on_progress)
        except ModelNotFound:
            self.manager.registry.refresh()  # not refresh_models(): the front's registry hashes the files already
            self._sync_settings(job["settings"])
            return self.manager.submit(job["request"], on_progress=on_progress)

    def _sync_settings(self, wanted: dict[str, Any]) -> None:
        changes = {name: value for name, value in wanted.items()
                   if name in wire.SYNCED_SETTINGS and getattr(self.manager.settings, name) != value}
        if changes:
            self.manager.apply_settings(changes)

    def _where(self, exc: BaseException) -> BaseException:
        """A missing model file on this node says which node cannot see it: every node needs the same paths."""
        from ..errors import ModelNotFound

        if isinstance(exc, ModelNotFound):
            return ModelNotFound(f"{exc.message} (pool replica on {self.node}, models folder "
                                 f"{self.manager.settings.models_dir}: every machine of the pool needs the models at "
                                 "the same path, e.g. a shared folder)", field=exc.field)
        return exc

    def check_health(self) -> None:
        """Serve's health check: the manager's worker must be alive."""
        if self.manager.jobs.closed():
            raise RuntimeError("the replica's pipeline manager is closed")


def unreachable(files: Any, node: str) -> Exception | None:
    """``ModelNotFound`` naming the first of the front's model files this node cannot see at the same path."""
    from ..errors import ModelNotFound

    for path in files:
        if not Path(path).exists():
            return ModelNotFound(f"The pool replica on {node} cannot see {path}. Every machine of the pool needs the "
                                 "models at the same path as the machine running the UI (a shared folder, or a copy).")
    return None
