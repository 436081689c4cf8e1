"""The pipeline manager: one FIFO job queue per device, the checkpoint cache, the memory ladder, and ``run()``.

UI events and REST requests both ``submit`` jobs here, so mixed traffic runs in arrival order, one job at a time.
A job's work (``_generate``) reads top-down like a diffusers ``__call__``::

    targets = resolve names → entry = cache.checkout(checkpoint, vae) → rung = ladder.choose(request)
    for each batch: images = generate (OOM → next rung, retry the batch) → save → add to the result

Cancel is cooperative: the diffusers step callback raises ``Cancelled`` (never ``pipe._interrupt``, which would
still decode and save a half-done image); batches finished before the stop are already on disk and kept.
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from . import devices, memory, outputs
from .cache import CacheEntry, CheckpointCache, family_spec
from .errors import AtelierError, Cancelled, InvalidRequest, ModelNotFound, OutOfMemoryEverywhere, QueueFull
from .infotext import build_infotext, generation_params
from .memory import Ladder, Shape
from .preview import latents_to_rgb
from .request import GenerationRequest, ProgressEvent, Result
from .samplers import make_scheduler
from .settings import MEMORY_MODES, Settings
from .upscale import DEFAULT_OVERLAP, DEFAULT_TILE, count_tiles, no_upscaler_error, upscale_tiled

log = logging.getLogger(__name__)

PREVIEW_EVERY_STEPS = 3
PREVIEW_MIN_INTERVAL_S = 0.25
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")


# --- jobs ------------------------------------------------------------------------------------------------------


class Job:
    """One queued request. ``position()`` 0 = running now; ``wait()`` returns its ``Result`` or raises its error."""

    def __init__(self, manager: PipelineManager, request: GenerationRequest,
                 on_progress: Callable[[ProgressEvent], Any] | None = None, cancel: Any = None,
                 preload: bool = False):
        self.id = uuid.uuid4().hex[:12]
        self.request = request
        self.preload = preload  # load the checkpoint only (start-up with --checkpoint), no image
        self.state = "queued"
        self.created = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self._manager = manager
        self._on_progress = on_progress
        self._external_cancel = cancel
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._progress = ProgressEvent(job_id=self.id, state="queued")
        self._result: Result | None = None
        self._error: BaseException | None = None

    def position(self) -> int:
        """0 when running (or finished), n when n jobs are ahead of it in the queue."""
        return self._manager._position(self)

    @property
    def progress(self) -> ProgressEvent:
        """The latest progress event (older ones are dropped: consumers only ever need the newest)."""
        with self._lock:
            event = self._progress
        if self.state == "queued":
            position = self.position()
            event = replace(event, queue_position=position)
            loading = self._manager._preloading() if position == 0 else None
            if loading is not None:  # nothing ahead but the start-up load: say what it waits for
                event = replace(event, state="loading", message=f"Loading {loading} (started with Atelier)…")
        return event

    def cancel(self) -> None:
        """Remove the job if it waits; stop it within one step if it runs. Images already finished are kept."""
        self._cancel.set()
        self._manager._drop_waiting(self)

    @property
    def cancel_requested(self) -> bool:
        ext = self._external_cancel
        if ext is not None:
            flag = ext() if callable(ext) and not hasattr(ext, "is_set") else ext.is_set()
            if flag:
                return True
        return self._cancel.is_set()

    def wait(self, timeout: float | None = None) -> Result:
        """Block until the job ends. Returns the ``Result`` (``cancelled=True`` if stopped after some images);
        raises the job's ``AtelierError`` (``Cancelled`` when stopped before any image), ``TimeoutError`` on timeout."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.id} still {self.state} after {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    @property
    def done(self) -> bool:
        return self._done.is_set()

    # worker side
    def _emit(self, event: ProgressEvent) -> None:
        with self._lock:
            self._progress = event
        if self._on_progress is not None:
            try:
                self._on_progress(event)
            except Exception:  # a broken listener must not break the generation
                log.exception("progress listener failed")

    def _finish(self, result: Result | None = None, error: BaseException | None = None) -> None:
        self._result, self._error = result, error
        if error is not None:
            self.state = "cancelled" if isinstance(error, Cancelled) else "failed"
        else:
            self.state = "cancelled" if result is not None and result.cancelled else "done"
        self.finished = time.time()
        last = self._progress
        self._emit(replace(last, state=self.state, queue_position=0, eta_s=0.0,
                           message=str(error) if error is not None else last.message))
        self._done.set()


# --- step callback --------------------------------------------------------------------------------------------


