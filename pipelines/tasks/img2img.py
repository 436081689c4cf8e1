"""Image to image: one batch of an img2img request over a prepared diffusers pipeline."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from PIL import Image

from ..depth import depth_from_image
from ..errors import AtelierError
from ..infotext import Note
from ..masks import resize_image
from . import denoise
from .base import BatchOutput, TaskRun


def run(task: TaskRun) -> BatchOutput:
    request, pipe = task.request, task.pipe
    # 1. check and prepare inputs: a fresh scheduler, the step hook, the init image
    pipe.scheduler = task.fresh_scheduler()
    reporter = task.reporter(request.steps, (request.width, request.height))
    reporter.check_cancel()
    init = resize_init(request.init_image, request.width, request.height, request.resize_mode)
    # 2.-3. encode the prompt schedule (over the steps img2img really runs), denoise
    notes: list[Note] = []
    latents = redraw(task, reporter, init, request.denoising_strength, notes)
    # 4. decode
    images = denoise.final_decode(task, pipe, latents, notes)
    return BatchOutput(images, notes)


def redraw(task: TaskRun, reporter: Any, init: Any, strength: float, notes: list[Note]) -> torch.Tensor:
    """The latents of ``task``'s batch redrawn from ``init`` (a PIL image, a list of them, or latents) at
    ``strength``, the scheduler and step hook in place: the prompt schedule encoded over the steps that really run,
    then the denoising call."""
    request, pipe = task.request, task.pipe
    call = denoise.conditioned_arguments(task, reporter, strength=strength)
    call.kwargs.update(image=init, strength=strength)
    if denoise.is_inpaint_model(pipe):  # a 9-channel checkpoint: the whole picture is masked
        first = init[0] if isinstance(init, list) else init
        size = first.size if isinstance(first, Image.Image) else (request.width, request.height)
        call.kwargs.update(mask_image=denoise.whole_picture_mask(size), width=size[0], height=size[1])
    if denoise.is_depth_model(pipe):  # SD 2's depth model: the depth map beside the latents
        call.kwargs.update(depth_map=depth_map(task, init[0] if isinstance(init, list) else init))
    with denoise.noise_multiplier(pipe.scheduler, request.noise_multiplier):
        return denoise.denoise(pipe, call, request, task.seeds, notes)


def depth_map(task: TaskRun, init: Any) -> torch.Tensor:
    """The depth map of a depth-to-image run: the request's uploaded one, else the DPT model's estimate of ``init``
    (``[1, H, W]``; the pipeline scales it to the latents and normalises it)."""
    if task.request.depth_map is not None:
        return depth_from_image(task.request.depth_map)
    if task.depth is None or not isinstance(init, Image.Image):
        raise AtelierError("This depth-to-image checkpoint needs a depth map: upload one, or put a DPT depth model "
                           "into models/depth/.", field="depth_map")
    # the same picture in every batch of a job: estimated once (a DPT call costs about a UNet step)
    key = ("depth map", init.size, hashlib.blake2b(init.tobytes(), digest_size=16).digest())
    if (known := task.job_cache.get(key)) is None:
        known = task.job_cache[key] = task.depth.estimate(init)
    return known


def resize_init(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """A1111's resize modes for the init image: ``just resize``, ``crop and resize``, ``resize and fill``."""
    return resize_image(image, width, height, mode)
