"""The memory ladder: ``full → sliced → offload → sequential → cpu``. Every diffusers memory switch lives here.

- ``full``: every module on the accelerator, SDPA (or xformers) attention.
- ``sliced``: as full, plus ``enable_attention_slicing`` and the VAE's own ``enable_slicing``/``enable_tiling``
  (diffusers ≥ 0.40 moved these from the pipeline to ``pipe.vae``).
- ``offload``: ``enable_model_cpu_offload``: one whole model (text encoder, UNet, VAE) on the GPU at a time.
- ``sequential``: ``enable_sequential_cpu_offload``: one layer at a time (slow, tiny peak).
- ``cpu``: everything on the CPU in fp32.

``auto`` estimates the peak of a request on each rung and takes the first that fits the free VRAM. Estimates are
replaced by what was measured (``torch.cuda.max_memory_allocated`` after each run, kept per rung and request
shape), so the ranking follows measurements: with SDPA, attention slicing often saves little and costs speed,
and when its measured peak is not clearly below ``full``'s, ``auto`` skips it.

Measured peaks (SD 1.5-shaped weights, fp16, 512x512, batch 1, 20 steps):

| rung       | peak VRAM | speed          | where measured |
|------------|-----------|----------------|----------------|
| full       | n/m       | n/m            | no GPU was lent to this build; run ``bench/`` on one to fill these in |
| sliced     | n/m       | n/m            |                |
| offload    | n/m       | n/m            |                |
| sequential | n/m       | n/m            |                |
| cpu        | 0         | ~14 s per step | 2-vCPU build machine, one UNet call with CFG at 512² (fp32, eager; the |
|            |           |                | ``--fast`` probe in ``pipelines/fast.py``): the only rung measurable here |

n/m = not measured. The tests run the ``cpu`` rung for real and fake ``full``/``sliced`` with injected appliers.

Until the table is filled, ``estimate_peak`` uses the constants below (InvokeAI's VAE working-memory constant,
ComfyUI's 400 MB reserve) and the run-time measurements take over after the first run of a shape.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .devices import DeviceChoice
from .strenum import StrEnum

log = logging.getLogger(__name__)



class Rung(StrEnum):
    """A rung of the ladder, fastest first; the values are the names flags, Settings, the API and the log use."""

    FULL = "full"
    SLICED = "sliced"
    OFFLOAD = "offload"
    SEQUENTIAL = "sequential"
    CPU = "cpu"


RUNGS: tuple[Rung, ...] = tuple(Rung)
START_RUNG: dict[str, Rung] = {"auto": Rung.FULL, **{rung.value: rung for rung in Rung}}

RESERVE_BYTES = 400 * 2**20  # allocator fragmentation, cuDNN workspaces (ComfyUI's reserve)
VAE_BYTES_PER_PIXEL = 2200  # per output pixel per image at 2 bytes/element (InvokeAI's decode constant)
UNET_BYTES_PER_LATENT = 24_000  # per latent pixel per CFG batch item at 2 bytes/element (SDPA attention)
SLICED_ACTIVATION_FACTOR = 0.6  # attention slicing: a part of the UNet activations
TILED_VAE_PIXELS = 512 * 512  # VAE tiling decodes one 512x512 tile at a time
SEQUENTIAL_WEIGHT_FACTOR = 0.05  # sequential offload keeps about one block of weights on the GPU
SLICING_MIN_SAVING = 0.10  # skip "sliced" in auto unless it saves at least this share of full's peak


@dataclass(frozen=True)
class Shape:
    """What a request's memory use depends on."""

    width: int
    height: int
    batch_size: int
    dtype_bytes: int = 2
    cfg: bool = True
    weights: int = 0  # all modules of the checkpoint, bytes
    largest_module: int = 0  # usually the UNet, bytes

    @property
    def key(self) -> tuple[int, int, int, int]:
        return (self.width, self.height, self.batch_size, self.dtype_bytes)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, Windows, musl)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def return_freed_memory() -> bool:
    """Give the memory of freed CPU tensors back to the OS now; True where that was possible (glibc).

    CPU tensors are plain ``malloc`` blocks. glibc keeps freed blocks in its arenas for reuse, and the denoising
    loop frees many large ones of sizes the VAE decoder then cannot reuse, so without this the decoder's peak
    stacks on top of memory nothing uses any more (measured on the full-size SD1.5 bench model at 256²: peak RSS
    4.85 GiB without, 4.64 GiB with a trim before the decode and between images). One call costs a few
    milliseconds; it is made between phases, never inside the step loop, where re-faulting the returned pages
    would cost more than it saves.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def estimate_peak(rung: str, shape: Shape) -> int:
    """Estimated accelerator bytes at the peak of one batch on ``rung`` (0 for ``cpu``)."""
    if rung == "cpu":
        return 0
    scale = shape.dtype_bytes / 2
    latent_px = (shape.width // 8) * (shape.height // 8)
    unet = latent_px * shape.batch_size * (2 if shape.cfg else 1) * UNET_BYTES_PER_LATENT * scale
    vae = shape.width * shape.height * shape.batch_size * VAE_BYTES_PER_PIXEL * scale
    weights = shape.weights
    if rung == "sliced":
        unet *= SLICED_ACTIVATION_FACTOR
        vae = min(shape.width * shape.height, TILED_VAE_PIXELS) * VAE_BYTES_PER_PIXEL * scale
    elif rung == "offload":
        weights = shape.largest_module
    elif rung == "sequential":
        weights = int(shape.largest_module * SEQUENTIAL_WEIGHT_FACTOR)
        unet *= SLICED_ACTIVATION_FACTOR
        vae = min(shape.width * shape.height, TILED_VAE_PIXELS) * VAE_BYTES_PER_PIXEL * scale
    # UNet activations and the VAE decode do not overlap in time; the larger one sets the peak.
    return int(weights + max(unet, vae) + RESERVE_BYTES)


# --- rung appliers: the only code that calls diffusers' memory switches ---------------------------------


def _place(pipe: Any, device: Any, dtype: Any) -> None:
    """Move the pipeline's modules; convert dtype only when a module differs (diffusers warns on every cast)."""
    import torch

    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    if any(getattr(m, "dtype", dtype) != dtype for m in modules):
        pipe.to(device, dtype) if device is not None else pipe.to(dtype)
    elif device is not None:
        pipe.to(device)