class StepReporter:
    """The per-step hook: slows steps (test-only), checks cancel, emits progress with ETA and a cheap preview."""

    def __init__(self, job: Job, batch_index: int, batch_count: int, steps: int, size: tuple[int, int],
                 factors: Any = None, bias: Any = None, step_delay_s: float = 0.0):
        self.job = job
        self.batch_index = batch_index
        self.batch_count = batch_count
        self.steps = steps
        self.size = size
        self.factors = factors
        self.bias = bias
        self.step_delay_s = step_delay_s
        self.started = time.monotonic()
        self.last_preview = 0.0
        self.done_steps = 0
        self.first_step: tuple[int, float] | None = None  # (steps done, when) at the first reported step
        self.offset = 0  # steps done in earlier calls of this batch (upscale tiles)

    def check_cancel(self) -> None:
        if self.job.cancel_requested:
            raise Cancelled("Stopped by the user.")

    def __call__(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        """diffusers ``callback_on_step_end``: returns the tensors unchanged."""
        total = int(getattr(pipe, "_num_timesteps", 0) or self.steps)
        self.on_step(step + 1, total, callback_kwargs.get("latents"))
        return callback_kwargs

    def legacy(self, step: int, timestep: Any, latents: Any) -> None:
        """The old ``callback(step, t, latents)`` form (the x4 upscale pipeline has no ``callback_on_step_end``)."""
        self.on_step(step + 1, self.steps, latents)

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
            per_step = (now - self.started) / max(1, done)
        else:
            per_step = (now - self.first_step[1]) / (done - self.first_step[0])
        eta = per_step * ((total - done) + total * (self.batch_count - self.batch_index - 1))
        preview = None
        if latents is not None and (done % PREVIEW_EVERY_STEPS == 0 or done == 1) \
                and now - self.last_preview >= PREVIEW_MIN_INTERVAL_S and self.factors is not False:
            try:
                preview = latents_to_rgb(latents, self.factors, self.bias, self.size)
                self.last_preview = now
            except Exception:  # previews are a nicety; never fail a run for one
                preview = None
        if preview is None:
            preview = self.job._progress.preview  # keep showing the last one
        self.job._emit(ProgressEvent(
            job_id=self.job.id, state="running", step=done, total_steps=total, batch_index=self.batch_index,
            batch_count=self.batch_count, queue_position=0, eta_s=round(eta, 2), preview=preview,
            message=f"Step {done}/{total} · batch {self.batch_index + 1}/{self.batch_count}",
        ))
        self.check_cancel()


# --- the manager ----------------------------------------------------------------------------------------------


@dataclass
class Targets:
    """The models a request resolved to."""

    checkpoint: Any  # ModelInfo of the checkpoint (or of the upscaler for task "upscale")
    vae: Any = None  # ModelInfo of an external VAE, or None for the checkpoint's own


@dataclass
class BatchOutput:
    images: list[Any]
    notes: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)


