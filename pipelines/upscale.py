"""SD x4 upscale, tiled for large inputs: overlapping tiles, each upscaled by diffusers'
``StableDiffusionUpscalePipeline``, blended back with feathered (linear ramp) weights so seams do not show.

Tile size and overlap are in input pixels. A 1024x1024 input with 128 px tiles and 32 px overlap is 121 tiles of
512x512 output each: the UNet never sees more than one tile, so memory stays flat whatever the input size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from .errors import ModelNotFound

DEFAULT_TILE = 128
DEFAULT_OVERLAP = 32
SCALE = 4
_ALIGN = 8  # the upscaler UNet down-samples 3 times: tile sides must be multiples of 8

NO_UPSCALER_MESSAGE = (
    "No SD x4 upscaler is installed. Download the diffusers folder of stabilityai/stable-diffusion-x4-upscaler "
    "(model_index.json with its unet/, vae/, text_encoder/, tokenizer/, scheduler/, low_res_scheduler/ folders) and "
    "put it in models/upscale_models/ (for example models/upscale_models/stable-diffusion-x4-upscaler/)."
)


def no_upscaler_error() -> ModelNotFound:
    """The error shown when an upscale is asked for and no upscaler model is installed."""
    return ModelNotFound(NO_UPSCALER_MESSAGE, field="upscaler")


@dataclass(frozen=True)
class Tile:
    """One tile's box in input pixels: ``(left, top, right, bottom)``."""

    left: int
    top: int
    right: int
    bottom: int


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile start offsets along one axis: step ``tile - overlap``, the last tile flush with the end."""
    if length <= tile:
        return [0]
    step = max(_ALIGN, tile - overlap)
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return sorted(set(starts))


def plan_tiles(width: int, height: int, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP) -> list[Tile]:
    """Cover a ``width`` x ``height`` image with overlapping tiles (one tile when it fits)."""
    tile = max(_ALIGN, tile // _ALIGN * _ALIGN)
    overlap = min(overlap, tile // 2)
    tiles = []
    for top in _starts(height, tile, overlap):
        for left in _starts(width, tile, overlap):
            tiles.append(Tile(left, top, min(width, left + tile), min(height, top + tile)))
    return tiles


def _pad_to_multiple(image: Image.Image) -> Image.Image:
    """Pad right/bottom by repeating the edge so both sides are multiples of 8 (cropped off afterwards)."""
    w, h = image.size
    pw, ph = -w % _ALIGN, -h % _ALIGN
    if not pw and not ph:
        return image
    canvas = Image.new("RGB", (w + pw, h + ph))
    canvas.paste(image, (0, 0))
    if pw:
        canvas.paste(image.crop((w - 1, 0, w, h)).resize((pw, h)), (w, 0))
    if ph:
        canvas.paste(canvas.crop((0, h - 1, w + pw, h)).resize((w + pw, ph)), (0, h))
    return canvas


def _feather(length: int, ramp_start: bool, ramp_end: bool, ramp: int):
    """1-D blend weights: linear ramps over ``ramp`` px on sides that overlap a neighbour, 1 elsewhere."""
    import numpy as np

    weights = np.ones(length, dtype=np.float32)
    ramp = min(ramp, length // 2)
    if ramp > 0:
        rising = (np.arange(ramp, dtype=np.float32) + 0.5) / ramp
        if ramp_start:
            weights[:ramp] = rising
        if ramp_end:
            weights[-ramp:] = rising[::-1]
    return weights


def upscale_tiled(
    run_tile: Callable[[Image.Image, int], Any],
    image: Image.Image,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
) -> Image.Image:
    """Upscale ``image`` 4x by ``run_tile(tile_image, tile_index) -> float array HxWx3 in [0, 1]``, blending tiles."""
    import numpy as np

    original = image.size
    padded = _pad_to_multiple(image.convert("RGB"))
    width, height = padded.size
    tiles = plan_tiles(width, height, tile, overlap)
    if len(tiles) == 1:
        out = np.asarray(run_tile(padded, 0), dtype=np.float32)
        return _to_image(out, original)
    canvas = np.zeros((height * SCALE, width * SCALE, 3), dtype=np.float32)
    weight_sum = np.zeros((height * SCALE, width * SCALE, 1), dtype=np.float32)
    ramp = min(tile, overlap) * SCALE
    for index, box in enumerate(tiles):
        part = np.asarray(run_tile(padded.crop((box.left, box.top, box.right, box.bottom)), index), dtype=np.float32)
        wy = _feather(part.shape[0], box.top > 0, box.bottom < height, ramp)
        wx = _feather(part.shape[1], box.left > 0, box.right < width, ramp)
        weights = (wy[:, None] * wx[None, :])[..., None]
        y0, x0 = box.top * SCALE, box.left * SCALE
        canvas[y0 : y0 + part.shape[0], x0 : x0 + part.shape[1]] += part * weights
        weight_sum[y0 : y0 + part.shape[0], x0 : x0 + part.shape[1]] += weights
    return _to_image(canvas / np.maximum(weight_sum, 1e-6), original)


def _to_image(array: Any, original: tuple[int, int]) -> Image.Image:
    import numpy as np

    pixels = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    image = Image.fromarray(pixels)
    return image.crop((0, 0, original[0] * SCALE, original[1] * SCALE))


def count_tiles(image: Image.Image, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP) -> int:
    """How many pipeline calls ``upscale_tiled`` makes for ``image`` (for progress totals)."""
    w, h = image.size
    return len(plan_tiles(w + (-w % _ALIGN), h + (-h % _ALIGN), tile, overlap))
