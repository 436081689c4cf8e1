"""SD x4 upscale, tiled for large inputs: overlapping tiles, each upscaled by diffusers'
``StableDiffusionUpscalePipeline``, blended back by ``tiles.blend_spans`` so seams do not show.

Tile size and overlap are in input pixels. Tiles are planned evenly (``tiles.plan_spans``, sides multiples of 8: the
x4 UNet down-samples three times), so the work beyond one whole-image run is only the overlaps: a 1024x1024 input
with 128 px tiles and 32 px overlap is 10 x 10 tiles of 104 px. The UNet never sees more than one tile, so memory
stays flat whatever the input size. Blending ramps linearly over the whole overlap (``edge_margin`` 0): each tile is
denoised on its own, so neighbours differ in content, and the longest ramp hides that best (a ramp over the middle
quarter only, right for a convolution network's deterministic tiles, leaves a visible 0.4 brightness step across
8 px where this one spreads it over 32).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image

from .errors import ModelNotFound
from .tiles import Tile, blend_spans, plan_spans

DEFAULT_TILE = 128
DEFAULT_OVERLAP = 32
SCALE = 4
_ALIGN = 8  # the upscaler UNet down-samples 3 times: tile sides must be multiples of 8

NO_UPSCALER_MESSAGE = (
    "No SD x4 upscaler is installed. Download the diffusers folder of stabilityai/stable-diffusion-x4-upscaler "
    "(model_index.json with its unet/, vae/, text_encoder/, tokenizer/, scheduler/, low_res_scheduler/ folders) and "
    "put it in models/upscale_models/ (for example models/upscale_models/stable-diffusion-x4-upscaler/)."
)

__all__ = ["DEFAULT_OVERLAP", "DEFAULT_TILE", "SCALE", "Tile", "count_tiles", "no_upscaler_error", "plan_tiles",
           "upscale_tiled"]


def no_upscaler_error() -> ModelNotFound:
    """The error shown when an upscale is asked for and no upscaler model is installed."""
    return ModelNotFound(NO_UPSCALER_MESSAGE, field="upscaler")


def _spans(width: int, height: int, tile: int, overlap: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    tile = max(_ALIGN, tile // _ALIGN * _ALIGN)
    overlap = min(overlap, tile // 2)
    return plan_spans(width, tile, overlap, _ALIGN), plan_spans(height, tile, overlap, _ALIGN)


def plan_tiles(width: int, height: int, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP) -> list[Tile]:
    """Cover a ``width`` x ``height`` image with overlapping tiles (one tile when it fits), row by row."""
    xs, ys = _spans(width, height, tile, overlap)
    return [Tile(x0, y0, x1, y1) for y0, y1 in ys for x0, x1 in xs]


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


def upscale_tiled(
    run_tile: Callable[[Image.Image, int], Any],
    image: Image.Image,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
) -> Image.Image:
    """Upscale ``image`` 4x by ``run_tile(tile_image, tile_index) -> float array HxWx3 in [0, 1]``, blending tiles."""
    import numpy as np
    import torch

    original = image.size
    padded = _pad_to_multiple(image.convert("RGB"))
    xs, ys = _spans(padded.width, padded.height, tile, overlap)
    index = iter(range(len(xs) * len(ys)))

    def run(box: Tile) -> torch.Tensor:
        part = np.asarray(run_tile(padded.crop((box.left, box.top, box.right, box.bottom)), next(index)),
                          dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(part)).permute(2, 0, 1)

    blended = blend_spans(run, xs, ys, SCALE, edge_margin=0.0)
    return _to_image(blended.permute(1, 2, 0).numpy(), original)


def _to_image(array: Any, original: tuple[int, int]) -> Image.Image:
    import numpy as np

    pixels = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    image = Image.fromarray(pixels)
    return image.crop((0, 0, original[0] * SCALE, original[1] * SCALE))


def count_tiles(image: Image.Image, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP) -> int:
    """How many pipeline calls ``upscale_tiled`` makes for ``image`` (for progress totals)."""
    w, h = image.size
    xs, ys = _spans(w + (-w % _ALIGN), h + (-h % _ALIGN), tile, overlap)
    return len(xs) * len(ys)