class PipelineManager:
    """Owns the device, the checkpoint cache, the memory ladder and the one job queue.

    ``loader(info, dtype)`` (default ``loaders.load_components``), ``vae_loader(info, dtype)`` and ``ladder`` are
    injectable so that tests can run on tiny in-memory models and fake the GPU rungs on a CPU.
    """

    def __init__(self, settings: Settings, registry: Any, loader: Callable[..., Any] | None = None,
                 vae_loader: Callable[..., Any] | None = None, ladder: Ladder | None = None,
                 device_choice: devices.DeviceChoice | None = None):
        self.settings = settings
        self.registry = registry
        self.choice = device_choice or devices.choose(settings.device, settings.precision, settings.xformers)
        self.ladder = ladder or Ladder.for_device(self.choice)
        self.cache = CheckpointCache(
            loader or _default_loader(), self.choice, settings.vram_slots, settings.ram_slots,
            vae_loader=vae_loader or _default_vae_loader(), reset_entry=self._reset_entry,
        )
        self.upscale_tile = DEFAULT_TILE
        self.upscale_overlap = DEFAULT_OVERLAP
        self.last_rung: str | None = None
        self._scheduler_templates: dict[tuple[str, str, str], Any] = {}
        self._fast_notes: list[str] = []  # notes of the last --fast switch-on, for the running job (worker only)
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._current: Job | None = None
        self._worker: threading.Thread | None = None
        self._closed = False
        self._hash_lock = threading.Lock()
        self._hashing: dict[str, concurrent.futures.Future[str]] = {}  # file path -> its short hash, being read

    # --- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._cond:
            if self._worker is None or not self._worker.is_alive():
                self._closed = False
                self._worker = threading.Thread(target=self._worker_loop, name="atelier-worker", daemon=True)
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
            job._finish(error=Cancelled("Atelier is shutting down; the job was not run."))
        if current is not None:
            current._cancel.set()
        if self._worker is not None:
            self._worker.join(timeout)

    # --- queue ----------------------------------------------------------------------------------------------
    def submit(self, request: GenerationRequest, on_progress: Callable[[ProgressEvent], Any] | None = None,
               cancel: Any = None) -> Job:
        """Validate model names and queue ``request``. Raises ``InvalidRequest``/``ModelNotFound``/``QueueFull``."""
        if not isinstance(request, GenerationRequest):
            raise InvalidRequest("submit() takes a GenerationRequest.")
        self._resolve(request)
        _check_steps_after_strength(request)
        request = self._with_speedup_defaults(request)
        job = Job(self, request, on_progress, cancel)
        with self._cond:
            if self._closed and self._worker is not None:
                raise AtelierError("Atelier is shutting down; no new jobs are taken.")
            if len(self._queue) >= self.settings.queue_size:
                raise QueueFull(
                    f"The queue is full ({self.settings.queue_size} jobs waiting). Try again when some have finished."
                )
            self._queue.append(job)
            self._cond.notify_all()
        self.start()
        return job

    def run(self, request: GenerationRequest, on_progress: Callable[[ProgressEvent], Any] | None = None,
            cancel: Any = None) -> Result:
        """Submit and wait: for scripts, the benchmark and tests."""
        return self.submit(request, on_progress=on_progress, cancel=cancel).wait()

    def preload(self, name: str | None = None) -> Job | None:
        """Queue a load of checkpoint ``name`` (the default one when None), set up as a txt2img job would find it
        (device, memory rung, ``--fast``), without generating: a start-up with ``--checkpoint`` loads while the
        server starts, and the first request then waits only for what is left of the load (it queues
        behind this job). Returns the job, or None when there is nothing to load or the manager is closed."""
        try:
            info = self._find_checkpoint(name)
        except ModelNotFound as exc:
            log.warning("Not loading a checkpoint at start: %s", exc)
            return None
        self._hash_soon(info)  # a new file's hash (seconds for GBs) is read meanwhile, on the other core
        job = Job(self, GenerationRequest(checkpoint=info.name), preload=True)
        with self._cond:
            if self._closed and self._worker is not None:
                return None
            self._queue.append(job)
            self._cond.notify_all()
        self.start()
        return job

    def current_job(self) -> Job | None:
        with self._cond:
            return self._current

    def queue_length(self) -> int:
        """Jobs waiting (not counting the running one)."""
        with self._cond:
            return len(self._queue)

    def interrupt(self) -> None:
        """Stop the running job (REST ``/sdapi/v1/interrupt``); waiting jobs still run."""
        job = self.current_job()
        if job is not None:
            job.cancel()

    def _position(self, job: Job) -> int:
        """Jobs ahead of ``job``, the running one included; start-up loads are not counted (a request waiting for
        one shows "Loading ..." instead of a queue position)."""
        with self._cond:
            if job is self._current or job.state != "queued":
                return 0
            try:
                index = self._queue.index(job)
            except ValueError:
                return 0
            ahead = [other for other in list(self._queue)[:index] if not other.preload]
            running = self._current is not None and not self._current.preload
            return len(ahead) + int(running)

    def _preloading(self) -> str | None:
        """The checkpoint a start-up load is loading now (or is about to), else None."""
        with self._cond:
            for job in (self._current, *self._queue):
                if job is not None and job.preload:
                    return job.request.checkpoint
        return None

    def _drop_waiting(self, job: Job) -> None:
        with self._cond:
            try:
                self._queue.remove(job)
            except ValueError:
                return
        job._finish(error=Cancelled("Cancelled before it started."))

    def _worker_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._queue.popleft()
                self._current = job
                job.state = "running"
                job.started = time.time()
            try:
                job._finish(result=self._load(job) if job.preload else self._generate(job))
            except AtelierError as exc:
                job._finish(error=exc)
            except Exception as exc:  # a bug: say so in words, keep the worker alive
                log.exception("job %s failed", job.id)
                err = AtelierError(f"Generation failed unexpectedly ({type(exc).__name__}: {exc}). See the log.")
                err.__cause__ = exc
                job._finish(error=err)
            finally:
                with self._cond:
                    self._current = None
                    self._cond.notify_all()

    # --- one job, top-down ----------------------------------------------------------------------------------
    def _generate(self, job: Job) -> Result:
        """Resolve → check out → choose rung → per batch: generate → save → result."""
        request = job.request
        # 1. Resolve names again: a model may have gone since submit.
        targets = self._resolve(request)
        seed = request.resolved_seed()
        self._hash_soon(targets.checkpoint)  # for the infotext: read while the model loads and the image runs
        result = Result(request=request, checkpoint=targets.checkpoint.name)
        job._emit(ProgressEvent(job_id=job.id, state="loading", message=f"Loading {targets.checkpoint.name}"))
        # 2. Check out the checkpoint (RAM/VRAM cache; a miss loads it) with the VAE in place.
        with self.cache.checkout(targets.checkpoint, targets.vae) as entry:
            # 3. Choose the memory rung for this request's shape.
            rung, reason = self._choose_rung(entry, request)
            result.mode = rung
            if reason:
                result.notes.append(reason)
            batches = 1 if request.task == "upscale" else request.batch_count
            per_batch = 1 if request.task == "upscale" else request.batch_size
            # 4. Batches: each one generated and saved before the next, so a cancel keeps finished images.
            for batch_index in range(batches):
                seeds = [seed + batch_index * per_batch + i for i in range(per_batch)]
                try:
                    output, rung = self._generate_batch(job, entry, rung, seeds, batch_index, batches, result)
                except Cancelled:
                    if not result.images:
                        raise
                    result.cancelled = True
                    result.notes.append(f"Stopped after {len(result.images)} image(s).")
                    break
                result.mode = rung
                self._save(job, entry, targets, output, seeds, rung, result)
                if job.cancel_requested and batch_index + 1 < batches:
                    result.cancelled = True
                    break
        self.last_rung = result.mode
        result.checkpoint_hash = self._short_hash(targets.checkpoint)
        return result

    def _load(self, job: Job) -> Result:
        """A preload job: check the checkpoint out and prepare its txt2img pipeline; no image."""
        targets = self._resolve(job.request)
        name = targets.checkpoint.name
        result = Result(request=job.request, checkpoint=name)
        job._emit(ProgressEvent(job_id=job.id, state="loading", message=f"Loading {name}"))
        started = time.perf_counter()
        try:
            with self.cache.checkout(targets.checkpoint, targets.vae) as entry:
                result.mode, _reason = self._choose_rung(entry, job.request)
                self._announce_fast(job, entry)
                self._prepare_pipeline(entry, job.request.task, result.mode)
        except Exception as exc:  # nobody waits on this job: say it in the log; a request will retry the load
            log.warning("Could not load %s at start (%s); it will be tried again with the first image.", name, exc)
            raise
        finally:
            result.notes.extend(self._fast_notes)
            self._fast_notes.clear()
        log.info("Loaded %s in %.1f s (%s mode).", name, time.perf_counter() - started, result.mode)
        return result

    def _generate_batch(self, job: Job, entry: CacheEntry, rung: str, seeds: list[int], batch_index: int,
                        batches: int, result: Result) -> tuple[BatchOutput, str]:
        """Run one batch; on out-of-memory free memory, step one rung down and retry with fresh generators."""
        while True:
            devices.reset_peak(self.choice.device)
            try:
                self._announce_fast(job, entry)
                pipe = self._prepare_pipeline(entry, job.request.task, rung)
                result.notes.extend(note for note in self._fast_notes if note not in result.notes)
                self._fast_notes.clear()
                output = self._run_pipeline(job, entry, pipe, seeds, batch_index, batches)
                self.ladder.record(rung, self._shape(entry, job.request), devices.peak_memory(self.choice.device))
                return output, rung
            except Exception as exc:
                if not devices.is_oom(exc):
                    raise
                devices.free_memory(self.choice.device)
                lower = self.ladder.below(rung)
                if lower is None:
                    raise OutOfMemoryEverywhere.on(self.choice.device.type, rung) from exc
                note = f"Out of memory in {rung} mode; retried in {lower} mode."
                log.warning(note)
                result.notes.append(note)
                rung = lower

    def _run_pipeline(self, job: Job, entry: CacheEntry, pipe: Any, seeds: list[int], batch_index: int,
                      batches: int) -> BatchOutput:
        request = job.request
        spec = family_spec(entry.loaded)
        if request.task == "upscale":
            return self._run_upscale(job, entry, pipe, seeds[0])

        pipe.scheduler = self._fresh_scheduler(request, entry.loaded.scheduler_config, seeds[0])
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        reporter = StepReporter(job, batch_index, batches, request.steps, (request.width, request.height),
                                getattr(spec, "latent_rgb_factors", None), getattr(spec, "latent_rgb_bias", None),
                                self.settings.step_delay_s)
        reporter.check_cancel()
        kwargs = self._task_arguments(pipe, request, generators, reporter)
        output = BatchOutput(images=[])
        memory.return_freed_memory()  # what the previous batch or job left in the allocator
        latents = self._call(pipe, kwargs, request, output.notes)
        if bool(torch.isnan(latents).any()):
            latents = self._retry_nan_unet(pipe, kwargs, request, output.notes, seeds)
        memory.return_freed_memory()  # the denoising loop's freed activations, before the decoder's peak
        output.images = self._decode(pipe, latents, output.notes, upcast=bool(getattr(spec, "is_xl", False)))
        return output

    def _fresh_scheduler(self, request: GenerationRequest, pristine: dict[str, Any], seed: int) -> Any:
        """A new scheduler for this request (they keep state), copied from a per-config template.

        Building some schedulers is slow (KDPM2 maps all 1,000 training sigmas in Python: ~1 s on a CPU core), so the
        first build per (sampler, schedule, config) is kept and each request gets a deep copy of it.
        """
        key = (request.sampler, request.scheduler, json.dumps(pristine, sort_keys=True, default=str))
        template = self._scheduler_templates.get(key)
        if template is None:
            template = make_scheduler(request.sampler, request.scheduler, pristine, seed)
            self._scheduler_templates[key] = template
            while len(self._scheduler_templates) > 32:
                self._scheduler_templates.pop(next(iter(self._scheduler_templates)))
        scheduler = copy.deepcopy(template)
        if hasattr(scheduler, "noise_sampler_seed"):  # DPM++ SDE: its Brownian noise follows the request's seed
            scheduler.noise_sampler_seed = seed
            scheduler.noise_sampler = None
        return scheduler

    def _call(self, pipe: Any, kwargs: dict[str, Any], request: GenerationRequest, notes: list[str]) -> Any:
        """One diffusers call (latents out), with the request's speed-ups; hooks freed even after an error."""
        from .speedups import applied_speedups

        try:
            with applied_speedups(pipe, request) as speed_notes:
                latents = pipe(**kwargs).images
            for note in speed_notes:
                if note not in notes:
                    notes.append(note)
            return latents
        finally:
            pipe.maybe_free_model_hooks()

    def _retry_nan_unet(self, pipe: Any, kwargs: dict[str, Any], request: GenerationRequest, notes: list[str],
                        seeds: list[int]) -> Any:
        """NaN from the UNet: one retry in fp32 (when running lower), then a clear error."""
        unet_dtype = pipe.unet.dtype
        if unet_dtype != torch.float32:
            kwargs["generator"] = [torch.Generator("cpu").manual_seed(s) for s in seeds]
            pipe.to(dtype=torch.float32)
            try:
                latents = self._call(pipe, kwargs, request, notes)
            finally:
                pipe.to(dtype=unet_dtype)
            if not bool(torch.isnan(latents).any()):
                notes.append("NaN guard: UNet ran in fp32")
                return latents
        raise AtelierError(
            "The model produced NaN values (a black image) even in full precision. The checkpoint may be broken or "
            "need a different VAE/precision; try --precision fp32 or another checkpoint.",
            field="checkpoint",
        )

    def _task_arguments(self, pipe: Any, request: GenerationRequest, generators: list[Any],
                        reporter: StepReporter) -> dict[str, Any]:
        """The diffusers call arguments for txt2img / img2img (inpainting models get a full white mask)."""
        kwargs: dict[str, Any] = dict(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt or None,
            num_inference_steps=request.steps,
            guidance_scale=request.cfg_scale,
            num_images_per_prompt=len(generators),
            generator=generators,
            output_type="latent",
            callback_on_step_end=reporter,
        )
        inpaint = "Inpaint" in type(pipe).__name__
        if request.task == "img2img":
            init = _resize_init(request.init_image, request.width, request.height, request.resize_mode)
            kwargs.update(image=init, strength=request.denoising_strength)
        elif inpaint:
            from PIL import Image

            init = Image.new("RGB", (request.width, request.height), (127, 127, 127))
            kwargs.update(image=init, strength=1.0)
        else:
            kwargs.update(width=request.width, height=request.height)
        if inpaint:
            from PIL import Image

            kwargs.update(mask_image=Image.new("L", kwargs["image"].size, 255), width=request.width,
                          height=request.height)
        return kwargs

    def _decode(self, pipe: Any, latents: Any, notes: list[str], upcast: bool = False) -> list[Any]:
        """VAE decode with the NaN guard: NaN from a half-precision decode → decode again in fp32, noted.

        ``upcast``: SDXL's VAE overflows in fp16 (``force_upcast`` in its config, which diffusers' SDXL pipelines
        honour), so it decodes in fp32 from the start rather than failing once per image.
        """
        vae = pipe.vae
        if upcast and vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
            vae.to(dtype=torch.float32)
            try:
                images = _vae_decode(pipe, latents.float())
            finally:
                vae.to(dtype=torch.float16)
        else:
            images = _vae_decode(pipe, latents)
        if bool(torch.isnan(images).any()):
            dtype = vae.dtype
            vae.to(dtype=torch.float32)
            try:
                images = _vae_decode(pipe, latents.float())
            finally:
                vae.to(dtype=dtype)
            if bool(torch.isnan(images).any()):
                raise AtelierError(
                    "The VAE decoded to NaN (a black image) even in fp32. Choose another VAE in the VAE menu.",
                    field="vae",
                )
            notes.append("NaN guard: VAE decoded in fp32")
        return pipe.image_processor.postprocess(images.float(), output_type="pil")

    def _run_upscale(self, job: Job, entry: CacheEntry, pipe: Any, seed: int) -> BatchOutput:
        """Tiled x4 upscale of the request's image; progress counts steps over all tiles."""
        request = job.request
        image = request.image
        tiles = count_tiles(image, self.upscale_tile, self.upscale_overlap)
        reporter = StepReporter(job, 0, 1, request.steps * tiles, (image.width * 4, image.height * 4),
                                False, None, self.settings.step_delay_s)
        reporter.check_cancel()
        pipe.scheduler = self._fresh_scheduler(request, entry.loaded.scheduler_config, seed)
        notes: list[str] = []

        def run_tile(tile_image: Any, index: int) -> Any:
            reporter.offset = index * request.steps
            generator = torch.Generator("cpu").manual_seed(seed)
            try:
                out = pipe(
                    prompt=request.prompt, negative_prompt=request.negative_prompt or None, image=tile_image,
                    num_inference_steps=request.steps, guidance_scale=request.cfg_scale,
                    noise_level=request.noise_level, generator=generator, output_type="np",
                    callback=reporter.legacy, callback_steps=1,
                )
            finally:
                pipe.maybe_free_model_hooks()
            array = out.images[0]
            if bool(_np_isnan(array)):
                raise AtelierError("The upscaler produced NaN values; try --precision fp32.", field="upscaler")
            return array

        upscaled = upscale_tiled(run_tile, image, self.upscale_tile, self.upscale_overlap)
        if tiles > 1:
            notes.append(f"Tiles: {tiles}")
        return BatchOutput(images=[upscaled], notes=notes)

    # --- saving ---------------------------------------------------------------------------------------------
    def _save(self, job: Job, entry: CacheEntry, targets: Targets, output: BatchOutput, seeds: list[int],
              rung: str, result: Result) -> None:
        """Write each image of the batch with its infotext; add them to the result."""
        request = job.request
        job._emit(replace(job._progress, state="saving", message="Saving"))
        folder = outputs.output_folder(self.settings.outputs_dir, request.task)
        for image, seed in zip(output.images, seeds, strict=True):
            infotext = self._infotext(request, entry, targets, seed, image, output.notes)
            path = outputs.write_png_with_parameters(image, infotext, folder, seed)
            result.images.append(image)
            result.seeds.append(seed)
            result.infotexts.append(infotext)
            result.paths.append(path)
        for note in output.notes:
            if note not in result.notes:
                result.notes.append(note)

    def _infotext(self, request: GenerationRequest, entry: CacheEntry, targets: Targets, seed: int, image: Any,
                  notes: list[str]) -> str:
        extra = {}
        for note in notes:
            key, sep, value = note.partition(": ")
            if sep:
                extra[key] = value
        vae = targets.vae
        if request.task == "upscale":
            params = generation_params(
                steps=request.steps, sampler=request.sampler, schedule=request.scheduler, cfg_scale=request.cfg_scale,
                seed=seed, width=image.width, height=image.height, model=targets.checkpoint.name,
                model_hash=self._short_hash(targets.checkpoint), noise_level=request.noise_level, extra=extra,
            )
        else:
            params = generation_params(
                steps=request.steps, sampler=request.sampler, schedule=request.scheduler, cfg_scale=request.cfg_scale,
                seed=seed, width=request.width, height=request.height,
                model_hash=self._short_hash(targets.checkpoint), model=targets.checkpoint.name,
                vae=vae.name if vae is not None else None, vae_hash=self._short_hash(vae) if vae is not None else None,
                denoising_strength=request.denoising_strength if request.task == "img2img" else None, extra=extra,
            )
        return build_infotext(request.prompt, request.negative_prompt, params)

    # --- memory ladder --------------------------------------------------------------------------------------
    def _shape(self, entry: CacheEntry, request: GenerationRequest) -> Shape:
        sizes = entry.module_bytes()
        width, height = request.width, request.height
        if request.task == "upscale" and request.image is not None:
            side = min(self.upscale_tile, max(request.image.size))
            width = height = side * 4
        return Shape(width=width, height=height, batch_size=request.batch_size,
                     dtype_bytes=torch.finfo(self.choice.dtype).bits // 8, cfg=request.cfg_scale > 1,
                     weights=sum(sizes.values()), largest_module=max(sizes.values(), default=0))

    def _choose_rung(self, entry: CacheEntry, request: GenerationRequest) -> tuple[str, str]:
        free, _total = devices.memory_info(self.choice.device)
        mode = self.settings.memory_mode if self.settings.memory_mode in MEMORY_MODES else "auto"
        rung, reason = self.ladder.choose(mode, self._shape(entry, request), free)
        if len(self.ladder.rungs) == 1 and self.choice.device.type == "cpu":
            reason = ""  # CPU: the ladder is just "cpu", nothing to explain
        return rung, reason

    def _prepare_pipeline(self, entry: CacheEntry, task: str, rung: str) -> Any:
        """The task pipeline over the entry's modules, set up for ``rung`` (undoing the previous rung first)."""
        pipe = entry.pipeline_for(task)
        if entry.applied is not None and entry.applied != (pipe, rung):
            old_pipe, old_rung = entry.applied
            self._sync_fast(entry, None)  # compiled modules never go into offload hooks
            if self.ladder.reset(old_pipe, old_rung, self.choice):
                entry.drop_pipelines()
                pipe = entry.pipeline_for(task)
            entry.applied = None
        if entry.applied is None:
            self.ladder.apply(pipe, rung, self.choice)
            entry.applied = (pipe, rung)
            entry.location = str(self.choice.device) if rung in ("full", "sliced") else "cpu"
        on_device = rung in ("full", "sliced") or self.choice.device.type == "cpu"  # not under offload hooks
        self._sync_fast(entry, pipe if on_device else None)
        return pipe

    def _announce_fast(self, job: Job, entry: CacheEntry) -> None:
        """Tell the job's watchers before ``--fast`` is switched on: converting or compiling can take minutes."""
        from . import fast

        pipe = entry.pipelines.get(job.request.task)
        if self.settings.fast and (pipe is None or not fast.is_fast(pipe)):
            job._emit(ProgressEvent(
                job_id=job.id, state="loading",
                message="Preparing the fast path (--fast): the first time for a checkpoint it converts or compiles "
                        "the UNet and the VAE decoder, which takes minutes; later starts reuse the cached result."))

    def _sync_fast(self, entry: CacheEntry, pipe: Any | None) -> None:
        """``--fast`` (pipelines/fast.py) on ``pipe`` when the setting asks for it; off on every other pipeline.

        The notes of a fresh switch-on (what was converted, the memory it costs, why it fell back) are kept in
        ``_fast_notes`` for the job's result, so the UI and the API show them, not only the log.
        """
        from . import fast

        want = pipe if self.settings.fast else None
        for other in list(entry.pipelines.values()):
            if other is not want and fast.is_fast(other):
                fast.disable_fast(other)
        if want is not None and not fast.is_fast(want):
            self._fast_notes.extend(fast.enable_fast(want, self.choice.device, self.settings.cache_dir))

    def _reset_entry(self, entry: CacheEntry) -> None:
        """Undo the memory ladder's set-up on ``entry`` before the cache moves or drops it."""
        self._sync_fast(entry, None)
        if entry.applied is None:
            return
        pipe, rung = entry.applied
        entry.applied = None
        if self.ladder.reset(pipe, rung, self.choice):
            entry.drop_pipelines()

    # --- models ---------------------------------------------------------------------------------------------
    def _with_speedup_defaults(self, request: GenerationRequest) -> GenerationRequest:
        """The request with the Settings' speed-up switches where it left them unset (None).

        Resolved at submit time, so a job runs with the switches that were on when it was queued.
        """
        defaults = {"deep_cache": self.settings.deep_cache, "deep_cache_interval": self.settings.deep_cache_interval,
                    "token_merging": self.settings.token_merging}
        unset = {name: value for name, value in defaults.items() if getattr(request, name) is None}
        return request.model_copy(update=unset) if unset else request

    def _resolve(self, request: GenerationRequest) -> Targets:
        if request.task == "upscale":
            return Targets(self._find_upscaler(request.upscaler))
        checkpoint = self._find_checkpoint(request.checkpoint)
        vae_name = request.vae if request.vae is not None else self.settings.vae
        return Targets(checkpoint, self._find_vae(vae_name))

    def _find_checkpoint(self, name: str | None) -> Any:
        if not name:
            info = self.default_checkpoint()
            if info is None:
                message = getattr(self.registry, "empty_message", None)
                raise ModelNotFound(
                    message() if callable(message) else
                    "No checkpoint is installed. Put a .safetensors checkpoint in models/checkpoints/ (then press "
                    "refresh), or start Atelier with --demo to try it with tiny random-weight models.",
                    field="checkpoint",
                )
            return info
        return _with_field(lambda: self.registry.find_checkpoint(name), "checkpoint")

    def _find_vae(self, name: str | None) -> Any:
        if not name or name.strip().lower() in ("automatic", "none", "auto"):
            return None
        return _with_field(lambda: self.registry.find_vae(name), "vae")

    def _find_upscaler(self, name: str | None) -> Any:
        if name:
            return _with_field(lambda: self.registry.find_upscaler(name), "upscaler")
        installed = self.upscalers()
        if not installed:
            raise no_upscaler_error()
        return installed[0]

    def _short_hash(self, info: Any) -> str:
        """A1111's short hash of ``info``'s file ("" when it has none); waits for a read ``_hash_soon`` started."""
        if info is None:
            return ""
        with self._hash_lock:
            pending = self._hashing.get(str(getattr(info, "path", "")))
        if pending is not None:
            return pending.result()
        try:
            return self.registry.short_hash(info) or ""
        except Exception:  # a hash is metadata; an unreadable file shows up when it is loaded
            return ""

    def _hash_soon(self, info: Any) -> None:
        """Start reading ``info``'s hash in a background thread when the registry does not know it yet.

        The first use of a file hashes all of it (~2.5 s for 4 GB here); in the job's own thread that would delay
        the image. hashlib releases the GIL, so it overlaps with the load and the denoising."""
        known = getattr(self.registry, "cached_short_hash", None)
        key = str(getattr(info, "path", ""))
        if info is None or known is None or not key:
            return
        try:
            if known(info) is not None:
                return
        except Exception:  # an unreadable file: _short_hash says "" later
            return
        with self._hash_lock:
            if key in self._hashing:
                return
            future: concurrent.futures.Future[str] = concurrent.futures.Future()
            self._hashing[key] = future

        def read() -> None:
            try:
                future.set_result(self.registry.short_hash(info) or "")
            except Exception:  # metadata only: never fail an image over it
                future.set_result("")
            finally:
                with self._hash_lock:
                    self._hashing.pop(key, None)

        threading.Thread(target=read, name="atelier-hash", daemon=True).start()

    def refresh_models(self) -> None:
        """Rescan the models folders."""
        self.registry.refresh()

    def checkpoints(self) -> list[Any]:
        return list(self.registry.checkpoints())

    def vaes(self) -> list[Any]:
        return list(self.registry.vaes())

    def upscalers(self) -> list[Any]:
        return list(self.registry.upscalers())

    def default_checkpoint(self) -> Any | None:
        """The checkpoint used when a request names none: the setting, else the first installed one."""
        if self.settings.checkpoint:
            try:
                return self.registry.find_checkpoint(self.settings.checkpoint)
            except ModelNotFound:
                log.warning("default checkpoint %r is not installed; using the first one", self.settings.checkpoint)
        installed = self.checkpoints()
        # A file the registry already knows cannot load (refused pickle, cut-short download) is never the default.
        usable = [info for info in installed if not getattr(info, "problem", None)]
        return (usable or installed)[0] if installed else None

    def set_default_checkpoint(self, name: str) -> Any:
        """Make ``name`` the default checkpoint (raises ``ModelNotFound``). Loading happens with the next job."""
        info = _with_field(lambda: self.registry.find_checkpoint(name), "checkpoint")
        self.settings.checkpoint = info.name
        return info

    def set_default_vae(self, name: str | None) -> None:
        """Make ``name`` ("Automatic" or a models/vae file) the default VAE (raises ``ModelNotFound``)."""
        info = self._find_vae(name)
        self.settings.vae = info.name if info is not None else "Automatic"

    def count_tokens(self, text: str) -> int:
        """CLIP tokens in ``text`` (for the UI's n/75 counter)."""
        from .tokenizers import count_tokens

        return count_tokens(text or "")

    # --- status and settings --------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """What the status bar and ``/sdapi/v1/options`` show."""
        used = devices.memory_used(self.choice.device)
        _free, total = devices.memory_info(self.choice.device)
        current, upscaler = self.cache.current("checkpoint"), self.cache.current("upscaler")
        return {
            "device": str(self.choice.device),
            "dtype": self.choice.dtype_name,
            "memory_mode": self.settings.memory_mode,
            "mode_in_use": self.last_rung,
            "vram_used": used,
            "vram_total": total,
            "loaded_checkpoint": current.name if current is not None else None,
            "loaded_upscaler": upscaler.name if upscaler is not None else None,
            "loaded_checkpoints": self.cache.names(),
            "demo": bool(self.settings.demo),
            "queue": self.queue_length(),
            "running": self.current_job() is not None,
            "xformers": self.choice.xformers,
            "xformers_available": self.choice.device.type == "cuda" and devices.xformers_installed(),
        }

    def apply_settings(self, changes: dict[str, Any]) -> list[str]:
        """Apply live changes (memory mode, cache slots, xformers, default checkpoint/VAE); returns names changed.

        Device and precision changes are saved but take effect at the next start (models would need reloading).
        """
        changes = dict(changes)
        if "memory_mode" in changes and changes["memory_mode"] not in MEMORY_MODES:
            raise InvalidRequest(
                f"memory_mode must be one of {', '.join(MEMORY_MODES)} (got {changes['memory_mode']!r}).",
                field="memory_mode",
            )
        if changes.get("checkpoint"):
            name = changes["checkpoint"]
            changes["checkpoint"] = _with_field(lambda: self.registry.find_checkpoint(name), "checkpoint").name
        if "vae" in changes:
            vae = self._find_vae(changes["vae"])
            changes["vae"] = vae.name if vae is not None else "Automatic"
        _check_speedup_settings(changes)
        changed = self.settings.update(changes, respect_cli=False)
        if "vram_slots" in changed or "ram_slots" in changed:
            self.cache.resize(self.settings.vram_slots, self.settings.ram_slots)
        if "xformers" in changed:
            self.choice = devices.DeviceChoice(
                self.choice.device, self.choice.dtype,
                bool(self.settings.xformers and self.choice.device.type == "cuda" and devices.xformers_installed()),
            )
            self.cache.choice = self.choice
            for entry in list(self.cache.entries.values()):
                if not entry.pins:
                    self._reset_entry(entry)
        return changed


