"""Upscale 4x: the request's image through the SD x4 upscale pipeline, tile by tile (``pipelines/upscale.py``); a
request that names a scale or a size gets the 4x picture resized to it with Lanczos (A1111's extras do the same
after a model of another scale)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import AtelierError
from ..infotext import Note
from ..request import upscale_target
from ..upscale import SCALE, count_tiles, upscale_tiled
from .base import BatchOutput, TaskRun
from .pixel_upscale import crop_centre


def run(task: TaskRun) -> BatchOutput:
    request, pipe = task.request, task.pipe
    image, seed = request.image, task.seeds[0]
    # 1. check and prepare inputs: progress counts the steps of every tile; x4 latents have no cheap preview
    tiles = count_tiles(image, task.tile, task.overlap)
    reporter = task.reporter(request.steps * tiles, (image.width * SCALE, image.height * SCALE), previews=False)
    reporter.check_cancel()
    pipe.scheduler = task.fresh_scheduler()

    # 2. one tile: the pipeline call, its noise seeded alike for every tile
    def run_tile(tile_image: Any, index: int) -> np.ndarray:
        reporter.offset = index * request.steps
        generator = torch.Generator("cpu").manual_seed(seed)
        try:
            out = pipe(
                prompt=request.prompt, negative_prompt=request.negative_prompt or None, image=tile_image,
                num_inference_steps=request.steps, guidance_scale=request.cfg_scale,
                noise_level=request.noise_level, generator=generator, output_type="np",
                callback=reporter.legacy, callback_steps=1,
            )
        finally:
            pipe.maybe_free_model_hooks()
        array = out.images[0]
        if bool(np.isnan(array).any()):
            raise AtelierError("The upscaler produced NaN values; try --precision fp32.", field="upscaler")
        return array

    # 3. every tile, blended back into one picture
    upscaled = upscale_tiled(run_tile, image, task.tile, task.overlap)
    # 4. the size the request asked for, when it named one (else the model's 4x)
    if request.upscale_scale is not None or request.upscale_width or request.upscale_height:
        width, height, crop = upscale_target(request, SCALE)
        if crop:
            ratio = max(width / upscaled.width, height / upscaled.height)
            cover = (max(width, round(upscaled.width * ratio)), max(height, round(upscaled.height * ratio)))
            upscaled = crop_centre(upscaled.resize(cover, Image.Resampling.LANCZOS), width, height)
        elif upscaled.size != (width, height):
            upscaled = upscaled.resize((width, height), Image.Resampling.LANCZOS)
    return BatchOutput([upscaled], [Note.param("Tiles", tiles)] if tiles > 1 else [])
