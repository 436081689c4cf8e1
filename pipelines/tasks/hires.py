"""Hires fix (A1111's txt2img ``enable_hr``): draw small, enlarge, redraw large.

1. a first pass at ``width`` x ``height`` (txt2img, latents out);
2. the upscale to ``request.hires_size``: in latent space (A1111's six ``Latent …`` modes, ``torch`` interpolation
   with its antialias switch) or in pixels (decode, then a built-in or an ESRGAN-family model), then A1111's centre
   crop when ``hr_resize_x`` and ``hr_resize_y`` ask for another aspect;
3. an img2img pass at the large size with the same seeds and its own steps, denoising strength, sampler, schedule
   and prompts. It runs exactly ``hr_steps`` steps, as A1111 does: its schedule is ``hr_steps / strength`` steps
   long and the pass runs the last ``hr_steps`` of them (diffusers would run ``steps x strength``);
4. decode.

Progress counts the steps of both passes as one (``ProgressEvent.phase`` names the pass) and the ETA weighs the
second pass's steps by its size. Stop during the upscale or the second pass keeps the first pass's picture: it is
returned (and saved) with the infotext of a plain txt2img, and the job ends as cancelled.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from PIL import Image

from ..errors import Cancelled
from ..infotext import Note
from ..request import LATENT_UPSCALE_MODES, GenerationRequest, HiresSize, hires_size
from . import denoise, img2img, txt2img
from .base import BatchOutput, TaskRun

PHASE_FIRST, PHASE_UPSCALE, PHASE_HIRES = "first pass", "upscaling", "hires pass"


def run(task: TaskRun) -> BatchOutput:
    request, pipe = task.request, task.pipe
    size = hires_size(request)
    steps = (request.steps, request.hr_steps if request.denoising_strength > 0 else 0)
    # 1. check and prepare inputs: a fresh scheduler, one step hook counting both passes
    pipe.scheduler = task.fresh_scheduler()
    reporter = task.reporter(sum(steps), (request.width, request.height))
    reporter.total = sum(steps)
    ratio = size.width * size.height / (request.width * request.height)  # a second-pass step in first-pass steps
    reporter.next_pass(PHASE_FIRST, 0, steps[0], pending_cost=steps[1] * ratio, batch_cost=steps[0] + steps[1] * ratio)
    reporter.check_cancel()
    notes: list[Note] = []
    # 2. first pass: txt2img at the base size
    latents = txt2img.draw(task, reporter, notes)
    first_notes = list(notes)
    first_images: list[Image.Image] | None = None
    try:
        # 3. upscale, in latent space or in pixels
        reporter.sink.emit(replace(reporter.sink.latest, phase=PHASE_UPSCALE))
        if request.hr_upscaler in LATENT_UPSCALE_MODES:
            init: Any = upscale_latents(latents, size, request.hr_upscaler)
        else:
            first_images = denoise.decode(pipe, latents, notes, upcast=task.spec.is_xl)
            init = upscale_pixels(task, first_images, size, reporter)
        if not steps[1]:  # denoising strength 0: the upscaled picture as it is
            images = init if isinstance(init, list) else denoise.final_decode(task, pipe, init, notes)
            return BatchOutput(images, notes)
        # 4. second pass: img2img at the large size, same seeds, its own steps, sampler and prompts
        reporter.next_pass(PHASE_HIRES, steps[0], batch_cost=steps[0] / ratio + steps[1])
        second = second_pass(task, size)
        second.pipe.scheduler = second.fresh_scheduler()
        if isinstance(init, torch.Tensor) and denoise.is_inpaint_model(second.pipe):  # an inpainting UNet wants pixels
            init = denoise.decode(second.pipe, init, notes, upcast=task.spec.is_xl)
        hires_latents = img2img.redraw(second, reporter, init, second.request.denoising_strength, notes)
    except Cancelled:
        # Stop after the first pass finished: its picture is kept, with a plain txt2img's infotext
        if first_images is None:
            first_images = denoise.final_decode(task, pipe, latents, first_notes)
        return BatchOutput(first_images, first_notes, cancelled=True,
                           request=request.model_copy(update={"enable_hr": False}))
    # 5. decode
    images = denoise.final_decode(second, second.pipe, hires_latents, notes)
    return BatchOutput(images, notes)


def upscale_latents(latents: torch.Tensor, size: HiresSize, mode_name: str) -> torch.Tensor:
    """A1111's latent upscale: ``torch.nn.functional.interpolate`` to the upscaled size with the mode's filter and
    antialias switch (in fp32: bicubic and antialiasing want it on some devices), then the centre crop."""
    mode = LATENT_UPSCALE_MODES[mode_name]
    target = (size.upscale_height // 8, size.upscale_width // 8)
    antialias = mode.antialias and mode.mode in ("bilinear", "bicubic")
    upscaled = torch.nn.functional.interpolate(latents.float(), size=target, mode=mode.mode, antialias=antialias)
    top, left = size.top // 8, size.left // 8
    upscaled = upscaled[:, :, top:top + size.height // 8, left:left + size.width // 8]
    return upscaled.to(latents.dtype)


def upscale_pixels(task: TaskRun, images: list[Image.Image], size: HiresSize, reporter: Any) -> list[Image.Image]:
    """Each first-pass picture through the request's pixel upscaler (A1111's ``resize_image``: the upscaler, then
    Lanczos to the exact size), then the centre crop. Stop is checked between tiles."""
    if task.upscaler is None:
        raise ValueError("a pixel hires upscale needs TaskRun.upscaler")

    def on_tile(done: int, total: int) -> None:
        reporter.check_cancel()

    box = (size.left, size.top, size.left + size.width, size.top + size.height)
    out = []
    for image in images:
        upscaled = task.upscaler.resize(image, size.upscale_width, size.upscale_height, on_tile)
        out.append(upscaled.crop(box) if size.cropped else upscaled)
    return out


def second_pass(task: TaskRun, size: HiresSize) -> TaskRun:
    """The hires pass as an img2img batch of its own: the checkpoint's img2img pipeline on the same rung, A1111's
    step schedule (``second_pass_schedule``), the hires sampler, schedule and prompts, the same seeds."""
    request = task.request
    steps, strength = second_pass_schedule(request.hr_steps, request.denoising_strength,
                                           int(task.loaded.scheduler_config.get("num_train_timesteps", 1000)))
    fields: dict[str, Any] = dict(task="img2img", enable_hr=False, width=size.width, height=size.height, steps=steps,
                                  denoising_strength=strength, prompt=request.hr_prompt or request.prompt,
                                  negative_prompt=request.hr_negative_prompt or request.negative_prompt)
    if request.hr_sampler_name is not None:
        fields.update(sampler=request.hr_sampler_name, scheduler=request.hr_scheduler or "Automatic")
    second_request: GenerationRequest = request.model_copy(update=fields)
    pipe = task.pipeline_for("img2img") if task.pipeline_for is not None else task.pipe
    return replace(task, request=second_request, pipe=pipe, prompts=task.hires_prompts or task.prompts,
                   job_cache=task.job_cache.setdefault("hires pass", {}))


def second_pass_schedule(steps: int, strength: float, train_steps: int = 1000) -> tuple[int, float]:
    """``(num_inference_steps, strength)`` for diffusers' img2img so that it runs exactly ``steps`` steps from the
    noise level of ``strength``: A1111's hires pass (``setup_img2img_steps`` with steps given) schedules
    ``int(steps / min(strength, 0.999))`` steps and runs the last ``steps``; diffusers runs ``int(n x strength)``
    of ``n``, so ``strength`` is made exactly ``steps / n`` (plus half a step, against rounding down)."""
    scheduled = max(steps, min(train_steps, int(steps / min(strength, 0.999))))
    return scheduled, min(1.0, (steps + 0.5) / scheduled)