# --- helpers --------------------------------------------------------------------------------------------------


def _default_loader() -> Callable[..., Any]:
    def load(info: Any, dtype: Any) -> Any:
        from .loaders import load_components

        return load_components(info, dtype)

    return load


def _default_vae_loader() -> Callable[..., Any]:
    def load(info: Any, dtype: Any, loaded: Any) -> Any:
        from .loaders import load_vae

        ckpt = loaded.info
        config_dir = ckpt.path if getattr(ckpt, "format", "") == "diffusers" else None
        return load_vae(info, dtype, family=loaded.family, config_dir=config_dir)

    return load


def _check_speedup_settings(changes: dict[str, Any]) -> None:
    """Settings changes to the speed-up switches go through the same range checks as a request's fields."""
    fields = {name: changes[name] for name in ("deep_cache", "deep_cache_interval", "token_merging") if name in changes}
    if fields:
        GenerationRequest.create(**fields)  # raises InvalidRequest naming the field


def _with_field(find: Callable[[], Any], field_name: str) -> Any:
    try:
        return find()
    except ModelNotFound as exc:
        if exc.field is None:
            exc.field = field_name
        raise


def _check_steps_after_strength(request: GenerationRequest) -> None:
    """img2img runs ``int(steps * strength)`` steps; diffusers fails on zero, so say it in words."""
    if request.task == "img2img" and int(request.steps * request.denoising_strength) < 1:
        need = 1.0 / max(request.steps, 1)
        raise InvalidRequest(
            f"With {request.steps} steps a denoising strength of {request.denoising_strength:g} runs no step at all; "
            f"use a strength of at least {need:.2f} or more steps.",
            field="denoising_strength",
        )


