"""The engine as the front doors see it: everything ``ui/``, ``api/``, ``app.py`` and ``bench/`` call.

``PipelineManager`` satisfies ``Engine``; so do the test stand-ins (``tests/fakes.py``), and a test checks both
against these Protocols, so a method added here and forgotten there fails loudly. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .progress import ProgressEvent
from .request import GenerationRequest, Result


@dataclass(frozen=True)
class ReplicaStatus:
    """One replica of a pool (``--pool``): where it runs and what it does, as the front process last heard."""

    name: str
    node: str = ""
    pid: int | None = None  # its process on that node
    job: str | None = None  # the job it runs now
    task: str = ""
    checkpoint: str | None = None  # the checkpoint of its running or last job
    jobs_done: int = 0


@dataclass(frozen=True)
class EngineStatus:
    """What the status bar shows: the device, the memory mode, what is loaded, the queue."""

    device: str = ""
    dtype: str = ""
    memory_mode: str = "auto"  # the Settings' mode (auto or a rung)
    mode_in_use: str | None = None  # the rung the last job ran on
    vram_used: int | None = None  # bytes; None on a CPU
    vram_total: int | None = None
    loaded_checkpoint: str | None = None
    loaded_upscaler: str | None = None
    loaded_checkpoints: list[str] = field(default_factory=list)  # most recently used first
    demo: bool = False
    queue: int = 0  # jobs waiting
    running: bool = False
    xformers: bool = False
    xformers_available: bool = False
    pool: tuple[ReplicaStatus, ...] | None = None  # with --pool: the replicas up now and what each runs


@runtime_checkable
class JobHandle(Protocol):
    """A submitted job, as the UI follows it and the API waits for it."""

    id: str
    request: GenerationRequest
    state: str  # a JobState
    started: float | None

    def position(self) -> int:
        """0 when running (or finished), n when n jobs are ahead of it."""

    @property
    def progress(self) -> ProgressEvent:
        """The latest progress event, with the queue position filled in."""

    def cancel(self) -> None:
        """Remove the job if it waits; stop it within one step if it runs."""

    def wait(self, timeout: float | None = None) -> Result:
        """Block until the job ends: its ``Result``, or its ``AtelierError``."""


@runtime_checkable
class Engine(Protocol):
    """The pipeline manager's public face."""

    settings: Any  # pipelines.settings.Settings
    registry: Any  # pipelines.registry.ModelRegistry

    # lifecycle
    def start(self) -> None: ...
    def close(self, timeout: float = 30.0) -> None: ...

    # jobs
    def submit(self, request: GenerationRequest,
               on_progress: Callable[[ProgressEvent], Any] | None = None) -> JobHandle: ...
    def run(self, request: GenerationRequest,
            on_progress: Callable[[ProgressEvent], Any] | None = None) -> Result: ...
    def preload(self, name: str | None = None) -> JobHandle | None: ...
    def current_job(self) -> JobHandle | None: ...
    def queue_length(self) -> int: ...
    def interrupt(self) -> None: ...
    def skip(self) -> None: ...  # end the running job's batch, go on with its next one
    def unload_checkpoint(self) -> None: ...  # every loaded model out of VRAM and RAM; returns when done
    def reload_checkpoint(self) -> None: ...  # the default checkpoint loaded again; returns when loaded

    # models
    def refresh_models(self) -> None: ...
    def checkpoints(self) -> list[Any]: ...
    def vaes(self) -> list[Any]: ...
    def upscalers(self) -> list[Any]: ...  # the SD x4 folders
    def all_upscalers(self) -> list[Any]: ...  # every kind, as A1111's /upscalers (registry.UPSCALER_FAMILIES)
    def latent_upscale_modes(self) -> list[str]: ...  # the hires fix's latent modes
    def depth_models(self) -> list[Any]: ...  # models/depth/ DPT folders (SD 2's depth-to-image)
    def default_checkpoint(self) -> Any | None: ...
    def set_default_checkpoint(self, name: str) -> Any: ...
    def set_default_vae(self, name: str | None) -> None: ...
    def sha256(self, info: Any) -> str | None: ...  # a model file's full sha256 once known (read in the background)

    # the prompt language
    def count_tokens(self, text: str) -> tuple[int, int]: ...
    def loras(self) -> list[Any]: ...
    def lora_metadata(self, info: Any) -> dict[str, str]: ...
    def embeddings(self) -> Any: ...  # embeddings.EmbeddingReport
    def styles(self) -> list[Any]: ...  # prompt_parser.PromptStyle
    def suggest_preset(self, checkpoint: str | None, prompt: str) -> Any | None: ...  # presets.PresetChoice

    # status and settings
    def status(self) -> EngineStatus: ...
    def replicas(self) -> tuple[ReplicaStatus, ...] | None: ...  # with --pool: each replica; None without a pool
    def memory(self) -> dict[str, Any]: ...  # A1111's /memory: {"ram": {...}, "cuda": {...}}
    def apply_settings(self, changes: dict[str, Any]) -> list[str]: ...
