"""The steps txt2img and img2img share: the diffusers call with the request's speed-ups and the NaN guard, and the
VAE decode with its own NaN guard.

The pipeline is called with ``output_type="latent"`` so that the decode is ours: diffusers' SD pipelines would
decode in the VAE's dtype and return NaN (a black image) where an fp16 VAE overflows; here a NaN decode is redone
in fp32 and said so (A1111's automatic ``--no-half-vae``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from PIL import Image

from .. import memory, taesd
from ..conditioning import ConditionedCall, conditioned_call, encode_prompts, model_calls
from ..errors import AtelierError
from ..infotext import Note
from ..request import GenerationRequest
from ..samplers import sampler_call_arguments
from ..speedups import applied_speedups
from .base import TaskRun


def conditioned_arguments(task: TaskRun, reporter: Any, strength: float | None = None) -> ConditionedCall:
    """The pipeline call's arguments for ``task``: the prompts as A1111 reads them (encoded once per job for each
    number of UNet calls), steps, CFG, one generator per image, latents out, the sampler's own arguments (TCD's
    gamma) and the step hook. CFG 1 (``uses_guidance`` False) is one UNet pass per step: diffusers leaves the
    negative pass out, and the negative prompt is not even encoded."""
    request, pipe = task.request, task.pipe
    calls = model_calls(pipe, request.steps, strength)
    guidance = uses_guidance(pipe, request.cfg_scale)
    key = ("conditioning", calls, guidance)
    conditioning = task.job_cache.get(key)
    if conditioning is None:
        conditioning = encode_prompts(pipe, task.loaded.family, task.prompts, calls, task.encode_options,
                                      task.embeddings, guidance)
        task.job_cache[key] = conditioning
    call = conditioned_call(pipe, conditioning, len(task.seeds), guidance, reporter, task.encode_options)
    call.kwargs.update(
        num_inference_steps=request.steps,
        guidance_scale=request.cfg_scale,
        num_images_per_prompt=len(task.seeds),
        generator=task.generators(),
        output_type="latent",
        **sampler_call_arguments(request.sampler),
    )
    call.notes.extend(Note.warn(f"Embedding {name} does not fit this checkpoint (made for another model): its "
                                "name was read as text") for name in conditioning.skipped_embeddings)
    hashes = [(name, task.embedding_hash(name)) for name in conditioning.used_embeddings]
    if hashes:
        call.notes.append(Note.param("TI hashes", ", ".join(f"{name}: {digest}" for name, digest in hashes if digest)))
    return call


def uses_guidance(pipe: Any, cfg_scale: float) -> bool:
    """Classifier-free guidance, as diffusers' SD pipelines decide it (``do_classifier_free_guidance``): CFG above 1
    and a UNet without a guidance embedding (LCM-distilled checkpoints carry ``time_cond_proj_dim``)."""
    return cfg_scale > 1 and getattr(pipe.unet.config, "time_cond_proj_dim", None) is None


def is_inpaint_model(pipe: Any) -> bool:
    """An inpainting checkpoint's pipeline (9-channel UNet): it needs an image and a mask even to draw afresh."""
    return "Inpaint" in type(pipe).__name__


def is_depth_model(pipe: Any) -> bool:
    """A depth-to-image checkpoint's pipeline (5-channel UNet): it needs a depth map beside the init image."""
    return "Depth2Img" in type(pipe).__name__


def whole_picture_mask(size: tuple[int, int]) -> Image.Image:
    """A mask that repaints everything (white), for an inpainting checkpoint used for txt2img or img2img."""
    return Image.new("L", size, 255)


def denoise(pipe: Any, call: ConditionedCall, request: GenerationRequest, seeds: list[int],
            notes: list[Note]) -> torch.Tensor:
    """The pipeline call (latents out); NaN latents from a half-precision UNet are redone once in fp32."""
    notes.extend(call.notes)
    memory.return_freed_memory()  # what the previous batch or job left in the allocator
    latents = _call(pipe, call, request, notes)
    if bool(torch.isnan(latents).any()):
        latents = _retry_in_fp32(pipe, call, request, seeds, notes)
    memory.return_freed_memory()  # the denoising loop's freed activations, before the decoder's peak
    return latents


def decode(pipe: Any, latents: torch.Tensor, notes: list[Note], upcast: bool = False) -> list[Image.Image]:
    """VAE decode with the NaN guard: NaN from a half-precision decode → decode again in fp32, noted.

    ``upcast``: SDXL's VAE overflows in fp16 (``force_upcast`` in its config, which diffusers' SDXL pipelines
    honour), so it decodes in fp32 from the start rather than failing once per image.
    """
    vae = pipe.vae
    if upcast and vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae.to(dtype=torch.float32)
        try:
            images = vae_decode(pipe, latents.float())
        finally:
            vae.to(dtype=torch.float16)
    else:
        images = vae_decode(pipe, latents)
    if bool(torch.isnan(images).any()):
        dtype = vae.dtype
        vae.to(dtype=torch.float32)
        try:
            images = vae_decode(pipe, latents.float())
        finally:
            vae.to(dtype=dtype)
        if bool(torch.isnan(images).any()):
            raise AtelierError("The VAE decoded to NaN (a black image) even in fp32. Choose another VAE.", field="vae")
        notes.append(Note.param("NaN guard", "VAE decoded in fp32"))
    return pipe.image_processor.postprocess(images.float(), output_type="pil")


FAST_DECODE_NOTE = Note("Fast decode (TAESD): decoded by the tiny autoencoder, faster and slightly different from the "
                        "full VAE's picture", "VAE", taesd.TAESD_VAE_NAME)


