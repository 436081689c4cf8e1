"""Text to image: one batch of a txt2img request over a prepared diffusers pipeline."""

from __future__ import annotations

import torch
from PIL import Image

from ..infotext import Note
from . import denoise
from .base import BatchOutput, TaskRun

GREY = (127, 127, 127)  # what an inpainting checkpoint repaints when it draws from nothing


def run(task: TaskRun) -> BatchOutput:
    request, pipe = task.request, task.pipe
    # 1. check and prepare inputs: a fresh scheduler, the step hook
    pipe.scheduler = task.fresh_scheduler()
    reporter = task.reporter(request.steps, (request.width, request.height))
    reporter.check_cancel()
    # 2.-3. encode the prompt schedule, denoise
    notes: list[Note] = []
    latents = draw(task, reporter, notes)
    # 4. decode
    images = denoise.final_decode(task, pipe, latents, notes)
    return BatchOutput(images, notes)


def draw(task: TaskRun, reporter: object, notes: list[Note]) -> torch.Tensor:
    """The latents of ``task``'s batch drawn from noise (its scheduler and step hook in place): the prompt schedule
    (A1111's prompt language) encoded into the call's arguments, then the denoising call."""
    request, pipe = task.request, task.pipe
    call = denoise.conditioned_arguments(task, reporter)
    if denoise.is_inpaint_model(pipe):  # a 9-channel checkpoint repaints a grey picture, all of it masked
        size = (request.width, request.height)
        call.kwargs.update(image=Image.new("RGB", size, GREY), strength=1.0,
                           mask_image=denoise.whole_picture_mask(size))
    call.kwargs.update(width=request.width, height=request.height)
    return denoise.denoise(pipe, call, request, task.seeds, notes)