def _resize_init(image: Any, width: int, height: int, mode: str) -> Any:
    """A1111's resize modes for the init image."""
    from PIL import Image, ImageOps

    if image.size == (width, height):
        return image
    if mode == "crop and resize":
        return ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)
    if mode == "resize and fill":
        scale = min(width / image.width, height / image.height)
        inner = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.LANCZOS)
        canvas = image.resize((width, height), Image.Resampling.LANCZOS)  # stretched edges fill the margins
        canvas.paste(inner, ((width - inner.width) // 2, (height - inner.height) // 2))
        return canvas
    return image.resize((width, height), Image.Resampling.LANCZOS)


def _vae_decode(pipe: Any, latents: Any) -> Any:
    """Latents → image tensor in [-1, 1], as the pipelines do (SDXL's latents mean/std honoured)."""
    vae = pipe.vae
    config = vae.config
    latents = latents.to(device=pipe._execution_device, dtype=vae.dtype)
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        mean_t = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
        std_t = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
        latents = latents * std_t / config.scaling_factor + mean_t
    else:
        latents = latents / config.scaling_factor
    with torch.no_grad():
        return vae.decode(latents, return_dict=False)[0]


def _np_isnan(array: Any) -> bool:
    import numpy as np

    return bool(np.isnan(array).any())
