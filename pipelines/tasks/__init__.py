"""One module per task, each a ``run(TaskRun) -> BatchOutput`` that reads top-down like a diffusers ``__call__``
over a pipeline the manager has already checked out and prepared. A new task (inpaint, hires fix, an upscaler
model) is a new module and a new line in ``TASKS``; the others stay as they are."""

from __future__ import annotations

from collections.abc import Callable

from ..request import GenerationRequest
from ..seamless import circular_padding, tiled_modules
from . import hires, img2img, inpaint, pixel_upscale, sd_upscale, txt2img, upscale
from .base import BatchOutput, TaskRun

TASKS: dict[str, Callable[[TaskRun], BatchOutput]] = {
    "txt2img": txt2img.run,
    "img2img": img2img.run,
    "inpaint": inpaint.run,  # img2img with a mask or an outpaint (the family's inpaint pipeline)
    "upscale": upscale.run,  # the SD x4 upscaler (a diffusion model, tiled)
    "hires": hires.run,  # txt2img with enable_hr
    "sd-upscale": sd_upscale.run,  # img2img with A1111's "sd upscale" script
    "pixel-upscale": pixel_upscale.run,  # a built-in or an upscaler model file (no checkpoint)
}


def task_key(request: GenerationRequest, pixel_upscale: bool = False) -> str:
    """The ``TASKS`` entry that runs ``request`` (``pixel_upscale``: its upscaler is not the SD x4 model)."""
    if request.task == "txt2img" and request.enable_hr:
        return "hires"
    if request.inpainting:
        return "inpaint"
    if request.sd_upscale:
        return "sd-upscale"
    if request.task == "upscale" and pixel_upscale:
        return "pixel-upscale"
    return request.task


def run_task(task: TaskRun, key: str | None = None) -> BatchOutput:
    """Run one batch of ``task.request`` with its task's module (``key``: the ``TASKS`` entry; default from the
    request). A ``tiling`` request runs with the UNet's and VAE's convolutions padding circularly, restored after."""
    request = task.request
    tiled = request.tiling and request.task in ("txt2img", "img2img")
    with circular_padding(tiled_modules(task.pipe) if tiled else (), tiled):
        return TASKS[key or task_key(request)](task)


__all__ = ["TASKS", "BatchOutput", "TaskRun", "run_task", "task_key"]
