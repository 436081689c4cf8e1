"""Inpainting and outpainting: an img2img request with a ``mask`` (white = repaint) or an ``outpaint``, A1111's way
(``StableDiffusionProcessingImg2Img.init``/``sample`` and ``apply_overlay``), over diffusers' inpaint pipelines.

1. check and prepare inputs (``plan``): the picture at its output size (the init image; for an outpaint the canvas
   grown and its new strips filled with edge colours plus noise, the mask reaching into the old picture), the mask
   inverted and blurred; "whole picture" draws all of it at ``width`` x ``height`` (plus the outpaint's sides),
   "only masked" crops the mask's box plus padding, grown to the request's aspect, and draws that at ``width`` x
   ``height``; "fill" (and, as in A1111, the two latent modes) paints the masked area from its surroundings;
2. encode the prompt schedule (``denoise.conditioned_arguments``: A1111's prompt language, LoRAs, AND);
3. masked content: the picture encoded; "latent noise" / "latent nothing" replace the latents under the latent mask
   (A1111's: the blurred mask shrunk to latent size and rounded); a 9-channel checkpoint's masked-picture latents;
4. denoise with the family's inpaint pipeline: a 9-channel checkpoint reads the mask and the masked picture, a
   normal one runs the pipeline's 4-channel path (the kept area re-noised from the picture each step);
5. decode (NaN guard), the kept latents blended back (A1111), then the composite over the picture with the blurred
   mask (doubled for "whole picture"): pixels the blur does not reach are exactly the original's; "only masked"
   pastes its crop back first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .. import masks
from ..infotext import Note
from ..masks import Box
from ..request import GenerationRequest
from . import denoise
from .base import BatchOutput, TaskRun


@dataclass
class InpaintPlan:
    """What one inpaint draws, in pixels."""

    picture: Image.Image  # the output before drawing: the init image (at width x height for "whole picture") or an
    # outpaint's grown canvas
    overlay: Image.Image  # the composite's mask over ``picture``
    box: Box | None  # "only masked": the region of ``picture`` that is drawn
    image: Image.Image  # what the UNet starts from, at the drawing size ("fill" applied)
    mask: Image.Image  # the blurred mask at the drawing size

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def run(task: TaskRun) -> BatchOutput:
    request, pipe = task.request, task.pipe
    # 1. check and prepare inputs: a fresh scheduler, the plan in pixels, the step hook
    pipe.scheduler = task.fresh_scheduler()
    plan = make_plan(request, task.seeds[0])
    reporter = task.reporter(request.steps, plan.size)
    reporter.check_cancel()
    notes: list[Note] = []
    # 2. encode the prompt schedule (over the steps that really run)
    call = denoise.conditioned_arguments(task, reporter, strength=request.denoising_strength)
    # 3. masked content: the starting latents, the latent mask, a 9-channel checkpoint's masked-picture latents
    start, latent_mask = starting_latents(task, plan, notes)
    call.kwargs.update(image=start, mask_image=pipeline_mask(latent_mask, plan.size),
                       masked_image_latents=masked_picture_latents(task, plan, start, notes),
                       strength=request.denoising_strength, width=plan.size[0], height=plan.size[1])
    if request.noise_multiplier != 1.0 and request.denoising_strength == 1.0:  # diffusers draws pure noise then
        call.kwargs["latents"] = request.noise_multiplier * initial_noise(pipe, start, call.kwargs["generator"])
    # 4. denoise with the inpaint pipeline
    # the starting latents above already carry the multiplier: diffusers re-noises the unmasked area with that same
    # noise (the 4-channel path), so the scheduler must not multiply it a second time
    multiplier = 1.0 if "latents" in call.kwargs else request.noise_multiplier
    with denoise.noise_multiplier(pipe.scheduler, multiplier):
        latents = denoise.denoise(pipe, call, request, task.seeds, notes)
    # 5. decode, composite over the picture, paste back
    kept = latent_mask.to(latents.device, latents.dtype)
    latents = latents * kept + start.to(latents.device, latents.dtype) * (1 - kept)
    drawn = denoise.final_decode(task, pipe, latents, notes)
    images = [composite(plan, image) for image in drawn]
    return BatchOutput(images, notes, request=answered_request(request, plan))


def make_plan(request: GenerationRequest, seed: int) -> InpaintPlan:
    """The pixels of an inpaint: see the module's step 1. ``seed`` seeds an outpaint's noise."""
    sides, whole = request.outpaint_sides, not request.inpaint_full_res
    picture, user = request.init_image, request.mask
    if user is not None and request.inpainting_mask_invert:
        user = masks.invert(user)
    blur_x, blur_y = request.mask_blur_xy
    blurred = None  # the user's mask blurred at its own size, then resized (A1111's order in processing.py)
    if whole:  # drawn at width x height (plus the outpaint): resized first, as A1111 resizes image and mask
        picture = masks.resize_image(picture, request.width, request.height, request.resize_mode)
        if user is not None and not sides:
            blurred = masks.resize_image(masks.blur(user, blur_x, blur_y), request.width, request.height,
                                         request.resize_mode)
        user = (masks.resize_image(user, request.width, request.height, request.resize_mode) if user is not None
                else None)
    if sides:
        offset = (sides.left, sides.up)
        picture, strips = masks.outpaint_canvas(picture, sides, seed)
        user = masks.place(user, picture.size, offset) if user is not None else None
        mask = masks.blur(strips if user is None else masks.union(strips, user), blur_x, blur_y)
        # "fill" paints the user's masked area; the new strips are already filled (edge colours plus noise)
        fill_mask = masks.blur(user, blur_x, blur_y) if user is not None else None
    else:
        mask = fill_mask = blurred if blurred is not None else masks.blur(user, blur_x, blur_y)
    if whole:
        box, overlay, image, drawn_mask = None, masks.doubled(mask), picture, mask
    else:  # "only masked": the mask's box plus padding, grown to the request's aspect, drawn at width x height
        region = masks.crop_region(mask, request.inpaint_full_res_padding) or (0, 0, *picture.size)
        box = masks.expand_crop_region(region, request.width, request.height, *picture.size)
        size = (request.width, request.height)
        image = masks.resize_image(picture.crop(box), *size, "resize and fill")
        drawn_mask = masks.resize_image(mask.crop(box), *size, "resize and fill")
        if fill_mask is not None:
            fill_mask = masks.resize_image(fill_mask.crop(box), *size, "resize and fill")
        overlay = mask
    if request.inpainting_fill != masks.ORIGINAL and fill_mask is not None:  # A1111 fills for the latent modes too
        image = masks.fill(image, fill_mask)
    return InpaintPlan(picture=picture, overlay=overlay, box=box, image=image, mask=drawn_mask)


def starting_latents(task: TaskRun, plan: InpaintPlan, notes: list[Note]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(latents, latent_mask)``: the drawing encoded once per image of the batch, with A1111's "latent noise"
    (noise seeded by each image's seed) or "latent nothing" (zeros) under the latent mask; the latent mask is
    A1111's: the blurred mask shrunk to latent size (bicubic) and rounded, ``[1, 1, h, w]``."""
    pipe, request = task.pipe, task.request
    encoded = denoise.encode(pipe, to_pixels(plan.image), notes, upcast=task.spec.is_xl)
    latents = encoded.repeat(len(task.seeds), 1, 1, 1)
    height, width = latents.shape[-2:]
    shrunk = np.asarray(plan.mask.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    latent_mask = torch.from_numpy(np.round(shrunk))[None, None].to(latents.device, latents.dtype)
    if request.inpainting_fill == masks.LATENT_NOISE:
        noise = torch.stack([torch.randn(latents.shape[1:], generator=torch.Generator("cpu").manual_seed(seed))
                             for seed in task.seeds]).to(latents.device, latents.dtype)
        latents = latents * (1 - latent_mask) + noise * latent_mask
    elif request.inpainting_fill == masks.LATENT_NOTHING:
        latents = latents * (1 - latent_mask)
    return latents, latent_mask


def pipeline_mask(latent_mask: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    """The latent mask at the drawing size (each latent pixel an 8x8 block): diffusers binarizes it at 0.5 and shrinks
    it with nearest-neighbour sampling, which gives back exactly A1111's latent mask."""
    small = (latent_mask[0, 0].float().cpu().numpy() * 255).astype(np.uint8)
    return Image.fromarray(small, "L").resize(size, Image.Resampling.NEAREST)


def masked_picture_latents(task: TaskRun, plan: InpaintPlan, start: torch.Tensor, notes: list[Note]) -> torch.Tensor:
    """A 9-channel checkpoint's conditioning picture: the drawing with the masked area (the mask rounded, as A1111's
    conditioning does) blacked out, encoded. A normal checkpoint does not read it: zeros of the right shape, so that
    the pipeline does not encode a second picture for nothing."""
    if int(task.pipe.unet.config.in_channels) != 9:
        return torch.zeros_like(start[:1])
    keep = np.asarray(plan.mask, dtype=np.float32) < masks.MASK_THRESHOLD
    pixels = to_pixels(plan.image) * torch.from_numpy(keep.astype(np.float32))[None, None]
    return denoise.encode(task.pipe, pixels, notes, upcast=task.spec.is_xl)


def initial_noise(pipe: Any, like: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """The noise diffusers' inpaint pipeline would draw at strength 1 (one generator per image, on the CPU)."""
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor(tuple(like.shape), generator=generators, device=pipe._execution_device, dtype=like.dtype)


def composite(plan: InpaintPlan, drawn: Image.Image) -> Image.Image:
    """One drawn picture over the plan's picture: pasted back into its box ("only masked"), then blended in by the
    overlay mask (A1111's ``apply_overlay``)."""
    full = masks.paste_back(plan.picture, drawn, plan.box) if plan.box is not None else drawn
    return masks.composite(plan.picture, full, plan.overlay)


def answered_request(request: GenerationRequest, plan: InpaintPlan) -> GenerationRequest | None:
    """The request the infotext describes: a "whole picture" outpaint was drawn at the grown size, which A1111's
    outpainting writes as its ``Size``; otherwise the request as it came (None)."""
    if request.outpaint is None or plan.box is not None:
        return None
    return request.model_copy(update={"width": plan.size[0], "height": plan.size[1]})


def to_pixels(image: Image.Image) -> torch.Tensor:
    """A PIL picture as ``[1, 3, H, W]`` in [-1, 1] (the VAE's input)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)[None]
