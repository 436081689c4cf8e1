"""A1111's SD upscale script (img2img ``script_name: "sd upscale"``): enlarge the init image with a pixel upscaler,
then redraw it with img2img tile by tile and blend the tiles back.

1. the init image through the named upscaler (A1111: by ``sd_upscale_scale``, rounded down to a multiple of 8;
   its "None" leaves the image as it is);
2. tiles of the request's ``width`` x ``height`` (the size the checkpoint draws well at), at least
   ``sd_upscale_overlap`` px apart, spread evenly (``tiles.plan_full_tiles``);
3. each tile redrawn with img2img at the request's steps and denoising strength, every image of the batch at once;
   tile ``i`` uses the seeds plus ``i``, as A1111's script counts its seeds up per tile;
4. the tiles blended with a linear ramp over each overlap (``tiles.blend_spans``).

Progress counts the steps of every tile; Stop stops within a step (no half-finished picture is kept).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from PIL import Image

from ..infotext import Note
from ..request import sd_upscale_size, sd_upscale_tile_size
from ..tiles import Tile, blend_spans, plan_full_spans
from . import denoise, img2img
from .base import BatchOutput, TaskRun


def run(task: TaskRun) -> BatchOutput:
    request, pipe = task.request, task.pipe
    # 1. check and prepare inputs: the enlarged picture, its tiles, one step hook over every tile
    width, height = sd_upscale_size(request)
    tile_w, tile_h = sd_upscale_tile_size(request)
    xs = plan_full_spans(width, tile_w, request.sd_upscale_overlap)
    ys = plan_full_spans(height, tile_h, request.sd_upscale_overlap)
    steps = request.steps_run
    reporter = task.reporter(steps * len(xs) * len(ys), (tile_w, tile_h))
    reporter.total = steps * len(xs) * len(ys)
    reporter.check_cancel()
    picture = enlarge(task, width, height, reporter)
    notes: list[Note] = [Note.param("SD upscale overlap", request.sd_upscale_overlap),
                         Note.param("SD upscale upscaler", task.upscaler.name if task.upscaler else "None")]
    images = len(task.seeds)
    tile_index = iter(range(len(xs) * len(ys)))

    # 2. one tile: img2img over the tile's crop for every image of the batch, decoded
    def run_tile(box: Tile) -> torch.Tensor:
        index = next(tile_index)
        reporter.offset = index * steps
        pipe.scheduler = task.fresh_scheduler()
        seeds = [seed + index for seed in task.seeds]
        tile_task = replace(task, seeds=seeds)
        crop = picture.crop((box.left, box.top, box.right, box.bottom))
        latents = img2img.redraw(tile_task, reporter, [crop] * images, request.denoising_strength, notes)
        decoded = denoise.final_decode(task, pipe, latents, notes)
        return torch.cat([_to_tensor(image) for image in decoded])

    # 3. every tile, blended back into one picture per image of the batch
    blended = blend_spans(run_tile, xs, ys, 1, channels=3 * images, edge_margin=0.0)
    pictures = [_to_image(blended[3 * i:3 * i + 3]) for i in range(images)]
    if len(xs) * len(ys) > 1:
        notes.append(Note("SD upscale tiles: " + str(len(xs) * len(ys))))
    return BatchOutput(pictures, notes)


def enlarge(task: TaskRun, width: int, height: int, reporter: object) -> Image.Image:
    """The init image at ``width`` x ``height`` through the request's upscaler (Lanczos without one)."""
    image = task.request.init_image

    def on_tile(done: int, total: int) -> None:
        reporter.check_cancel()

    if task.upscaler is None:
        return image.resize((width, height), Image.Resampling.LANCZOS)
    return task.upscaler.resize(image, width, height, on_tile).convert("RGB")


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


def _to_image(pixels: torch.Tensor) -> Image.Image:
    array = (pixels.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array)
