"""Upscale with a pixel upscaler (A1111's extras): a built-in (``None``, ``Lanczos``, ``Nearest``) or an ESRGAN-family
model file, by a factor or to a size, with A1111's "crop to fit". No checkpoint is involved."""

from __future__ import annotations

from PIL import Image

from ..errors import AtelierError
from ..infotext import Note
from ..request import upscale_target
from .base import BatchOutput, TaskRun


def run(task: TaskRun) -> BatchOutput:
    request, upscaler = task.request, task.upscaler
    if upscaler is None:
        raise AtelierError("No upscaler was given for this upscale.", field="upscaler")
    image = request.image
    # 1. check and prepare inputs: the target size (A1111's extras: by a factor, or to a size), Stop between tiles
    width, height, crop = upscale_target(request, upscaler.scale)
    reporter = task.reporter(1, (width, height), previews=False)
    reporter.check_cancel()

    def on_tile(done: int, total: int) -> None:
        if done:
            reporter.on_step(done, total, None)
        else:
            reporter.check_cancel()

    # 2. upscale: "scale to" with crop enlarges to cover the box, then keeps its centre
    if crop:
        ratio = max(width / image.width, height / image.height)
        cover = (max(width, round(image.width * ratio)), max(height, round(image.height * ratio)))
        upscaled = upscaler.resize(image, cover[0], cover[1], on_tile)
        upscaled = crop_centre(upscaled, width, height)
    else:
        upscaled = upscaler.resize(image, width, height, on_tile)
    # 3. notes: A1111's postprocessing keys
    notes = [Note.param("Postprocess upscaler", upscaler.name)]
    if request.upscale_width or request.upscale_height:
        notes.insert(0, Note.param("Postprocess upscale to", f"{width}x{height}"))
        if crop:
            notes.append(Note.param("Postprocess crop to", f"{width}x{height}"))
    else:
        scale = request.upscale_scale if request.upscale_scale is not None else upscaler.scale
        notes.insert(0, Note.param("Postprocess upscale by", f"{scale:g}"))
    return BatchOutput([upscaled], notes)


def crop_centre(image: Image.Image, width: int, height: int) -> Image.Image:
    """The centre ``width`` x ``height`` of ``image`` (A1111's extras "crop to fit")."""
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))