def _set_attention(pipe: Any, choice: DeviceChoice) -> None:
    if choice.xformers:
        try:
            pipe.enable_xformers_memory_efficient_attention()
        except Exception as exc:  # a broken xformers build must not stop generation
            log.warning("xformers could not be enabled (%s); using PyTorch SDPA attention", exc)


def apply_full(pipe: Any, choice: DeviceChoice) -> None:
    _place(pipe, choice.device, choice.dtype)
    _set_attention(pipe, choice)


def apply_sliced(pipe: Any, choice: DeviceChoice) -> None:
    _place(pipe, choice.device, choice.dtype)
    pipe.enable_attention_slicing()
    pipe.vae.enable_slicing()
    pipe.vae.enable_tiling()


def apply_offload(pipe: Any, choice: DeviceChoice) -> None:
    _place(pipe, None, choice.dtype)
    pipe.enable_model_cpu_offload(device=choice.device)
    _set_attention(pipe, choice)


def apply_sequential(pipe: Any, choice: DeviceChoice) -> None:
    _place(pipe, None, choice.dtype)
    pipe.enable_sequential_cpu_offload(device=choice.device)


def apply_cpu(pipe: Any, choice: DeviceChoice) -> None:
    import torch

    _place(pipe, torch.device("cpu"), torch.float32)


