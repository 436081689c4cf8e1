"""Checkpoint cache: loaded checkpoints in VRAM slots and RAM slots, least recently used evicted, pinned in use.

One entry = one checkpoint's components (a ``LoadedCheckpoint``). Task pipelines (txt2img, img2img, upscale)
are built on demand as ``Cls(**components)``, so they share the entry's modules: one set of weights in memory.
Tensors are moved, never copied: an entry leaving the VRAM tier is moved to the CPU (``module.to("cpu")``), and
switching back is a move to the GPU, not a file read. On a CPU-only machine the RAM tier is the only tier, and the
entry in use is its own RAM copy.

A new entry is inserted only after its whole load succeeded, so a failed load leaves the cache as it was.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import devices
from .devices import DeviceChoice, total_ram
from .errors import InvalidRequest, ModelLoadError
from .families import FAMILIES, FamilySpec

log = logging.getLogger(__name__)

GIB = 2**30
# Components that are not torch modules or are optional in diffusers pipelines' __init__.
_OPTIONAL_NONE = ("safety_checker", "feature_extractor", "image_encoder", "watermarker")


def family_spec(loaded: Any) -> FamilySpec:
    """The ``FamilySpec`` of a loaded checkpoint (its pipelines per task, preview factors, ...)."""
    return FAMILIES[loaded.family]


class EntryKeeper(Protocol):
    """Who sets entries up for a device (``placement.Placement``): the cache asks it to undo that set-up before it
    moves an entry to the CPU, swaps its VAE or drops it."""

    def reset(self, entry: CacheEntry) -> None: ...


def build_pipeline(class_name: str, components: dict[str, Any]) -> Any:
    """``Cls(**components)`` for diffusers pipeline ``class_name``: shares the modules, copies nothing.

    Never ``from_pipe``: it defaults to fp32 and would convert the shared modules in place.
    """
    import diffusers

    cls = getattr(diffusers, class_name)
    kwargs: dict[str, Any] = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name in components:
            kwargs[name] = components[name]
        elif name == "requires_safety_checker":
            kwargs[name] = False
        elif name in _OPTIONAL_NONE or param.default is inspect.Parameter.empty:
            kwargs[name] = None
    pipe = cls(**kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def module_items(components: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    import torch

    for name, value in components.items():
        if isinstance(value, torch.nn.Module):
            yield name, value


@dataclass
class CacheEntry:
    """One loaded checkpoint: its components, the task pipelines built over them, where its tensors are."""

    key: str
    loaded: Any  # LoadedCheckpoint
    location: str = "cpu"  # "cpu" or the accelerator's device string
    pins: int = 0
    last_used: float = field(default_factory=time.monotonic)
    pipelines: dict[str, Any] = field(default_factory=dict)
    applied: tuple[Any, str] | None = None  # (pipeline object, rung) the memory ladder last set up
    vae_key: str | None = None  # external VAE in use (None: the checkpoint's own)
    own_vae: Any = None
    loras: OrderedDict[str, str] = field(default_factory=OrderedDict)  # LoRA adapters in the modules (networks.py)

    def __post_init__(self) -> None:
        self.own_vae = self.components.get("vae")

    @property
    def components(self) -> dict[str, Any]:
        return self.loaded.components

    @property
    def name(self) -> str:
        return self.loaded.info.name

    @property
    def kind(self) -> str:
        """The model's kind in the registry: "checkpoint" or "upscaler"."""
        return getattr(self.loaded.info, "kind", "checkpoint")

    @property
    def family(self) -> str:
        return str(self.loaded.family)

    @property
    def nbytes(self) -> int:
        return int(getattr(self.loaded, "nbytes", 0) or 0)

    def module_bytes(self) -> dict[str, int]:
        """Bytes per torch module (for the memory estimate's largest-module figure)."""
        return {
            name: sum(p.numel() * p.element_size() for p in mod.parameters())
            for name, mod in module_items(self.components)
        }

    def pipeline_for(self, task: str) -> Any:
        """The diffusers pipeline for ``task`` over this entry's modules (built once, then reused)."""
        if task not in self.pipelines:
            names = family_spec(self.loaded).pipelines
            if task not in names:
                raise InvalidRequest(f"Checkpoint '{self.name}' cannot run {task}.", field="checkpoint")
            extra = dict(getattr(self.loaded, "pipeline_kwargs", None) or {})  # e.g. the x4's max_noise_level
            self.pipelines[task] = build_pipeline(names[task], {**extra, **self.components})
        return self.pipelines[task]

    def weight_readers(self) -> dict[str, Callable[[Any], dict[str, Any]]]:
        """``{"unet": read, "vae": read}``: ``read(dtype)`` builds that module again from the checkpoint's file and
        returns its tensors (``loaders.load_module_state``), so that ``--fast`` may drop torch's copy while OpenVINO
        serves it. Only modules the file holds: no reader for an external VAE in use, none for a model not loaded
        from a file (test stand-ins)."""
        from .loaders import LoadedCheckpoint, load_module_state

        if not isinstance(self.loaded, LoadedCheckpoint):
            return {}
        info = self.loaded.info
        names = ["unet"] + (["vae"] if self.components.get("vae") is self.own_vae else [])
        return {name: (lambda dtype, name=name: load_module_state(info, name, dtype)) for name in names
                if self.components.get(name) is not None}

    def drop_pipelines(self) -> None:
        """Forget the pipeline objects (modules stay); they are rebuilt on next use. Whatever set them up for a
        device (``EntryKeeper.reset``) has undone that first."""
        self.pipelines.clear()

    def set_vae(self, vae: Any | None, key: str | None) -> None:
        """Use ``vae`` (an external VAE module) or, with None, the checkpoint's own VAE."""
        if key == self.vae_key:
            return
        self.components["vae"] = vae if vae is not None else self.own_vae
        self.vae_key = key
        self.drop_pipelines()  # pipelines hold the old VAE as a registered module

    def move(self, device: Any) -> None:
        """Move every module (and any external VAE in use) to ``device``: a tensor move, never a file read."""
        for _, module in module_items(self.components):
            module.to(device)
        if str(device) == "cpu" and self.own_vae is not None and self.own_vae is not self.components.get("vae"):
            self.own_vae.to(device)  # the checkpoint's own VAE, unused while an external one is in place
        self.location = str(device)


