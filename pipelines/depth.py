"""Depth maps for SD 2's depth-to-image model: estimated by a DPT model folder (``models/depth/``, transformers'
``DPTForDepthEstimation``, loaded offline) or taken from an uploaded picture.

The DPT model lives beside the checkpoint cache, as the pixel upscalers do (``upscalers.py``): one model kept loaded
(DPT-Hybrid is ~0.5 GB), moved to the device for its run and back to the CPU after it, so that the VRAM is the
checkpoint's for the denoising. It runs in fp32 (DPT-Hybrid's batch norms overflow in fp16; diffusers' own
depth-to-image pipeline autocasts for the same reason).

A depth map is a float tensor ``[1, H, W]`` on the CPU, white (large) = near, as DPT predicts inverse depth; the
pipeline scales it to the latents and normalises it to [-1, 1] itself, so any range works.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from .devices import DeviceChoice
from .errors import ModelLoadError

log = logging.getLogger(__name__)

PROCESSOR_FILE = "preprocessor_config.json"


@dataclass(frozen=True)
class DepthEstimator:
    """A DPT model bound to the device: ``estimate(image)`` → the depth tensor ``[1, H, W]`` (CPU, float32)."""

    name: str
    estimate: Callable[[Image.Image], Any]


def depth_from_image(image: Image.Image) -> Any:
    """An uploaded depth map (any mode; ``request.decode_depth_map`` gives ``F``) as the tensor ``[1, H, W]``."""
    import numpy as np
    import torch

    array = np.asarray(image.convert("F"), dtype=np.float32)
    return torch.from_numpy(array.copy())[None]


def load_dpt(path: Path) -> tuple[Any, Any]:
    """``(model, processor)`` of a DPT folder, offline. The processor is the folder's ``preprocessor_config.json``,
    else a ``feature_extractor/`` beside it (a diffusers depth-to-image folder's layout), else DPT's defaults (384²,
    mean and std 0.5: what SD 2's depth model was trained with). Raises ``ModelLoadError`` naming the folder."""
    import torch
    from transformers import DPTForDepthEstimation, DPTImageProcessor

    path = Path(path)
    try:
        model = DPTForDepthEstimation.from_pretrained(str(path), local_files_only=True, dtype=torch.float32).eval()
    except Exception as exc:
        raise ModelLoadError(f"The depth model {path.name} could not be loaded ({str(exc).splitlines()[0][:200]}). "
                             "Put a DPT model folder (config.json and its weights, e.g. Intel/dpt-hybrid-midas) into "
                             "models/depth/, or upload a depth map.", field="depth_map") from None
    for folder in (path, path.parent / "feature_extractor"):
        if (folder / PROCESSOR_FILE).is_file():
            return model, DPTImageProcessor.from_pretrained(str(folder), local_files_only=True)
    return model, DPTImageProcessor()


class DepthLibrary:
    """The loaded DPT model (one at a time) and its runs on ``choice``'s device."""

    def __init__(self, choice: Callable[[], DeviceChoice]):
        self._choice = choice
        self._loaded: tuple[tuple[str, int], Any, Any] | None = None
        self.loads = 0  # folders read (for tests and the log)

    def bind(self, info: Any) -> DepthEstimator:
        """Registry entry ``info`` (a ``models/depth/`` folder) as a ``DepthEstimator``; the folder is read at the
        first estimate, so a job stopped before it never loads it."""
        return DepthEstimator(info.name, lambda image: self._estimate(info, image))

    def clear(self) -> None:
        """Forget the loaded DPT model (an unload); the next estimate reads its folder again."""
        self._loaded = None

    def _model(self, info: Any) -> tuple[Any, Any]:
        key = (str(info.path), int(getattr(info, "mtime_ns", 0) or 0))
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = None  # the old one goes before the new one loads
            model, processor = load_dpt(Path(info.path))
            self._loaded = (key, model, processor)
            self.loads += 1
            log.info("loaded depth model %s", info.name)
        return self._loaded[1], self._loaded[2]

    def _estimate(self, info: Any, image: Image.Image) -> Any:
        import torch

        model, processor = self._model(info)
        device = self._choice().device
        pixels = processor(images=image.convert("RGB"), return_tensors="pt").pixel_values
        model.to(device)
        try:
            with torch.no_grad():
                depth = model(pixels.to(device=device, dtype=torch.float32)).predicted_depth
        finally:
            if device.type != "cpu":
                model.to("cpu")  # the VRAM is the checkpoint's again for the denoising
        return depth.float().cpu()
