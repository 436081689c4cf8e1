"""Upscale 4x: the request's image through the SD x4 upscale pipeline, tile by tile (``pipelines/upscale.py``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import AtelierError
from ..infotext import Note
from ..upscale import SCALE, count_tiles, upscale_tiled
from .base import BatchOutput, TaskRun


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
    return BatchOutput([upscaled], [Note.param("Tiles", tiles)] if tiles > 1 else [])
