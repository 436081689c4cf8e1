"""The pipeline manager: the engine's one front face (``interface.Engine``), called by ui/, api/, app.py and bench/.

It owns the rooms and runs one job at a time through them::

    submit → jobs.JobQueue (FIFO, one worker) → _generate:
        resolve names (registry) → cache.checkout(checkpoint, vae) → placement.choose (memory rung)
        for each batch: placement.prepare → tasks.run_task (OOM → next rung, retry) → _save (infotext, PNG)
    (an upscale by a pixel upscaler needs no checkpoint: _upscale_pixels → tasks.run_task → _save)

Each room has one reason to change: ``jobs.py`` the queue, ``progress.py`` step reports, ``placement.py`` the
memory ladder and ``--fast``, ``tasks/`` what each task computes, ``cache.py`` what is loaded, ``registry.py`` what
is installed and its hashes, ``upscalers.py`` the pixel upscalers' models and runs, ``infotext.py`` and
``outputs.py`` what is written.

Cancel is cooperative: the step hook raises ``Cancelled`` (never ``pipe._interrupt``, which would still decode and
save a half-done image); batches finished before the stop are already on disk and kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import devices, networks, outputs
from .cache import CacheEntry, CheckpointCache, family_spec
from .catalog import ModelCatalog, Targets
from .conditioning import JobPrompts, job_prompts
from .depth import DepthEstimator, DepthLibrary
from .embeddings import EmbeddingLibrary, EmbeddingReport
from .errors import Cancelled, InvalidRequest, ModelNotFound, OutOfMemoryEverywhere, Skipped
from .infotext import request_infotext
from .interface import EngineStatus
from .jobs import Job, JobKind, JobQueue
from .memory import Ladder, Rung
from .placement import Placement
from .presets import PresetChoice, suggest_preset
from .progress import ProgressEvent, ProgressState
from .registry import FAMILY_GROUP, UPSCALER_SD_X4
from .request import LATENT_UPSCALE_MODES, GenerationRequest, Result
from .samplers import SchedulerTemplates
from .settings import MAX_THREADS, MEMORY_MODES, Settings
from .taesd import TinyDecoders
from .tasks import BatchOutput, TaskRun, run_task
from .upscale import DEFAULT_OVERLAP, DEFAULT_TILE
from .upscalers import PixelUpscaler, UpscalerLibrary

log = logging.getLogger(__name__)

__all__ = ["Job", "PipelineManager"]

TEXT_WIDTHS = {"sd1": (768,), "sd2": (1024,), "sdxl": (768, 1280)}  # text encoder widths per model group
PROMPT_TASKS = ("txt2img", "img2img")  # tasks that read A1111's prompt language (the x4 upscaler takes plain text)


class PipelineManager:
    """Owns the device, the checkpoint cache, the memory ladder and the one job queue.

    ``loader(info, dtype)`` (default ``loaders.load_components``), ``vae_loader(info, dtype, loaded)`` and
    ``ladder`` are injectable so that tests can run on tiny in-memory models and fake the GPU rungs on a CPU.
    """

    def __init__(self, settings: Settings, registry: Any, loader: Callable[..., Any] | None = None,
                 vae_loader: Callable[..., Any] | None = None, ladder: Ladder | None = None,
                 device_choice: devices.DeviceChoice | None = None):
        self.settings = settings
        self.catalog = ModelCatalog(registry, settings)
        choice = device_choice or devices.choose(settings.device, settings.precision, settings.xformers)
        self.placement = Placement(settings, choice, ladder)
        self.cache = CheckpointCache(
            loader or _default_loader, choice, settings.vram_slots, settings.ram_slots,
            vae_loader=vae_loader or _default_vae_loader, keeper=self.placement,
        )
        self.schedulers = SchedulerTemplates()
        self.embedding_library = EmbeddingLibrary()
        self.upscale_tile = DEFAULT_TILE
        self.upscale_overlap = DEFAULT_OVERLAP
        self.upscalers_library = UpscalerLibrary(lambda: self.placement.choice)
        self.depth_library = DepthLibrary(lambda: self.placement.choice)
        self.tiny_decoders = TinyDecoders()  # TAESD (models/VAE-approx): previews, and the opt-in fast decode
        self.last_rung: str | None = None
        self.threads_applied: int | None = None  # the Settings' ``threads`` last given to torch (None: untouched)
        # where finished pictures go: the outputs folder here; a pool replica keeps them for the front process
        self.image_writer: Callable[[Any, str, str, int], Path | None] = self._write_image
        self.jobs = JobQueue(self._run_job, lambda: self.settings.queue_size)

    @property
    def registry(self) -> Any:
        """The installed models (``ModelRegistry``)."""
        return self.catalog.registry

    @property
    def choice(self) -> devices.DeviceChoice:
        """Where and in which precision models run."""
        return self.placement.choice

    # --- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        self.jobs.start()

    def close(self, timeout: float = 30.0) -> None:
        """Cancel waiting jobs, stop the running one, and end the worker."""
        self.jobs.close(timeout)

    # --- jobs -----------------------------------------------------------------------------------------------
    def submit(self, request: GenerationRequest, on_progress: Callable[[ProgressEvent], Any] | None = None) -> Job:
        """Check model names and queue ``request``. Raises ``InvalidRequest``/``ModelNotFound``/``QueueFull``."""
        return self.jobs.put(Job(self.jobs, self.checked_request(request), on_progress))

    def checked_request(self, request: GenerationRequest) -> GenerationRequest:
        """What ``submit`` queues: ``request`` with its model names, prompt syntax and LoRAs checked (422 now, not
        after the wait) and the Settings' speed-up switches filled in where it left them unset."""
        if not isinstance(request, GenerationRequest):
            raise InvalidRequest("submit() takes a GenerationRequest.")
        targets = self.catalog.resolve(request)
        self.catalog.check_runs(targets, request)  # a depth checkpoint asked to inpaint: 422 now
        if request.task in PROMPT_TASKS:
            prompts = job_prompts(request, self.settings, self.catalog.styles(), self.registry)
            networks.check_family(prompts.loras, targets.checkpoint.family)
        return self._with_speedup_defaults(request)

    def run(self, request: GenerationRequest, on_progress: Callable[[ProgressEvent], Any] | None = None) -> Result:
        """Submit and wait: for scripts, the benchmark and tests."""
        return self.submit(request, on_progress=on_progress).wait()

    def preload(self, name: str | None = None) -> Job | None:
        """Queue a load of checkpoint ``name`` (the default one when None), set up as a txt2img job would find it
        (device, memory rung, ``--fast``), without generating: a start-up with ``--checkpoint`` loads while the
        server starts, and the first request then waits only for what is left of the load (it queues
        behind this job). Returns the job, or None when there is nothing to load or the manager is closed."""
        try:
            info = self.catalog.checkpoint(name)
        except ModelNotFound as exc:
            log.warning("Not loading a checkpoint at start: %s", exc)
            return None
        self.registry.hash_soon(info)  # a new file's hash (seconds for GBs) is read meanwhile, on the other core
        if self.jobs.closed():
            return None
        return self.jobs.put(Job(self.jobs, GenerationRequest(checkpoint=info.name), kind=JobKind.PRELOAD))

    def current_job(self) -> Job | None:
        return self.jobs.current()

    def queue_length(self) -> int:
        """Jobs waiting (not counting the running one)."""
        return self.jobs.waiting()

    def interrupt(self) -> None:
        """Stop the running job (REST ``/sdapi/v1/interrupt``); waiting jobs still run."""
        job = self.current_job()
        if job is not None:
            job.cancel()

    def skip(self) -> None:
        """End the batch the running job is drawing and go on with its next one (REST ``/sdapi/v1/skip``)."""
        job = self.current_job()
        if job is not None:
            job.skip()

    def unload_checkpoint(self) -> None:
        """Give the memory back (REST ``/sdapi/v1/unload-checkpoint``: another program, an LLM, wants the VRAM): every
        loaded checkpoint leaves VRAM and RAM, with the external VAEs, the upscaler and the depth models; the next job
        loads what it needs again. Runs on the worker after the running job, ahead of the waiting ones; returns when
        it is done."""
        self.jobs.run_soon(self._unload).wait()

    def reload_checkpoint(self) -> None:
        """Load the default checkpoint again as a start-up load does (REST ``/sdapi/v1/reload-checkpoint``), behind the
        jobs already queued; returns when it is loaded (at once when it still is). Raises the load's error."""
        try:
            info = self.catalog.checkpoint(None)
        except ModelNotFound:
            return  # nothing installed: nothing to load
        job = self.preload(info.name)
        if job is not None:
            job.wait()

    def _unload(self) -> None:
        freed = self.cache.clear()
        self.upscalers_library.clear()
        self.depth_library.clear()
        devices.free_memory(self.choice.device)
        log.info("Unloaded %s.", ", ".join(freed) if freed else "nothing (no checkpoint was loaded)")

    def _run_job(self, job: Job) -> Result:
        self._apply_threads()
        return self._load(job) if job.preload else self._generate(job)

    def _apply_threads(self) -> None:
        """On the worker thread (torch's thread count is per thread): the Settings' ``threads``. Left alone while it
        is 0 and was never changed: torch's own default is the physical cores already."""
        wanted = int(self.settings.threads)
        if wanted != self.threads_applied and (wanted or self.threads_applied is not None):
            count = devices.set_threads(wanted)
            log.info("CPU threads: %d", count)
            self.threads_applied = wanted

    # --- one job, top-down ----------------------------------------------------------------------------------
    def _generate(self, job: Job) -> Result:
        """Resolve → check out → choose rung → per batch: generate → save → result."""
        request = job.request
        # 1. Resolve names again: a model may have gone since submit.
        targets = self.catalog.resolve(request)
        if request.task == "upscale" and getattr(targets.checkpoint, "family", None) != UPSCALER_SD_X4:
            return self._upscale_pixels(job, targets)
        self.catalog.check_runs(targets, request)
        upscaler = self.upscalers_library.bind(targets.upscaler) if targets.upscaler is not None else None
        depth = self.depth_library.bind(targets.depth) if targets.depth is not None else None
        seed = request.resolved_seed()
        self.registry.hash_soon(targets.checkpoint)  # for the infotext: read while the model loads and runs
        result = Result(request=request, checkpoint=targets.checkpoint.name)
        prompts = None
        if request.task in PROMPT_TASKS:  # styles, <lora:...> tags, embeddings: read once for every batch
            prompts = job_prompts(request, self.settings, self.catalog.styles(), self.registry,
                                  self.embedding_library)
        job.emit(ProgressEvent(job.id, ProgressState.LOADING, message=f"Loading {targets.checkpoint.name}"))
        # 2. Check out the checkpoint (RAM/VRAM cache; a miss loads it) with the VAE in place.
        with self.cache.checkout(targets.checkpoint, targets.vae) as entry:
            if prompts is not None:
                networks.check_family(prompts.loras, entry.family)
            # 3. Choose the memory rung for this request's shape.
            rung, reason = self.placement.choose(entry, request, self.upscale_tile)
            result.mode = rung
            if reason:
                result.notes.append(reason)
            # 4. Batches: each one generated and saved before the next, so a cancel keeps finished images.
            batches = request.batch_seeds(seed)
            job_cache: dict = {}  # the prompt encoding, shared by the batches
            skipped = 0
            for batch_index, seeds in enumerate(batches):
                job.clear_skip()  # as A1111: a Skip pressed while loading or between batches does not carry over
                try:
                    output, rung = self._run_batch(job, entry, rung, seeds, batch_index, len(batches), result,
                                                   prompts, job_cache, upscaler, depth)
                except Skipped:  # Skip: this batch's pictures are dropped, the next batch starts
                    skipped += 1
                    result.notes.append(f"Skipped batch {batch_index + 1} of {len(batches)}.")
                    continue
                except Cancelled:
                    if not result.images:
                        raise
                    result.cancelled = True
                    result.notes.append(f"Stopped after {len(result.images)} image(s).")
                    break
                result.mode = rung
                self._save(job, targets, output, seeds, result, prompts)
                if output.cancelled:  # Stop in a later pass: the earlier pass's pictures were kept
                    result.cancelled = True
                    result.notes.append("Stopped during the hires pass; the first pass's picture was kept.")
                    break
                if job.cancel_requested and batch_index + 1 < len(batches):
                    result.cancelled = True
                    break
            if skipped and not result.images:
                raise Cancelled(f"Skipped: no image was finished ({skipped} batch(es) skipped).")
        self.last_rung = result.mode
        result.checkpoint_hash = self._short_hash(targets.checkpoint)
        return result

    def _run_batch(self, job: Job, entry: CacheEntry, rung: Rung, seeds: list[int], batch_index: int,
                   batch_count: int, result: Result, prompts: JobPrompts | None = None,
                   job_cache: dict | None = None, upscaler: PixelUpscaler | None = None,
                   depth: DepthEstimator | None = None) -> tuple[BatchOutput, Rung]:
        """Run one batch; on out-of-memory free memory, step one rung down and retry with fresh generators."""
        prompt_fields = {} if prompts is None else dict(
            prompts=prompts.plan, encode_options=prompts.options, embeddings=prompts.embeddings,
            embedding_hash=self._embedding_hash, hires_prompts=prompts.hires_plan)
        while True:
            devices.reset_peak(self.choice.device)
            try:
                pipe = self._prepare(job, entry, rung, result, prompts, job.request.pipeline_task)

                def pipeline_for(task: str, rung: Rung = rung) -> Any:  # the hires pass's img2img, same rung
                    return self._prepare(job, entry, rung, result, prompts, task)

                output = run_task(TaskRun(
                    request=job.request, pipe=pipe, loaded=entry.loaded, seeds=seeds, sink=job,
                    schedulers=self.schedulers, batch_index=batch_index, batch_count=batch_count,
                    step_delay_s=self.settings.step_delay_s, tile=self.upscale_tile, overlap=self.upscale_overlap,
                    job_cache=job_cache if job_cache is not None else {}, upscaler=upscaler,
                    pipeline_for=pipeline_for, depth=depth, taesd=self._taesd(entry), **prompt_fields,
                ))
                self.placement.record_peak(rung, self.placement.shape(entry, job.request, self.upscale_tile))
                return output, rung
            except Exception as exc:
                if not devices.is_oom(exc):
                    raise
                devices.free_memory(self.choice.device)
                lower = self.placement.below(rung)
                if lower is None:
                    raise OutOfMemoryEverywhere.on(self.choice.device.type, rung) from exc
                note = f"Out of memory in {rung} mode; retried in {lower} mode."
                log.warning(note)
                result.notes.append(note)
                rung = lower

    def _taesd(self, entry: CacheEntry) -> Any:
        """The checkpoint's TAESD on the device, or None (none installed, or not an SD checkpoint)."""
        choice = self.choice
        return self.tiny_decoders.get(self.settings.models_dir, entry.family, choice.device, choice.dtype)

    def _prepare(self, job: Job, entry: CacheEntry, rung: Rung, result: Result,
                 prompts: JobPrompts | None = None, task: str | None = None) -> Any:
        """The pipeline of ``task`` (default: the request's) set up for ``rung`` with the request's LoRAs switched
        on (the others off); a fresh ``--fast`` switch-on is announced first (it can take minutes) and what it said
        goes into the result's notes. A request with LoRAs, seamless tiling, DeepCache or token merging runs
        without ``--fast``: they live in the torch modules, which a converted or compiled copy would bypass (and
        whose weights ``--fast`` drops on CPU; switching it off reads them back)."""
        loras = prompts.loras if prompts is not None else []
        request = job.request
        fast_allowed = not (loras or request.tiling or request.deep_cache or request.token_merging)
        task = task or job.request.task
        if self.placement.fast_pending(entry, task, fast_allowed):
            job.emit(ProgressEvent(
                job.id, ProgressState.LOADING,
                message="Preparing the fast path (--fast): the first time for a checkpoint it converts or compiles "
                        "the UNet and the VAE decoder, which takes minutes; later starts reuse the cached result."))
        try:
            pipe = self.placement.prepare(entry, task, rung, fast_allowed)
        finally:
            result.notes.extend(note for note in self.placement.take_notes() if note not in result.notes)
        if prompts is not None:
            networks.apply_loras(entry, pipe, loras)
            if loras and self.settings.fast and "--fast is off for requests with a LoRA." not in result.notes:
                result.notes.append("--fast is off for requests with a LoRA.")
        return pipe

    def _load(self, job: Job) -> Result:
        """A preload job: check the checkpoint out and prepare its txt2img pipeline; no image."""
        targets = self.catalog.resolve(job.request)
        name = targets.checkpoint.name
        result = Result(request=job.request, checkpoint=name)
        job.emit(ProgressEvent(job.id, ProgressState.LOADING, message=f"Loading {name}"))
        started = time.perf_counter()
        try:
            with self.cache.checkout(targets.checkpoint, targets.vae) as entry:
                result.mode, _reason = self.placement.choose(entry, job.request, self.upscale_tile)
                tasks = family_spec(entry.loaded).pipelines  # a depth checkpoint has no txt2img: its img2img then
                first = "txt2img" if "txt2img" in tasks else next(iter(tasks))
                self._prepare(job, entry, result.mode, result, task=first)
        except Exception as exc:  # nobody waits on this job: say it in the log; a request will retry the load
            log.warning("Could not load %s at start (%s); it will be tried again with the first image.", name, exc)
            raise
        log.info("Loaded %s in %.1f s (%s mode).", name, time.perf_counter() - started, result.mode)
        return result

    def _upscale_pixels(self, job: Job, targets: Targets) -> Result:
        """An upscale by a built-in or an upscaler model file: no checkpoint, no memory rung; one image, saved."""
        request = job.request
        result = Result(request=request, checkpoint=targets.checkpoint.name)
        job.emit(ProgressEvent(job.id, ProgressState.LOADING, message=f"Loading {targets.checkpoint.name}"))
        [seeds] = request.batch_seeds(request.resolved_seed())
        try:
            output = run_task(TaskRun(
                request=request, pipe=None, loaded=None, seeds=seeds, sink=job, schedulers=self.schedulers,
                step_delay_s=self.settings.step_delay_s, upscaler=self.upscalers_library.bind(targets.checkpoint),
            ), key="pixel-upscale")
        except Skipped:  # one picture: skipping it leaves nothing
            raise Cancelled("Skipped: the upscale was not finished.") from None
        self._save(job, targets, output, seeds, result)
        result.checkpoint_hash = self._short_hash(targets.checkpoint)
        return result

    def _save(self, job: Job, targets: Targets, output: BatchOutput, seeds: list[int], result: Result,
              prompts: JobPrompts | None = None) -> None:
        """Write each image of the batch with its infotext; add them to the result."""
        request = output.request or job.request
        postprocess = request.task == "upscale" and getattr(targets.checkpoint, "family", None) != UPSCALER_SD_X4
        job.emit(replace(job.latest, state=ProgressState.SAVING, message=""))
        vae = targets.vae
        notes = [*(prompts.notes if prompts is not None else []), *output.notes]
        texts = {} if prompts is None else dict(prompt=prompts.plan.infotext_prompt,
                                                negative_prompt=prompts.plan.infotext_negative)
        for image, seed in zip(output.images, seeds, strict=True):
            infotext = request_infotext(
                request, seed=seed, size=image.size, model=targets.checkpoint.name,
                model_hash=self._short_hash(targets.checkpoint), vae=vae.name if vae is not None else None,
                vae_hash=self._short_hash(vae) if vae is not None else None, notes=notes, postprocess=postprocess,
                **texts,
            )
            path = self.image_writer(image, infotext, request.task, seed)
            result.images.append(image)
            result.seeds.append(seed)
            result.infotexts.append(infotext)
            result.paths.append(path)
        for note in notes:
            said = result.warnings if note.warning else result.notes
            if note.text not in said:
                said.append(note.text)

    def _write_image(self, image: Any, infotext: str, task: str, seed: int) -> Path | None:
        """Save one picture with its infotext in ``outputs/<task>/<date>/``; return its path."""
        return outputs.write_png_with_parameters(image, infotext, outputs.output_folder(self.settings.outputs_dir,
                                                                                      task), seed)

    # --- models ---------------------------------------------------------------------------------------------
    def _with_speedup_defaults(self, request: GenerationRequest) -> GenerationRequest:
        """The request with the Settings' speed-up switches where it left them unset (None).

        Resolved at submit time, so a job runs with the switches that were on when it was queued.
        """
        defaults = {"deep_cache": self.settings.deep_cache, "deep_cache_interval": self.settings.deep_cache_interval,
                    "token_merging": self.settings.token_merging, "fast_decode": self.settings.fast_decode}
        unset = {name: value for name, value in defaults.items() if getattr(request, name) is None}
        return request.model_copy(update=unset) if unset else request

    def _short_hash(self, info: Any) -> str:
        """A1111's short hash of ``info``'s file ("" when it has none or cannot be read: it is metadata)."""
        try:
            return self.registry.short_hash(info) or ""
        except Exception:  # an unreadable file shows up when it is loaded
            return ""

    def _text_widths(self) -> tuple[int, ...] | None:
        """The width(s) of the text encoder(s) an embedding must match: the loaded checkpoint's, else what the
        default checkpoint's family has; None when unknown."""
        entry = self.cache.current("checkpoint")
        if entry is not None:
            encoders = [entry.components.get(name) for name in ("text_encoder", "text_encoder_2")]
            return tuple(int(encoder.config.hidden_size) for encoder in encoders if encoder is not None)
        info = self.default_checkpoint()
        return TEXT_WIDTHS.get(FAMILY_GROUP.get(getattr(info, "family", None) or "", "")) if info else None

    def _embedding_hash(self, name: str) -> str:
        """A1111's 12-digit hash of the embedding file called ``name`` ("" when there is none)."""
        info = next((e for e in self.registry.embeddings() if Path(e.path).stem == name), None)
        return self.registry.network_hash(info) if info is not None else ""

    def refresh_models(self) -> None:
        """Rescan the models folders; the checkpoints' sha256 are then read in the background, one file after
        another (A1111's ``/sd-models`` lists them). The default checkpoint stays the one it was."""
        self.registry.refresh()
        self.registry.hash_all_soon()

    def sha256(self, info: Any) -> str | None:
        """The full sha256 of a model file once it is known; None before (the reads of every file not hashed yet
        are started in one background thread, one file after another: a listing never reads files in parallel)."""
        digest = self.registry.sha256(info)
        if digest is None:
            self.registry.hash_all_soon()
        return digest

    def memory(self) -> dict[str, Any]:
        """A1111's ``/memory`` figures: ``ram`` (this process and the machine) and ``cuda`` (the GPU, or an error)."""
        return devices.memory_report(self.choice.device)

    def checkpoints(self) -> list[Any]:
        return list(self.registry.checkpoints())

    def vaes(self) -> list[Any]:
        return list(self.registry.vaes())

    def upscalers(self) -> list[Any]:
        """The SD x4 upscaler folders (the Upscale 4x tab's list, as before)."""
        return list(self.registry.upscalers())

    def all_upscalers(self) -> list[Any]:
        """Every upscaler as one list (A1111's ``/upscalers``): the built-ins ``None``, ``Lanczos``, ``Nearest``,
        the ESRGAN-family model files, the SD x4 folders. ``family`` says which kind (``registry.UPSCALER_FAMILIES``),
        ``scale`` the factor."""
        return list(self.registry.all_upscalers())

    def depth_models(self) -> list[Any]:
        """The DPT depth-estimation folders of ``models/depth/`` (SD 2's depth model estimates its depth map with the
        first usable one; ``problem`` says why another cannot be used)."""
        return list(self.registry.depth_models())

    def latent_upscale_modes(self) -> list[str]:
        """A1111's latent upscale modes, for the hires fix only (``/sdapi/v1/latent-upscale-modes``)."""
        return list(LATENT_UPSCALE_MODES)

    def default_checkpoint(self) -> Any | None:
        """The checkpoint used when a request names none: the setting, else the first installed one."""
        return self.catalog.default_checkpoint()

    def set_default_checkpoint(self, name: str) -> Any:
        """Make ``name`` the default checkpoint (raises ``ModelNotFound``). Loading happens with the next job."""
        return self.catalog.set_default_checkpoint(name)

    def set_default_vae(self, name: str | None) -> None:
        """Make ``name`` ("Automatic" or a models/vae file) the default VAE (raises ``ModelNotFound``)."""
        self.catalog.set_default_vae(name)

    def count_tokens(self, text: str) -> tuple[int, int]:
        """A1111's prompt counter for ``text``: (tokens, limit), the limit growing by 75 with each chunk the text
        fills ("90/150"). Styles are not applied; ``<lora:...>`` tags and comments are left out, as A1111 does."""
        from .prompt_encoding import count_prompt_tokens
        from .prompt_parser import parse_extra_networks, strip_comments
        from .tokenizers import clip_tokenizer

        counted = count_prompt_tokens(clip_tokenizer(), parse_extra_networks(strip_comments(text or ""))[0])
        return counted.count, counted.limit

    # --- the prompt language's files ------------------------------------------------------------------------
    def loras(self) -> list[Any]:
        """LoRA files installed (``<lora:name:weight>`` in a prompt)."""
        return list(self.registry.loras())

    def lora_metadata(self, info: Any) -> dict[str, str]:
        """A LoRA file's training metadata (kohya's ``ss_*`` keys), {} when it has none."""
        return dict(self.registry.metadata(info))

    def embeddings(self) -> EmbeddingReport:
        """Textual-inversion embeddings installed, split as A1111's ``/embeddings`` does: those the default
        checkpoint's text encoder can use, and the others (another model's width, or unreadable)."""
        readable, unreadable = self.embedding_library.readable(list(self.registry.embeddings()))
        widths = self._text_widths()
        report = EmbeddingReport(skipped_reasons=dict(unreadable))
        for embedding in readable:
            fits = widths is None or embedding.widths == widths
            (report.loaded if fits else report.skipped)[embedding.name] = embedding
        return report

    def styles(self) -> list[Any]:
        """The styles of the styles file (A1111's ``styles.csv``), in file order."""
        return list(self.catalog.styles().values())

    def suggest_preset(self, checkpoint: str | None, prompt: str) -> PresetChoice | None:
        """The speed preset the request's models ask for (``presets.suggest_preset``): a prompt LoRA's or the
        checkpoint's (``None``: the default one) name or safetensors metadata saying LCM, Turbo, Lightning, Hyper-SD
        or TCD; ``None`` when none does or the checkpoint is not installed."""
        try:
            info = self.catalog.checkpoint(checkpoint)
        except ModelNotFound:
            info = None
        return suggest_preset(self.registry, info, prompt)

    # --- status and settings --------------------------------------------------------------------------------
    def status(self) -> EngineStatus:
        """What the status bar shows."""
        device = self.choice.device
        _free, total = devices.memory_info(device)
        current, upscaler = self.cache.current("checkpoint"), self.cache.current("upscaler")
        models = self.upscalers_library.names()
        return EngineStatus(
            device=str(device), dtype=self.choice.dtype_name, memory_mode=self.settings.memory_mode,
            mode_in_use=self.last_rung, vram_used=devices.memory_used(device), vram_total=total,
            loaded_checkpoint=current.name if current is not None else None,
            loaded_upscaler=upscaler.name if upscaler is not None else (models[0] if models else None),
            loaded_checkpoints=self.cache.names(), demo=bool(self.settings.demo), queue=self.queue_length(),
            running=self.current_job() is not None, xformers=self.choice.xformers,
            xformers_available=device.type == "cuda" and devices.xformers_installed(),
        )

    def replicas(self) -> tuple[Any, ...] | None:
        """A pool's replicas (``pool.engine.PoolEngine``); None: this manager runs its jobs itself."""
        return None

    def apply_settings(self, changes: dict[str, Any]) -> list[str]:
        """Apply live changes (memory mode, cache slots, xformers, default checkpoint/VAE); returns names changed.

        Values are checked and saved at once. What touches loaded models (cache slots, xformers) runs on the worker
        as a control job, so it never races a job checking a model out: at once when nothing runs, else right
        after the running job, ahead of the waiting ones. Device and precision changes are saved but take effect
        at the next start (models would need reloading).
        """
        changes = dict(changes)
        if "memory_mode" in changes and changes["memory_mode"] not in MEMORY_MODES:
            raise InvalidRequest(
                f"memory_mode must be one of {', '.join(MEMORY_MODES)} (got {changes['memory_mode']!r}).",
                field="memory_mode",
            )
        if changes.get("checkpoint"):
            changes["checkpoint"] = self.catalog.checkpoint(changes["checkpoint"]).name
        if "vae" in changes:
            vae = self.catalog.vae(changes["vae"])
            changes["vae"] = vae.name if vae is not None else "Automatic"
        check_request_defaults(changes)
        check_threads(changes)
        changed = self.settings.update(changes, respect_cli=False)
        resize = "vram_slots" in changed or "ram_slots" in changed
        if resize or "xformers" in changed or "threads" in changed:
            self.jobs.run_soon(lambda: self._apply_device_settings(resize, "xformers" in changed,
                                                                    "threads" in changed))
        return changed

    def _apply_device_settings(self, resize: bool, xformers: bool, threads: bool = False) -> None:
        """On the worker: resize the cache, or switch xformers or the thread count and undo the set-up of every idle
        entry (its attention, or OpenVINO models compiled for the old thread count)."""
        if resize:
            self.cache.resize(self.settings.vram_slots, self.settings.ram_slots)
        if threads:
            self._apply_threads()
        if xformers:
            self.placement.use_xformers(self.settings.xformers)
        if xformers or (threads and self.settings.fast):
            self.cache.reset_unpinned()


