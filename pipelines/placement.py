"""Where a checkpoint's modules run: the memory rung for a request, setting a pipeline up for it, and ``--fast``.

The only owner of a cache entry's applied state (``entry.applied``: which pipeline object the ladder last set up,
on which rung). The cache asks ``reset(entry)`` before it moves or drops an entry; the manager asks ``choose`` and
``prepare`` for each batch. Every diffusers memory switch itself lives in ``memory.py``, the fast paths in
``fast.py``.
"""

from __future__ import annotations

from typing import Any

from . import devices
from .cache import CacheEntry
from .devices import DeviceChoice
from .memory import Ladder, Rung, Shape
from .request import GenerationRequest, hires_size, processing_size
from .settings import MEMORY_MODES, Settings

ON_DEVICE_RUNGS = (Rung.FULL, Rung.SLICED)  # every module on the accelerator, no offload hooks


class Placement:
    """The memory ladder and the fast path applied to cache entries, for one device choice."""

    def __init__(self, settings: Settings, choice: DeviceChoice, ladder: Ladder | None = None):
        self.settings = settings
        self.choice = choice
        self.ladder = ladder or Ladder.for_device(choice)
        self._fast_notes: list[str] = []  # what the last --fast switch-on said, until the job takes them

    # --- choosing -------------------------------------------------------------------------------------------
    def shape(self, entry: CacheEntry, request: GenerationRequest, upscale_tile: int) -> Shape:
        """What the request's memory use depends on (an upscale counts one tile's output, a hires fix its second
        pass)."""
        sizes = entry.module_bytes()
        width, height = processing_size(request)  # a whole-picture outpaint draws the grown canvas
        if request.task == "txt2img" and request.enable_hr:
            size = hires_size(request)
            width, height = max(width, size.width), max(height, size.height)
        if request.task == "upscale" and request.image is not None:
            side = min(upscale_tile, max(request.image.size))
            width = height = side * 4
        import torch

        return Shape(width=width, height=height, batch_size=request.batch_size,
                     dtype_bytes=torch.finfo(self.choice.dtype).bits // 8, cfg=request.cfg_scale > 1,
                     weights=sum(sizes.values()), largest_module=max(sizes.values(), default=0))

    def choose(self, entry: CacheEntry, request: GenerationRequest, upscale_tile: int) -> tuple[Rung, str]:
        """``(rung, reason)`` for this request: the Settings' memory mode, or ``auto``'s estimate against free
        memory. The reason is "" on a CPU, where there is nothing to choose."""
        free, _total = devices.memory_info(self.choice.device)
        mode = self.settings.memory_mode if self.settings.memory_mode in MEMORY_MODES else "auto"
        rung, reason = self.ladder.choose(mode, self.shape(entry, request, upscale_tile), free)
        if len(self.ladder.rungs) == 1 and self.choice.device.type == "cpu":
            reason = ""
        return rung, reason

    def below(self, rung: Rung) -> Rung | None:
        """The next rung down after an out-of-memory error, or None at the bottom."""
        return self.ladder.below(rung)

    def record_peak(self, rung: Rung, shape: Shape) -> None:
        """Remember the measured peak of a finished run, so that ``auto`` plans with it next time."""
        self.ladder.record(rung, shape, devices.peak_memory(self.choice.device))

    # --- preparing ------------------------------------------------------------------------------------------
    def prepare(self, entry: CacheEntry, task: str, rung: Rung, fast_allowed: bool = True) -> Any:
        """The task pipeline over the entry's modules, set up for ``rung`` (undoing the previous set-up first).

        ``fast_allowed`` False keeps ``--fast`` off for this run (a LoRA's layers live in the torch UNet, which a
        converted or compiled copy would bypass)."""
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
            entry.location = str(self.choice.device) if rung in ON_DEVICE_RUNGS else "cpu"
        on_device = rung in ON_DEVICE_RUNGS or self.choice.device.type == "cpu"  # not under offload hooks
        self._sync_fast(entry, pipe if on_device and fast_allowed else None)
        return pipe

    def reset(self, entry: CacheEntry) -> None:
        """Undo the fast path and the rung's set-up on ``entry`` (the cache calls this before a move or a drop)."""
        self._sync_fast(entry, None)
        if entry.applied is None:
            return
        pipe, rung = entry.applied
        entry.applied = None
        if self.ladder.reset(pipe, rung, self.choice):
            entry.drop_pipelines()

    # --- the fast path --------------------------------------------------------------------------------------
    def fast_pending(self, entry: CacheEntry, task: str, fast_allowed: bool = True) -> bool:
        """True when ``prepare`` is about to switch ``--fast`` on: converting or compiling takes minutes, so the
        caller tells the job's watchers first."""
        from . import fast

        pipe = entry.pipelines.get(task)
        return bool(self.settings.fast) and fast_allowed and (pipe is None or not fast.is_fast(pipe))

    def take_notes(self) -> list[str]:
        """The notes of a fresh ``--fast`` switch-on (what was converted, its memory cost, why it fell back)."""
        notes, self._fast_notes = self._fast_notes, []
        return notes

    def _sync_fast(self, entry: CacheEntry, pipe: Any | None) -> None:
        """``--fast`` (pipelines/fast.py) on ``pipe`` when the setting asks for it; off on every other pipeline."""
        from . import fast

        want = pipe if self.settings.fast else None
        for other in list(entry.pipelines.values()):
            if other is not want and fast.is_fast(other):
                fast.disable_fast(other)
        if want is not None and not fast.is_fast(want):
            # On CPU torch's UNet/decoder weights are dropped while OpenVINO serves them, read back from the file.
            self._fast_notes.extend(fast.enable_fast(want, self.choice.device, self.settings.cache_dir,
                                                     readers=entry.weight_readers()))

    # --- the device choice ----------------------------------------------------------------------------------
    def use_xformers(self, wanted: bool) -> DeviceChoice:
        """Switch xformers attention on or off (on CUDA with xformers installed only); returns the new choice.

        Entries set up under the old choice must be reset by the caller (the pipelines carry its attention)."""
        enabled = bool(wanted and self.choice.device.type == "cuda" and devices.xformers_installed())
        self.choice = DeviceChoice(self.choice.device, self.choice.dtype, enabled)
        return self.choice