def final_decode(task: TaskRun, pipe: Any, latents: torch.Tensor, notes: list[Note]) -> list[Image.Image]:
    """The decode that makes the batch's pictures: TAESD when the request asks for ``fast_decode`` and one is
    installed for the checkpoint (noted, and written into the infotext as ``VAE: taesd``), else the VAE with its NaN
    guards (``decode``). A fast decode asked for without a TAESD file is said as a warning."""
    if task.request.fast_decode:
        if task.taesd is not None:
            images = taesd.decode(task.taesd, latents)
            if not bool(torch.isnan(images).any()):
                if FAST_DECODE_NOTE not in notes:
                    notes.append(FAST_DECODE_NOTE)
                return pipe.image_processor.postprocess(images.float(), output_type="pil")
        warning = Note.warn("Fast decode (TAESD) asked for, but no TAESD decoder for this model is installed "
                            "(taesd_decoder / taesdxl_decoder in models/VAE-approx): decoded by the full VAE")
        if task.taesd is not None:
            warning = Note.warn("Fast decode (TAESD) gave NaN: decoded by the full VAE")
        if warning not in notes:
            notes.append(warning)
    return decode(pipe, latents, notes, upcast=task.spec.is_xl)


def encode(pipe: Any, pixels: torch.Tensor, notes: list[Note], upcast: bool = False) -> torch.Tensor:
    """Pixels in [-1, 1] ``[B, 3, H, W]`` → latents (the VAE's mean, scaled as the pipelines scale them; SDXL's
    latents mean/std honoured). NaN from a half-precision encode → encoded again in fp32, noted; ``upcast``: an SDXL VAE
    that overflows in fp16 (``force_upcast``) encodes in fp32 from the start."""
    vae = pipe.vae
    upcast_now = upcast and vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    latents = None if upcast_now else vae_encode(pipe, pixels)
    if latents is not None and not bool(torch.isnan(latents).any()):
        return latents
    dtype = vae.dtype
    vae.to(dtype=torch.float32)
    try:
        retried = vae_encode(pipe, pixels.float())
    finally:
        vae.to(dtype=dtype)
    if bool(torch.isnan(retried).any()):
        raise AtelierError("The VAE encoded the picture to NaN even in fp32. Choose another VAE.", field="vae")
    if latents is not None:
        notes.append(Note.param("NaN guard", "VAE encoded in fp32"))
    return retried


def vae_encode(pipe: Any, pixels: torch.Tensor) -> torch.Tensor:
    """One VAE encode, as ``vae_decode`` undoes it."""
    vae = pipe.vae
    config = vae.config
    with torch.no_grad():
        latents = vae.encode(pixels.to(device=pipe._execution_device, dtype=vae.dtype)).latent_dist.mode()
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        mean_t = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
        std_t = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
        return (latents - mean_t) * config.scaling_factor / std_t
    return latents * config.scaling_factor


@contextmanager
def noise_multiplier(scheduler: Any, factor: float) -> Iterator[None]:
    """A1111's ``initial_noise_multiplier`` for one call: the noise the pipeline adds to the init latents (and, in
    the inpaint pipeline's 4-channel path, to the picture it keeps outside the mask) scaled by ``factor``. The
    request's own fresh scheduler gets an instance-level ``add_noise`` for the call; its class is never touched."""
    if factor == 1.0:
        yield
        return
    plain = type(scheduler).add_noise

    def add_noise(original: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        return plain(scheduler, original, noise * factor, timesteps)

    scheduler.add_noise = add_noise
    try:
        yield
    finally:
        del scheduler.add_noise


def vae_decode(pipe: Any, latents: torch.Tensor) -> torch.Tensor:
    """Latents → image tensor in [-1, 1], as the pipelines do (SDXL's latents mean/std honoured)."""
    vae = pipe.vae
    config = vae.config
    latents = latents.to(device=pipe._execution_device, dtype=vae.dtype)
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        mean_t = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
        std_t = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
        latents = latents * std_t / config.scaling_factor + mean_t
    else:
        latents = latents / config.scaling_factor
    with torch.no_grad():
        return vae.decode(latents, return_dict=False)[0]


def _call(pipe: Any, call: ConditionedCall, request: GenerationRequest, notes: list[Note]) -> torch.Tensor:
    """One diffusers call with the request's speed-ups; the offload hooks are freed even after an error."""
    try:
        with call.running(), applied_speedups(pipe, request) as speed_notes:
            latents = pipe(**call.kwargs).images
        notes.extend(note for note in speed_notes if note not in notes)
        return latents
    finally:
        pipe.maybe_free_model_hooks()


def _retry_in_fp32(pipe: Any, call: ConditionedCall, request: GenerationRequest, seeds: list[int],
                   notes: list[Note]) -> torch.Tensor:
    """NaN from the UNet: one retry in fp32 (when running lower), then a clear error."""
    unet_dtype = pipe.unet.dtype
    if unet_dtype != torch.float32:
        call.kwargs["generator"] = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        pipe.to(dtype=torch.float32)
        try:
            latents = _call(pipe, call, request, notes)
        finally:
            pipe.to(dtype=unet_dtype)
        if not bool(torch.isnan(latents).any()):
            notes.append(Note.param("NaN guard", "UNet ran in fp32"))
            return latents
    raise AtelierError(
        "The model produced NaN values (a black image) even in full precision. The checkpoint may be broken or "
        "need a different VAE or precision; try --precision fp32 or another checkpoint.",
        field="checkpoint",
    )
