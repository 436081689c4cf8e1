"""One module per task, each a ``run(TaskRun) -> BatchOutput`` that reads top-down like a diffusers ``__call__``
over a pipeline the manager has already checked out and prepared. A new task (inpaint, hires fix, an upscaler
model) is a new module and a new line in ``TASKS``; the others stay as they are."""

from __future__ import annotations

from collections.abc import Callable

from . import img2img, txt2img, upscale
from .base import BatchOutput, TaskRun

TASKS: dict[str, Callable[[TaskRun], BatchOutput]] = {
    "txt2img": txt2img.run,
    "img2img": img2img.run,
    "upscale": upscale.run,
}


def run_task(task: TaskRun) -> BatchOutput:
    """Run one batch of ``task.request`` with its task's module."""
    return TASKS[task.request.task](task)


__all__ = ["TASKS", "BatchOutput", "TaskRun", "run_task"]