def reset(pipe: Any, rung: str | None, choice: DeviceChoice) -> bool:
    """Undo ``rung`` on ``pipe``. Returns True when the pipeline object must be rebuilt from its components.

    After sequential offload diffusers refuses ``.to()`` on the pipeline, so the caller builds a new pipeline
    object over the same (now hook-free) modules rather than trusting the old one.
    """
    if rung in ("offload", "sequential"):
        pipe.remove_all_hooks()
    if rung == "sliced":
        pipe.disable_attention_slicing()
        pipe.vae.disable_slicing()
        pipe.vae.disable_tiling()
        _set_attention(pipe, choice)  # disable_attention_slicing resets to SDPA, dropping xformers
    return rung == "sequential"


DEFAULT_APPLIERS: dict[str, Callable[[Any, DeviceChoice], None]] = {
    "full": apply_full,
    "sliced": apply_sliced,
    "offload": apply_offload,
    "sequential": apply_sequential,
    "cpu": apply_cpu,
}


@dataclass
class Ladder:
    """The rungs available on this device and how to apply each; appliers are injectable for tests."""

    rungs: Sequence[Rung]  # strings are accepted and turned into Rungs
    appliers: dict[str, Callable[[Any, DeviceChoice], None]] = field(default_factory=lambda: dict(DEFAULT_APPLIERS))
    resetter: Callable[[Any, str | None, DeviceChoice], bool] = reset
    measured: dict[tuple[str, tuple[int, int, int, int]], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rungs = tuple(Rung(rung) for rung in self.rungs)

    @classmethod
    def for_device(cls, choice: DeviceChoice) -> Ladder:
        """CUDA: all five rungs. MPS: no accelerate offload hooks there, so full/sliced/cpu. CPU: just ``cpu``."""
        if choice.device.type == "cuda":
            return cls(RUNGS)
        if choice.device.type == "mps":
            return cls((Rung.FULL, Rung.SLICED, Rung.CPU))
        return cls((Rung.CPU,))

    def below(self, rung: str) -> Rung | None:
        """The next rung down, or None at the bottom."""
        index = list(self.rungs).index(rung)
        return self.rungs[index + 1] if index + 1 < len(self.rungs) else None

    def peak(self, rung: str, shape: Shape) -> int:
        """Measured peak for this rung and shape when known, else the estimate."""
        return self.measured.get((rung, shape.key), estimate_peak(rung, shape))

    def record(self, rung: str, shape: Shape, peak_bytes: int | None) -> None:
        if peak_bytes:
            self.measured[(rung, shape.key)] = peak_bytes

    def choose(self, mode: str, shape: Shape, free_bytes: int | None) -> tuple[Rung, str]:
        """``(rung, reason)`` for memory ``mode`` (auto or a rung name) given free accelerator bytes."""
        rungs = list(self.rungs)
        if mode != "auto":
            wanted = START_RUNG.get(mode, "full")
            start = wanted if wanted in rungs else rungs[0]
            if wanted not in rungs:
                return start, f"{wanted} is not available on this device; using {start}"
            return start, f"memory mode set to {mode}"
        if free_bytes is None:
            return rungs[0], "no separate accelerator memory to plan against"
        full_peak = self.peak("full", shape) if "full" in rungs else None
        for rung in rungs:
            peak = self.peak(rung, shape)
            if rung == "sliced" and full_peak and peak > full_peak * (1 - SLICING_MIN_SAVING):
                continue  # measured (or estimated) to save too little for its speed cost
            if rung == "cpu" or peak <= free_bytes:
                return rung, f"auto: estimated peak {peak / 2**30:.1f} GiB, free {free_bytes / 2**30:.1f} GiB"
        return rungs[-1], "auto: nothing fits the free memory; using the lowest rung"

    def apply(self, pipe: Any, rung: str, choice: DeviceChoice) -> None:
        self.appliers[rung](pipe, choice)

    def reset(self, pipe: Any, rung: str | None, choice: DeviceChoice) -> bool:
        return self.resetter(pipe, rung, choice)