class CheckpointCache:
    """LRU cache of loaded checkpoints with a VRAM tier and a RAM tier.

    ``checkout(info)`` pins an entry while a generation uses it; only unpinned entries are evicted.
    ``loader(info, dtype)`` (``loaders.load_components``) and ``vae_loader(info, dtype, loaded_checkpoint)`` are
    injectable.
    """

    def __init__(
        self,
        loader: Callable[..., Any],
        choice: DeviceChoice,
        vram_slots: int = 1,
        ram_slots: int = 0,
        vae_loader: Callable[..., Any] | None = None,
        keeper: EntryKeeper | None = None,
    ):
        self.loader = loader
        self.vae_loader = vae_loader
        self.choice = choice
        self.vram_slots = max(1, vram_slots)
        self.ram_slots = ram_slots
        self.keeper = keeper  # undoes the memory ladder's and the fast path's set-up before an entry moves or goes
        self.entries: OrderedDict[str, CacheEntry] = OrderedDict()  # oldest first
        self.vaes: OrderedDict[str, Any] = OrderedDict()
        self.loads = 0  # file loads done (checkpoints), for status and tests
        self._lock = threading.RLock()

    # --- sizing ---------------------------------------------------------------------------------------------
    @property
    def on_accelerator(self) -> bool:
        return self.choice.device.type != "cpu"

    def ram_slot_count(self) -> int:
        """RAM slots (entries kept on the CPU beside those on the GPU); 0 in settings means: from total RAM."""
        if self.ram_slots > 0:
            return self.ram_slots
        # InvokeAI's heuristic for the RAM budget (half the RAM minus 2 GiB), in ~4 GiB SD 1.5 checkpoints.
        budget = max(0, total_ram() // 2 - 2 * GIB)
        return max(1, min(4, budget // (4 * GIB)))

    def capacity(self) -> int:
        """How many checkpoints may stay loaded at once."""
        if self.on_accelerator:
            return self.vram_slots + self.ram_slot_count()
        return max(1, self.ram_slot_count())

    def resize(self, vram_slots: int | None = None, ram_slots: int | None = None) -> None:
        """Change the slot counts; evicts at once what no longer fits."""
        with self._lock:
            if vram_slots is not None:
                self.vram_slots = max(1, int(vram_slots))
            if ram_slots is not None:
                self.ram_slots = max(0, int(ram_slots))
            self._evict()

    # --- use ------------------------------------------------------------------------------------------------
    @contextmanager
    def checkout(self, info: Any, vae_info: Any | None = None) -> Iterator[CacheEntry]:
        """Pin the entry for checkpoint ``info`` (loading it on a miss) with ``vae_info``'s VAE in place."""
        entry = self._get_or_load(info)
        with self._lock:
            entry.pins += 1
            entry.last_used = time.monotonic()
            self.entries.move_to_end(entry.key)
            try:
                self._use_vae(entry, vae_info)
                self._evict(incoming=entry)
            except BaseException:
                entry.pins -= 1
                raise
        try:
            yield entry
        finally:
            with self._lock:
                entry.pins -= 1

    def _get_or_load(self, info: Any) -> CacheEntry:
        """The cached entry, or a new one loaded outside the lock (status calls stay answered during a load).

        Only the device's one worker thread checks out, so two loads of one checkpoint never race.
        """
        key = str(getattr(info, "path", info))
        with self._lock:
            entry = self.entries.get(key)
        if entry is not None:
            return entry
        started = time.monotonic()
        loaded = self.loader(info, self.choice.dtype)  # raises ModelLoadError; the cache is untouched then
        entry = CacheEntry(key=key, loaded=loaded)
        with self._lock:
            self.loads += 1
            self.entries[key] = entry
        log.info("loaded %s (%s, %.1f GiB) in %.1f s", entry.name, entry.family, entry.nbytes / GIB,
                 time.monotonic() - started)
        return entry

    def _use_vae(self, entry: CacheEntry, vae_info: Any | None) -> None:
        if vae_info is None:
            if entry.vae_key is not None:
                self._reset(entry)  # the pipelines over the external VAE are dropped: undo their set-up
            entry.set_vae(None, None)
            return
        # One VAE file may be configured differently per family group, so the family is part of the key.
        key = f"{getattr(vae_info, 'path', vae_info)}|{entry.family}"
        if key == entry.vae_key:
            return
        vae = self.vaes.get(key)
        if vae is None:
            if self.vae_loader is None:
                raise ModelLoadError("This build cannot load external VAEs.", field="vae")
            vae = self.vae_loader(vae_info, self.choice.dtype, entry.loaded)  # raises ModelLoadError if unfit
            self.vaes[key] = vae
            while len(self.vaes) > 2:  # external VAEs are small; keep the last two
                self.vaes.popitem(last=False)
        self._reset(entry)
        vae.to(entry.location if entry.location != "cpu" else "cpu")
        entry.set_vae(vae, key)

    def _evict(self, incoming: CacheEntry | None = None) -> None:
        """Enforce the tiers: at most ``vram_slots`` entries on the GPU, at most ``capacity()`` loaded.

        ``incoming`` is the entry being checked out: it is about to take a VRAM slot, so others make room first.
        """
        cap = self.capacity()
        for key in list(self.entries):
            if len(self.entries) <= cap:
                break
            entry = self.entries[key]
            if entry.pins:
                continue
            self._release(entry)
            del self.entries[key]
            log.info("unloaded %s (cache holds %d)", entry.name, cap)
        if not self.on_accelerator:
            return
        on_gpu = [e for e in self.entries.values() if e.location != "cpu" and e is not incoming]
        allowed = self.vram_slots - (1 if incoming is not None else 0)
        for entry in on_gpu[: max(0, len(on_gpu) - allowed)]:
            if not entry.pins:
                self._to_ram(entry)

    def _reset(self, entry: CacheEntry) -> None:
        if self.keeper is not None:
            self.keeper.reset(entry)

    def _to_ram(self, entry: CacheEntry) -> None:
        self._reset(entry)
        entry.move("cpu")
        devices.free_memory(self.choice.device)

    def _release(self, entry: CacheEntry) -> None:
        self._reset(entry)
        entry.drop_pipelines()
        if entry.location != "cpu":
            entry.move("cpu")

    def clear(self) -> list[str]:
        """Drop every entry not in use and the external VAEs, giving their VRAM and RAM back (an unload); returns the
        names dropped. The next checkout loads again."""
        dropped = []
        with self._lock:
            for key, entry in list(self.entries.items()):
                if entry.pins:
                    continue
                self._release(entry)
                del self.entries[key]
                dropped.append(entry.name)
            self.vaes.clear()
        devices.free_memory(self.choice.device)
        return dropped

    def reset_unpinned(self) -> None:
        """Undo every unused entry's device set-up (after the device choice changed: xformers on or off)."""
        with self._lock:
            for entry in list(self.entries.values()):
                if not entry.pins:
                    self._reset(entry)

    # --- facts ----------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Loaded checkpoint names, most recently used first."""
        with self._lock:
            return [e.name for e in reversed(self.entries.values())]

    def current(self, kind: str | None = None) -> CacheEntry | None:
        """The most recently used entry, or the most recent of one ``kind`` ("checkpoint", "upscaler")."""
        with self._lock:
            return next((e for e in reversed(self.entries.values()) if kind is None or e.kind == kind), None)

    def get(self, info: Any) -> CacheEntry | None:
        return self.entries.get(str(getattr(info, "path", info)))
