"""Pixel upscalers as the engine runs them: PIL's built-ins (``None``, ``Lanczos``, ``Nearest``) and the
ESRGAN-family model files spandrel reads, bound to the device the memory ladder runs on.

The models live in a small LRU of their own (``UpscalerLibrary``, two models), not in the checkpoint cache. They are
1–70 MB, where the cache's slots are sized and counted for 2–7 GB checkpoints: an ESRGAN taking the one VRAM slot
would push the SD checkpoint out in the middle of a hires fix, which needs both at once, and the cache's rung set-up
(offload hooks, ``--fast``) means nothing to them. A model is moved to the device for its run
(``upscaler_models.upscale``, tiled, half precision where spandrel allows it, smaller tiles on out-of-memory) and
back to the CPU after it, so the VRAM is the checkpoint's again for the hires pass that follows.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image

from . import upscaler_models as um
from .devices import DeviceChoice
from .errors import ModelNotFound
from .registry import UPSCALER_BUILTIN, UPSCALER_MODEL

log = logging.getLogger(__name__)

KEEP_MODELS = 2
OnTile = Callable[[int, int], None]


@dataclass(frozen=True)
class PixelUpscaler:
    """An upscaler ready to run: ``resize(image, width, height, on_tile)`` gives ``image`` at exactly that size (a
    model runs as many times as needed, then Lanczos finishes, as A1111's upscalers do). ``on_tile(done, total)`` is
    called as tiles finish; what it raises (``Cancelled``) stops the run."""

    name: str
    scale: float
    resize: Callable[[Image.Image, int, int, OnTile | None], Image.Image]


class UpscalerLibrary:
    """The loaded upscaler model files (least recently used out first) and their runs on ``choice``'s device.

    ``tile``/``overlap`` are the model runs' tiles in input pixels (``upscaler_models``' defaults; tests make them
    small)."""

    def __init__(self, choice: Callable[[], DeviceChoice], keep: int = KEEP_MODELS):
        self._choice = choice
        self.keep = max(1, keep)
        self.tile = um.DEFAULT_TILE
        self.overlap = um.DEFAULT_OVERLAP
        self._models: OrderedDict[tuple[str, int, int], um.UpscalerModel] = OrderedDict()
        self.loads = 0  # model files read (for tests and the log)

    def bind(self, info: Any) -> PixelUpscaler:
        """``info`` (a registry upscaler entry: a built-in or a model file) as a ``PixelUpscaler``. A model file is
        loaded at its first run, so a job that is stopped before it needs the model never reads it."""
        family = getattr(info, "family", None)
        if family == UPSCALER_BUILTIN:
            upscaler = _builtin(info.name)
            return PixelUpscaler(info.name, float(upscaler.scale),
                                 lambda image, width, height, on_tile=None: _pil_resize(upscaler, image, width,
                                                                                        height, on_tile))
        if family != UPSCALER_MODEL:
            raise ModelNotFound(f"{info.name} is not a pixel upscaler (a built-in or an upscaler model file).",
                                field="upscaler")

        def resize(image: Image.Image, width: int, height: int, on_tile: OnTile | None = None) -> Image.Image:
            return self._run_model(info, image, width, height, on_tile)

        return PixelUpscaler(info.name, float(getattr(info, "scale", None) or 1), resize)

    def model(self, info: Any) -> um.UpscalerModel:
        """The loaded model of registry entry ``info`` (read on first use, then kept while it is among the last
        ``keep`` used; a changed file is read again)."""
        key = (str(info.path), int(getattr(info, "size", 0) or 0), int(getattr(info, "mtime_ns", 0) or 0))
        model = self._models.get(key)
        if model is None:
            model = um.load_upscaler(info.path)  # ModelLoadError naming the file and the reason
            model.info = replace(model.info, name=info.name)  # the registry's name (its path below the folder)
            self.loads += 1
            log.info("loaded upscaler %s (%s, %gx)", info.name, model.info.architecture, model.scale)
            self._models[key] = model
            while len(self._models) > self.keep:
                _key, old = self._models.popitem(last=False)
                old.descriptor.to("cpu")
        self._models.move_to_end(key)
        return model

    def clear(self) -> None:
        """Forget every loaded model (an unload): their memory goes back once nothing else holds them."""
        for model in self._models.values():
            model.descriptor.to("cpu")
        self._models.clear()

    def names(self) -> list[str]:
        """The model files loaded now, most recently used first."""
        return [model.name for model in reversed(self._models.values())]

    def _run_model(self, info: Any, image: Image.Image, width: int, height: int,
                   on_tile: OnTile | None) -> Image.Image:
        choice = self._choice()
        model = self.model(info)
        try:
            return um.upscale_to_size(model, image, width, height, choice.device, choice.dtype, tile=self.tile,
                                      overlap=self.overlap, on_tile=on_tile)
        finally:
            if choice.device.type != "cpu":
                model.descriptor.to("cpu")  # the VRAM is the checkpoint's again for what follows


def _builtin(name: str) -> um.PilUpscaler:
    """A1111's built-ins: ``None`` resizes with Lanczos (its ``resize_image`` does), the others are PIL's filters."""
    if name.lower() == "none":
        return um.PilUpscaler("None", Image.Resampling.LANCZOS)
    return um.builtin_upscaler(next((known for known in um.BUILTIN_UPSCALERS if known.lower() == name.lower()), name))


def _pil_resize(upscaler: um.PilUpscaler, image: Image.Image, width: int, height: int,
                on_tile: OnTile | None) -> Image.Image:
    if on_tile:
        on_tile(0, 1)
    out = um.upscale_to_size(upscaler, image, width, height)
    if on_tile:
        on_tile(1, 1)
    return out
