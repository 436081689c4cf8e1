"""Image to image: one batch of an img2img request over a prepared diffusers pipeline."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image, ImageOps

from ..infotext import Note
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
    images = denoise.decode(pipe, latents, notes, upcast=task.spec.is_xl)
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
    return denoise.denoise(pipe, call, request, task.seeds, notes)


def resize_init(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """A1111's resize modes for the init image: ``just resize``, ``crop and resize``, ``resize and fill``."""
    if image.size == (width, height):
        return image
    if mode == "crop and resize":
        return ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)
    if mode == "resize and fill":
        scale = min(width / image.width, height / image.height)
        inner = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.LANCZOS)
        canvas = image.resize((width, height), Image.Resampling.LANCZOS)  # stretched edges fill the margins
        canvas.paste(inner, ((width - inner.width) // 2, (height - inner.height) // 2))
        return canvas
    return image.resize((width, height), Image.Resampling.LANCZOS)
