"""Stand-ins for the engine, shared by the UI, API and manager tests: no model file, no torch model, no GPU.

* ``FakeInfo`` stands in for ``pipelines.registry.ModelInfo``;
* ``FakeRegistry`` for ``pipelines.registry.ModelRegistry`` (what ``PipelineManager`` and the API ask a registry);
* ``FakeManager`` for ``pipelines.manager.PipelineManager`` (``pipelines.interface.Engine``), and ``FakeJob`` for
  ``pipelines.jobs.Job`` (``JobHandle``).

``write_lora`` and ``write_embedding`` write small real files (the registry's detection and the embedding reader read
them) for a ``FakeRegistry``'s ``loras``/``embeddings``.

tests/test_interface.py checks ``FakeManager`` and ``FakeJob`` against the Protocols, as it checks the real classes.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from pipelines import outputs
from pipelines.catalog import ModelCatalog
from pipelines.conditioning import job_prompts
from pipelines.errors import AtelierError, Cancelled, ModelNotFound, QueueFull, Skipped
from pipelines.infotext import Note, request_infotext
from pipelines.interface import EngineStatus
from pipelines.networks import check_family
from pipelines.progress import JobState, ProgressEvent, ProgressState
from pipelines.registry import UPSCALER_SD_X4, builtin_upscalers, empty_models_message
from pipelines.request import GenerationRequest, Result, hires_size, sd_upscale_size, upscale_target
from pipelines.request import output_size as request_output_size
from pipelines.settings import Settings

MODELS_DIR = Path("/nonexistent-models")
PROMPT_TASKS = ("txt2img", "img2img")  # as pipelines.manager.PROMPT_TASKS


def write_lora(path: Path, group: str, metadata: dict[str, str] | None = None) -> Path:
    """A LoRA file whose keys say which model group it is for, as the registry detects it (kohya's names: SDXL's
    ``lora_te1_``; SD 1.x's cross-attention key projection takes 768-wide text features)."""
    import torch
    from safetensors.torch import save_file

    if group == "sdxl":
        tensors = {"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 768)}
    else:
        key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
        tensors = {f"{key}.lora_down.weight": torch.zeros(4, 768), f"{key}.lora_up.weight": torch.zeros(320, 4),
                   f"{key}.alpha": torch.tensor(4.0)}
    save_file(tensors, str(path), metadata=metadata)
    return path


def write_embedding(path: Path, vectors: Any, step: int | None = 42) -> Path:
    """An embedding as A1111 saves it: a .pt with ``string_to_param``, or SDXL's clip_l/clip_g .safetensors."""
    import torch
    from safetensors.torch import save_file

    if isinstance(vectors, dict):
        save_file(vectors, str(path))
    else:
        torch.save({"string_to_param": {"*": vectors}, "name": path.stem, "step": step,
                    "sd_checkpoint": "0123456789", "sd_checkpoint_name": "demo"}, path)
    return path


def name_hash(name: str) -> str:
    """A made-up A1111 short hash (10 hex digits), fixed for each name."""
    return hashlib.sha256(name.encode()).hexdigest()[:10]


@dataclass
class FakeInfo:
    """Stands in for ``registry.ModelInfo``: a model no file backs."""

    name: str
    path: Path
    kind: str = "checkpoint"
    format: str = "safetensors"
    size: int = 0
    family: str = "sd15"
    family_source: str = "test"
    short_hash: str = ""  # "": made up from the name
    scale: float | None = None

    def __post_init__(self) -> None:
        self.short_hash = self.short_hash or name_hash(self.name)

    @property
    def title(self) -> str:
        return f"{self.name} [{self.short_hash}]"


class FakeRegistry:
    """Stands in for ``registry.ModelRegistry``: checkpoints, VAEs and upscalers by name under a models folder that
    does not exist; found by name, title or file name; hashes known at once (``hashes`` names some: name → hash)."""

    def __init__(self, checkpoints=("tiny-a", "tiny-b"), vaes=("tiny-vae",), upscalers=("tiny-x4",),
                 hashes: dict[str, str] | None = None, loras: tuple[Path, ...] = (), embeddings: tuple[Path, ...] = (),
                 families: dict[str, str] | None = None, depth: tuple[Path, ...] = ()):
        def info(name: str, path: Path, **fields: Any) -> FakeInfo:
            return FakeInfo(name, path, short_hash=(hashes or {}).get(name, ""), **fields)

        # ``families``: checkpoint name → family (default sd15), e.g. {"tiny-inpaint": "sd15-inpaint"}
        self._checkpoints = [info(n, MODELS_DIR / f"{n}.safetensors", family=(families or {}).get(n, "sd15"))
                             for n in checkpoints]
        self._vaes = [info(n, MODELS_DIR / "vae" / f"{n}.safetensors", kind="vae") for n in vaes]
        self._upscalers = [info(n, MODELS_DIR / "upscale_models" / n, kind="upscaler", format="diffusers",
                                family="x4-upscaler", scale=4) for n in upscalers]
        self.model_upscaler_infos: list[Any] = []  # upscaler model files a test adds (real ModelInfo entries)
        # real files a test wrote (LoRAs, embeddings): read by the real loading code
        self._loras = [info(Path(p).stem, Path(p), kind="lora", family=_lora_group(Path(p))) for p in loras]
        self._embeddings = [info(Path(p).stem, Path(p), kind="embedding", family=None) for p in embeddings]
        # DPT folders a test wrote (``pipelines.tiny.write_tiny_dpt``), loaded by the real depth code
        self._depth = [info(Path(p).name, Path(p), kind="depth", format="transformers", family="dpt") for p in depth]

    def refresh(self) -> None:
        """Nothing to rescan."""

    def checkpoints(self) -> list[FakeInfo]:
        return list(self._checkpoints)

    def vaes(self) -> list[FakeInfo]:
        return list(self._vaes)

    def upscalers(self) -> list[FakeInfo]:
        return list(self._upscalers)

    def all_upscalers(self) -> list[Any]:
        """As the real one: the built-ins, the model files, the SD x4 folders."""
        return [*builtin_upscalers(), *self.model_upscaler_infos, *self._upscalers]

    def model_upscalers(self) -> list[Any]:
        return list(self.model_upscaler_infos)

    def loras(self) -> list[FakeInfo]:
        return list(self._loras)

    def depth_models(self) -> list[FakeInfo]:
        return list(self._depth)

    def embeddings(self) -> list[FakeInfo]:
        return list(self._embeddings)

    def find_lora(self, name: str) -> FakeInfo | None:
        return next((info for info in self._loras if name in (info.name, info.path.name)), None)

    def metadata(self, info: FakeInfo) -> dict[str, str]:
        """A real file's safetensors metadata (kohya's ``ss_*`` keys), as the real registry reads it; else {}."""
        from pipelines.checkpoint_files import read_safetensors_header
        from pipelines.errors import ModelLoadError

        if info.path.suffix != ".safetensors" or not info.path.is_file():
            return {}
        try:
            return dict(read_safetensors_header(info.path)[1])
        except (ModelLoadError, OSError):
            return {}

    def network_hash(self, info: FakeInfo) -> str:
        """A1111's 12-digit hash: of the file's bytes when it exists, else made up from the name."""
        if info.path.is_file():
            return hashlib.sha256(info.path.read_bytes()).hexdigest()[:12]
        return name_hash(info.name)[:10] + "00"

    def find_checkpoint(self, name: str) -> FakeInfo:
        return _find(self._checkpoints, name, "checkpoint")

    def find_vae(self, name: str | None) -> FakeInfo | None:
        if name is None or name.strip() in ("", "Automatic", "None", "auto"):
            return None  # the checkpoint's own VAE
        return _find(self._vaes, name, "vae")

    def find_upscaler(self, name: str) -> Any:
        for info in self.all_upscalers():
            if name in (info.name, info.path.name) or (info.family == "builtin" and name.lower() == info.name.lower()):
                return info
        return _find(self._upscalers, name, "upscaler")

    def short_hash(self, info: FakeInfo) -> str:
        return info.short_hash

    def cached_short_hash(self, info: FakeInfo) -> str | None:
        return info.short_hash

    def hash_soon(self, info: FakeInfo) -> None:
        """The real registry reads a new file's hash in a background thread; these hashes are known at once."""

    def hash_all_soon(self) -> None:
        """The real registry reads every checkpoint's hash in a background thread; these are known at once."""

    def sha256(self, info: FakeInfo) -> str:
        return fake_sha256(info)

    def empty_message(self) -> str:
        return empty_models_message(MODELS_DIR)


def output_size(request: GenerationRequest, model: Any) -> tuple[int, int]:
    """The size of the picture the real engine makes for ``request`` (``model``: what it resolved to)."""
    if request.task == "upscale":
        width, height, _crop = upscale_target(request, float(getattr(model, "scale", None) or 4))
        return width, height
    if request.task == "txt2img" and request.enable_hr:
        size = hires_size(request)
        return size.width, size.height
    if request.sd_upscale:
        return sd_upscale_size(request)
    return request_output_size(request)  # an outpaint's grown canvas, "Only masked"'s init size


def postprocess_notes(request: GenerationRequest, model: Any) -> list[Note]:
    """A pixel upscale's A1111 ``Postprocess ...`` keys, as the real task writes them."""
    width, height, crop = upscale_target(request, float(getattr(model, "scale", None) or 4))
    notes = [Note.param("Postprocess upscaler", model.name)]
    if request.upscale_width or request.upscale_height:
        notes.insert(0, Note.param("Postprocess upscale to", f"{width}x{height}"))
        if crop:
            notes.append(Note.param("Postprocess crop to", f"{width}x{height}"))
    else:
        scale = request.upscale_scale if request.upscale_scale is not None else model.scale
        notes.insert(0, Note.param("Postprocess upscale by", f"{scale:g}"))
    return notes


def _lora_group(path: Path) -> str | None:
    """What the real registry detects from a LoRA file's header (the model group it was made for)."""
    from pipelines.checkpoint_files import read_safetensors_header
    from pipelines.errors import ModelLoadError
    from pipelines.registry import detect_lora_group

    if path.suffix != ".safetensors" or not path.is_file():
        return None
    try:
        return detect_lora_group(read_safetensors_header(path)[0], path.name).family
    except ModelLoadError:  # a damaged file: found, and refused when it is loaded
        return None


def fake_sha256(info: FakeInfo) -> str:
    """A made-up full sha256 for ``FakeRegistry.sha256`` that starts with the entry's short hash, as a real one does."""
    return info.short_hash + hashlib.sha256(info.name.encode()).hexdigest()[len(info.short_hash):]


def _find(items: list[FakeInfo], name: str, kind: str) -> FakeInfo:
    for info in items:
        if name in (info.name, info.title, info.path.name, info.short_hash):
            return info
    full = name.strip().lower()
    for info in items:  # the full sha256, as the real registry finds a file it has hashed
        if full == fake_sha256(info):
            return info
    raise ModelNotFound(f"Unknown {'VAE' if kind == 'vae' else kind} '{name}'.", field=kind)


class FakeJob:
    """Stands in for ``jobs.Job``: a job of ``FakeManager``'s queue. ``progress`` is a plain attribute (a test may set
    it while the job is held, see ``FakeManager.hold``)."""

    _ids = itertools.count(1)

    def __init__(self, manager: FakeManager, request: GenerationRequest,
                 on_progress: Callable[[ProgressEvent], Any] | None = None):
        self.id = f"job-{next(self._ids)}"
        self.request = request
        self.state: str = JobState.QUEUED
        self.started: float | None = None
        self.progress = ProgressEvent(self.id, ProgressState.QUEUED, total_steps=request.steps,
                                      batch_count=request.batch_count)
        self._manager = manager
        self._on_progress = on_progress
        self._cancel = threading.Event()
        self._skip = threading.Event()
        self._done = threading.Event()
        self._result: Result | None = None
        self._error: BaseException | None = None

    def position(self) -> int:
        return self._manager._position(self)

    def skip(self) -> None:
        self._skip.set()

    @property
    def skip_requested(self) -> bool:
        return self._skip.is_set()

    def cancel(self) -> None:
        self._cancel.set()
        self._manager._remove_waiting(self)

    def wait(self, timeout: float | None = None) -> Result:
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.id} still {self.state} after {timeout} s")
        if self._error is not None:
            raise self._error
        return self._result

    def _emit(self, event: ProgressEvent) -> None:
        self.progress = event
        if self._on_progress is not None:
            self._on_progress(event)

    def _finish(self, result: Result | None = None, error: BaseException | None = None) -> None:
        self._result, self._error = result, error
        if error is not None:
            self.state = JobState.CANCELLED if isinstance(error, Cancelled) else JobState.FAILED
        else:
            self.state = JobState.CANCELLED if result.cancelled else JobState.DONE
        self._done.set()


class FakeManager:
    """Stands in for ``manager.PipelineManager``: the same FIFO queue run by one worker thread, the same model lookup
    (the real ``ModelCatalog`` over ``registry``) and the same reading of the prompts (styles, ``<lora:...>`` tags:
    a LoRA not found is a warning, one for another model a 422 at submit), but each step waits ``step_delay`` s and
    each image is one flat colour of the size the real engine would make (the hires fix's and SD upscale's sizes, an
    upscale's target), saved with its infotext as the real one saves it. A pixel upscaler (a built-in or a model file)
    resizes the input with PIL (``Nearest``: nearest neighbour, any other: Lanczos), as the built-ins do. The hires
    fix's steps are reported in its two passes (``ProgressEvent.phase``); Stop in the second keeps the first's picture.

    Test controls: ``step_delay``; ``fail_with`` (every job ends with this error, raised as is by ``wait()``);
    ``pause()``/``resume()`` and ``hold()``/``release()``. Records: ``submitted`` (requests), ``applied`` (the
    ``apply_settings`` changes), ``interrupted`` (calls to ``interrupt()``), ``skipped`` (calls to ``skip()``, which
    ends the running batch as the real one does), ``unloads`` and ``loads`` (checkpoint loads after an unload: by the
    next job or by ``reload_checkpoint``).
    """

    def __init__(self, settings: Settings, registry: FakeRegistry, step_delay: float = 0.0):
        self.settings = settings
        self.registry = registry
        self.step_delay = step_delay
        self.fail_with: BaseException | None = None
        self.submitted: list[GenerationRequest] = []
        self.applied: list[dict[str, Any]] = []
        self.interrupted = 0
        self.skipped = 0
        self.unloads = 0
        self.loads = 0
        self._unloaded = False
        self._catalog = ModelCatalog(registry, settings)
        self._cond = threading.Condition()
        self._waiting: deque[FakeJob] = deque()
        self._current: FakeJob | None = None
        self._paused = self._holding = self._closed = False
        self._worker: threading.Thread | None = None

    # --- test controls --------------------------------------------------------------------------------------
    def pause(self) -> None:
        """Start no job until ``resume()``: submitted jobs wait, none runs (what a client sees between two jobs)."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._take_next()

    def hold(self) -> None:
        """Until ``release()``, a job that runs waits before its first step (so a test can set its progress)."""
        with self._cond:
            self._holding = True

    def release(self) -> None:
        with self._cond:
            self._holding = False
            self._cond.notify_all()

    # --- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="fake-worker", daemon=True)
                self._worker.start()

    def close(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._closed = True
            waiting, self._waiting = list(self._waiting), deque()
            current = self._current
            self._cond.notify_all()
        for job in waiting:
            job._finish(error=Cancelled("Atelier is shutting down; the job was not run."))
        if current is not None:
            current._cancel.set()
        if self._worker is not None:
            self._worker.join(timeout)

    # --- jobs -----------------------------------------------------------------------------------------------
    def submit(self, request: GenerationRequest,
               on_progress: Callable[[ProgressEvent], Any] | None = None) -> FakeJob:
        targets = self._catalog.resolve(request)  # unknown names raise ModelNotFound, as in the real submit
        if request.task in PROMPT_TASKS:  # prompt syntax and LoRAs for another model: 422, as in the real submit
            check_family(self._prompts(request).loras, targets.checkpoint.family)
        with self._cond:
            if self._closed:
                raise AtelierError("Atelier is shutting down; no new jobs are taken.")
            limit = self.settings.queue_size
            if len(self._waiting) >= limit:
                raise QueueFull(f"The queue is full ({limit} jobs waiting). Try again when some have finished.")
            job = FakeJob(self, request, on_progress)
            self._waiting.append(job)
            self.submitted.append(request)
            self._take_next()
        self.start()
        return job

    def run(self, request: GenerationRequest, on_progress: Callable[[ProgressEvent], Any] | None = None) -> Result:
        return self.submit(request, on_progress).wait()

    def preload(self, name: str | None = None) -> FakeJob | None:
        """Nothing to load ahead: None, as the real one answers when there is nothing to load."""
        return None

    def current_job(self) -> FakeJob | None:
        with self._cond:
            return self._current

    def queue_length(self) -> int:
        with self._cond:
            return len(self._waiting)

    def interrupt(self) -> None:
        """Counted in ``interrupted``; the running job goes on (the API tests check that /interrupt gets here)."""
        self.interrupted += 1

    def skip(self) -> None:
        """Counted in ``skipped``; the running job's batch ends at its next step and the job goes on, as on the real
        engine."""
        self.skipped += 1
        job = self.current_job()
        if job is not None:
            job.skip()

    def unload_checkpoint(self) -> None:
        """As the real one: after the running job, ahead of the waiting ones; nothing is loaded afterwards."""
        with self._cond:
            paused, self._paused = self._paused, True
            self._cond.wait_for(lambda: self._closed or self._current is None)
            self._unloaded = True
            self.unloads += 1
            self._paused = paused
            self._take_next()

    def reload_checkpoint(self) -> None:
        self._load_if_unloaded()

    def _load_if_unloaded(self) -> None:
        with self._cond:
            if self._unloaded:
                self._unloaded = False
                self.loads += 1

    def sha256(self, info: Any) -> str | None:
        return self.registry.sha256(info)

    def memory(self) -> dict[str, Any]:
        """A CPU machine's figures, shaped as the real ones."""
        return {"ram": {"free": 6 * 2**30, "used": 2**30, "total": 8 * 2**30}, "cuda": {"error": "unavailable"}}

    def _position(self, job: FakeJob) -> int:
        with self._cond:
            if job not in self._waiting:
                return 0
            return self._waiting.index(job) + (self._current is not None)

    def _remove_waiting(self, job: FakeJob) -> None:
        with self._cond:
            if job not in self._waiting:
                return
            self._waiting.remove(job)
        job._finish(error=Cancelled("Cancelled before it started."))

    # --- the worker -----------------------------------------------------------------------------------------
    def _take_next(self) -> None:
        """Under the lock: an idle, unpaused engine starts the next job at once (a Stop right after a submit then
        stops a started job, as on the real engine, where the waiting worker takes it within microseconds)."""
        if self._current is None and self._waiting and not self._paused:
            job = self._current = self._waiting.popleft()
            job.state, job.started = JobState.RUNNING, time.time()
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or self._current is not None)
                job = self._current
            if job is None:  # closed, nothing left to run
                return
            try:
                job._finish(result=self._run(job))
            except Exception as exc:
                job._finish(error=exc)
            finally:
                with self._cond:
                    self._current = None
                    self._take_next()
                    self._cond.notify_all()  # unload_checkpoint waits for the running job to end

    def _run(self, job: FakeJob) -> Result:
        with self._cond:
            self._cond.wait_for(lambda: self._closed or not self._holding)
        if self.fail_with is not None:
            raise self.fail_with
        self._load_if_unloaded()
        request = job.request
        targets = self._catalog.resolve(request)
        model = targets.checkpoint
        result = Result(request=request, checkpoint=model.name, checkpoint_hash=self.registry.short_hash(model),
                        mode="cpu")
        batches = request.batch_seeds(request.resolved_seed())
        prompts = self._prompts(request) if request.task in PROMPT_TASKS else None
        hires = request.task == "txt2img" and request.enable_hr
        skipped = 0
        for batch_index, seeds in enumerate(batches):
            job._skip.clear()  # as the real engine: a Skip before a batch starts does not carry over
            try:
                passes = self._steps(job, batch_index, len(batches))
            except Skipped:
                skipped += 1
                result.notes.append(f"Skipped batch {batch_index + 1} of {len(batches)}.")
                continue
            if passes == 0:
                if not result.images:
                    raise Cancelled("Stopped before the first image finished.")
                result.cancelled = True
                break
            if hires and passes == 1:  # Stop in the hires pass: the first pass's picture, as a plain txt2img's
                first_pass = request.model_copy(update={"enable_hr": False})
                for seed in seeds:
                    self._save(first_pass, targets, seed, result, prompts)
                result.cancelled = True
                result.notes.append("Stopped during the hires pass; the first pass's picture was kept.")
                break
            for seed in seeds:
                self._save(request, targets, seed, result, prompts)
        if skipped and not result.images:
            raise Cancelled(f"Skipped: no image was finished ({skipped} batch(es) skipped).")
        for note in prompts.notes if prompts is not None else []:
            said = result.warnings if note.warning else result.notes
            if note.text not in said:
                said.append(note.text)
        return result

    def _prompts(self, request: GenerationRequest) -> Any:
        """The real engine's reading of the prompts: styles, ``<lora:...>`` tags found or warned about, Lora hashes."""
        return job_prompts(request, self.settings, self._catalog.styles(), self.registry)

    def _steps(self, job: FakeJob, batch_index: int, batch_count: int) -> int:
        """The denoising steps of one batch, in one pass or in the hires fix's two (first pass, upscaling, hires
        pass, counted as one run as the real ``StepReporter`` counts them); returns the passes finished before a
        cancel (all of them when none came)."""
        request = job.request
        passes = [("", request.steps)]
        if request.task == "txt2img" and request.enable_hr:
            passes = [("first pass", request.steps), ("hires pass", request.hr_steps)]
        total = sum(steps for _, steps in passes)
        done = 0
        for finished, (phase, steps) in enumerate(passes):
            if phase == "hires pass":
                job._emit(replace(job.progress, phase="upscaling"))
            for _ in range(steps):
                if job._cancel.wait(self.step_delay):
                    return finished
                if job._skip.is_set():
                    raise Skipped("Skipped by the user.")
                done += 1
                job._emit(ProgressEvent(
                    job.id, ProgressState.RUNNING, step=done, total_steps=total, batch_index=batch_index,
                    batch_count=batch_count, eta_s=self.step_delay * (total - done),
                    preview=Image.new("RGB", (8, 8), (done * 10 % 256, 0, 0)), phase=phase,
                ))
        return len(passes)

    def _save(self, request: GenerationRequest, targets: Any, seed: int, result: Result, prompts: Any = None) -> None:
        model = targets.checkpoint
        pixels = request.task == "upscale" and getattr(model, "family", None) != UPSCALER_SD_X4
        size = output_size(request, model)
        if pixels:
            method = Image.Resampling.NEAREST if model.name.lower() == "nearest" else Image.Resampling.LANCZOS
            image = request.image.resize(size, method)
        else:
            image = Image.new("RGB", size, (seed % 256, 80, 160))
        vae = targets.vae
        texts = {} if prompts is None else dict(prompt=prompts.plan.infotext_prompt,
                                                negative_prompt=prompts.plan.infotext_negative)
        notes = list(prompts.notes) if prompts is not None else []
        if pixels:  # as pipelines/tasks/pixel_upscale.py notes it
            notes += postprocess_notes(request, model)
        if request.sd_upscale:  # as pipelines/tasks/sd_upscale.py notes it
            notes += [Note.param("SD upscale overlap", request.sd_upscale_overlap),
                      Note.param("SD upscale upscaler", request.sd_upscale_upscaler)]
        infotext = request_infotext(
            request, seed=seed, size=size, model=model.name, model_hash=result.checkpoint_hash,
            vae=vae and vae.name, vae_hash=vae and self.registry.short_hash(vae), notes=notes, postprocess=pixels,
            **texts,
        )
        folder = outputs.output_folder(self.settings.outputs_dir, request.task)
        result.paths.append(outputs.write_png_with_parameters(image, infotext, folder, seed))
        result.images.append(image)
        result.seeds.append(seed)
        result.infotexts.append(infotext)

    # --- models ---------------------------------------------------------------------------------------------
    def refresh_models(self) -> None:
        self.registry.refresh()

    def checkpoints(self) -> list[FakeInfo]:
        return self.registry.checkpoints()

    def vaes(self) -> list[FakeInfo]:
        return self.registry.vaes()

    def upscalers(self) -> list[FakeInfo]:
        return self.registry.upscalers()

    def all_upscalers(self) -> list[Any]:
        return self.registry.all_upscalers()

    def depth_models(self) -> list[FakeInfo]:
        return self.registry.depth_models()

    def latent_upscale_modes(self) -> list[str]:
        from pipelines.request import LATENT_UPSCALE_MODES

        return list(LATENT_UPSCALE_MODES)

    def default_checkpoint(self) -> FakeInfo | None:
        return self._catalog.default_checkpoint()

    def set_default_checkpoint(self, name: str) -> FakeInfo:
        return self._catalog.set_default_checkpoint(name)

    def set_default_vae(self, name: str | None) -> None:
        self._catalog.set_default_vae(name)

    def count_tokens(self, text: str) -> tuple[int, int]:
        """The real counter's answer (A1111's: tokens, and the limit of the chunks they fill; tags and comments
        left out)."""
        from pipelines.prompt_encoding import count_prompt_tokens
        from pipelines.prompt_parser import parse_extra_networks, strip_comments
        from pipelines.tokenizers import clip_tokenizer

        counted = count_prompt_tokens(clip_tokenizer(), parse_extra_networks(strip_comments(text or ""))[0])
        return counted.count, counted.limit

    def loras(self) -> list[FakeInfo]:
        return self.registry.loras()

    def lora_metadata(self, info: FakeInfo) -> dict[str, str]:
        return dict(self.registry.metadata(info))

    def embeddings(self) -> Any:
        """The embedding files the test wrote, read by the real reader and split as the real manager splits them
        (by the text-encoder width of the default checkpoint's family)."""
        from pipelines.embeddings import EmbeddingLibrary, EmbeddingReport
        from pipelines.manager import TEXT_WIDTHS
        from pipelines.registry import FAMILY_GROUP

        readable, unreadable = EmbeddingLibrary().readable(list(self.registry.embeddings()))
        default = self.default_checkpoint()
        widths = TEXT_WIDTHS.get(FAMILY_GROUP.get(default.family, "")) if default is not None else None
        report = EmbeddingReport(skipped_reasons=dict(unreadable))
        for embedding in readable:
            (report.loaded if widths is None or embedding.widths == widths else report.skipped)[embedding.name] = (
                embedding)
        return report

    def styles(self) -> list[Any]:
        return list(self._catalog.styles().values())

    def suggest_preset(self, checkpoint: str | None, prompt: str) -> Any:
        """The real engine's choice (``presets.suggest_preset``) over the fake registry's files."""
        from pipelines.errors import ModelNotFound
        from pipelines.presets import suggest_preset

        try:
            info = self._catalog.checkpoint(checkpoint)
        except ModelNotFound:
            info = None
        return suggest_preset(self.registry, info, prompt)

    # --- status and settings --------------------------------------------------------------------------------
    def status(self) -> EngineStatus:
        """A CPU engine with the default checkpoint loaded (nothing after ``unload_checkpoint``)."""
        default = None if self._unloaded else self.default_checkpoint()
        return EngineStatus(device="cpu", dtype="float32", memory_mode=self.settings.memory_mode, mode_in_use="cpu",
                            loaded_checkpoint=default.name if default is not None else None,
                            demo=bool(self.settings.demo), queue=self.queue_length(),
                            running=self.current_job() is not None)

    def replicas(self) -> None:
        return None  # no pool

    def apply_settings(self, changes: dict[str, Any]) -> list[str]:
        """The real manager's range checks on the speed-up switches, then the shared Settings; returns names changed."""
        from pipelines.manager import check_request_defaults

        check_request_defaults(changes)
        self.applied.append(dict(changes))
        return self.settings.update(changes, respect_cli=False)