# --- helpers --------------------------------------------------------------------------------------------------


def _default_loader(info: Any, dtype: Any) -> Any:
    from .loaders import load_components

    return load_components(info, dtype)


def _default_vae_loader(info: Any, dtype: Any, loaded: Any) -> Any:
    from .loaders import load_vae

    ckpt = loaded.info
    config_dir = ckpt.path if getattr(ckpt, "format", "") == "diffusers" else None
    return load_vae(info, dtype, family=loaded.family, config_dir=config_dir)


REQUEST_DEFAULTS = ("deep_cache", "deep_cache_interval", "token_merging", "fast_decode", "clip_skip", "emphasis")


def check_threads(changes: dict[str, Any]) -> None:
    """The Settings' ``threads``: a whole number from 0 (all physical cores) to ``MAX_THREADS``."""
    if "threads" not in changes:
        return
    value = changes["threads"]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_THREADS:
        raise InvalidRequest(f"threads must be a whole number from 0 (all physical cores) to {MAX_THREADS} "
                             f"(got {value!r}).", field="threads")


def check_request_defaults(changes: dict[str, Any]) -> None:
    """Settings that are request defaults (speed-ups, clip skip, emphasis) go through the same range checks as a
    request's fields."""
    fields = {name: changes[name] for name in REQUEST_DEFAULTS if name in changes}
    if fields:
        GenerationRequest.create(**fields)  # raises InvalidRequest naming the field
