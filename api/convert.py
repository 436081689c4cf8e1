"""A1111 request bodies → ``GenerationRequest``, and ``Result`` → A1111 response bodies.

Pure functions (no HTTP, no manager), so that the mapping is easy to read and to test on its own.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from PIL import Image

from pipelines.errors import InvalidRequest
from pipelines.outputs import encode_png
from pipelines.prompt_parser import apply_named_styles
from pipelines.request import GenerationRequest, Result, open_image
from pipelines.settings import Settings

from .models import ExtrasSingleImageRequest, GenerationFields, Img2ImgRequest, Txt2ImgRequest

log = logging.getLogger("atelier.api")

# GenerationRequest field → the A1111 field a client sent (for error messages).
GENERATION_FIELD_NAMES = {
    "sampler": "sampler_name",
    "batch_count": "n_iter",
    "init_image": "init_images",
    "checkpoint": "override_settings.sd_model_checkpoint",
    "vae": "override_settings.sd_vae",
    "token_merging": "override_settings.token_merging_ratio",
    "deep_cache": "override_settings.deep_cache",
    "deep_cache_interval": "override_settings.deep_cache_interval",
}
UPSCALE_FIELD_NAMES = {"upscaler": "upscaler_1"}

# override_settings keys that Atelier honours for one request, and the GenerationRequest field they set.
_OVERRIDES = {"sd_model_checkpoint": "checkpoint", "sd_vae": "vae"}
# Opt-in speed-ups that trade a little fidelity (A1111's key for token merging; ours for DeepCache).
_SPEEDUP_OVERRIDES = {"token_merging_ratio": "token_merging", "deep_cache": "deep_cache",
                      "deep_cache_interval": "deep_cache_interval"}
# The prompt language's options (A1111's keys): checked here, so that an error names the key the client sent.
PROMPT_OPTIONS = {"CLIP_stop_at_last_layers": "clip_skip", "emphasis": "emphasis"}


def txt2img_request(body: Txt2ImgRequest, settings: Settings) -> GenerationRequest:
    """The GenerationRequest for an A1111 txt2img body; ``InvalidRequest`` names the A1111 field at fault."""
    refuse_unbuilt(body)
    if body.enable_hr:
        raise _not_built(
            "enable_hr",
            "Hires. fix is not available in Atelier; send enable_hr false and upscale "
            "the result with /sdapi/v1/extra-single-image",
        )
    if body.firstpass_image:
        raise _not_built("firstpass_image", "a first-pass image is a Hires. fix feature, which Atelier does not have")
    log_ignored("txt2img", body)
    return GenerationRequest.create(task="txt2img", **_common_fields(body, settings))


def img2img_request(body: Img2ImgRequest, settings: Settings) -> GenerationRequest:
    """The GenerationRequest for an A1111 img2img body (one init image, raw base64 or a ``data:`` URL)."""
    refuse_unbuilt(body)
    if body.mask or body.latent_mask:
        raise _not_built("mask", "inpainting (a mask) is not available in Atelier's img2img yet")
    images = [image for image in (body.init_images or []) if image]
    if not images:
        raise InvalidRequest("init_images: img2img needs one init image (base64 PNG/JPEG/WebP).", "init_images")
    if len(images) > 1:
        raise _not_built("init_images", f"Atelier uses one init image per request (got {len(images)}); send one")
    log_ignored("img2img", body)
    fields = _common_fields(body, settings)
    fields.update(init_image=images[0], resize_mode=0 if body.resize_mode is None else body.resize_mode)
    if body.denoising_strength is not None:
        fields["denoising_strength"] = body.denoising_strength
    return GenerationRequest.create(task="img2img", **fields)


def upscale_request(
    body: ExtrasSingleImageRequest, image: Image.Image, upscaler: str, settings: Settings
) -> GenerationRequest:
    """The GenerationRequest for ``/extra-single-image`` with an SD x4 upscaler (Atelier's optional fields too)."""
    fields: dict[str, Any] = {
        "image": image,
        "upscaler": upscaler,
        "prompt": body.prompt or "",
        "negative_prompt": body.negative_prompt or "",
        "steps": _or(body.steps, settings.default_steps),
        "seed": _or(body.seed, -1),
    }
    if body.noise_level is not None:
        fields["noise_level"] = body.noise_level
    return GenerationRequest.create(task="upscale", **fields)


def _common_fields(body: GenerationFields, settings: Settings) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "prompt": body.prompt or "",
        "negative_prompt": body.negative_prompt or "",
        # A1111: sampler_name wins; sampler_index is its old name.
        "sampler": body.sampler_name or body.sampler_index or settings.default_sampler,
        "scheduler": body.scheduler or "Automatic",
        "steps": _or(body.steps, settings.default_steps),
        "cfg_scale": _or(body.cfg_scale, 7.0),
        "width": _or(body.width, 512),
        "height": _or(body.height, 512),
        "seed": _or(body.seed, -1),
        "batch_count": _or(body.n_iter, 1),
        "batch_size": _or(body.batch_size, 1),
        "styles": list(body.styles or []),
    }
    if body.clip_skip is not None:  # a top-level clip_skip (some clients); override_settings wins below
        fields["clip_skip"] = body.clip_skip
    fields.update(override_fields(body.override_settings))
    return fields


def override_fields(override_settings: dict[str, Any] | None) -> dict[str, Any]:
    """``override_settings`` → ``{"checkpoint": ..., "vae": ..., clip skip, emphasis, speed-ups}`` for one request;
    other keys ignored."""
    out: dict[str, Any] = {}
    for key, value in (override_settings or {}).items():
        if key in PROMPT_OPTIONS and value is not None:
            out[PROMPT_OPTIONS[key]] = checked_option(f"override_settings.{key}", PROMPT_OPTIONS[key], value)
            continue
        if key in _SPEEDUP_OVERRIDES and value is not None:
            # GenerationRequest validates type and range (token_merging 0-0.75) and names the field.
            out[_SPEEDUP_OVERRIDES[key]] = value
            continue
        if key not in _OVERRIDES:
            log.debug("override_settings: ignoring %r (Atelier does not honour it)", key)
            continue
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise InvalidRequest(
                f"override_settings.{key} must be a name (text), got {value!r}.", f"override_settings.{key}"
            )
        # A1111's sd_vae "None" means the checkpoint's own VAE, which Atelier calls "Automatic".
        out[_OVERRIDES[key]] = "Automatic" if key == "sd_vae" and value == "None" else value
    return out


def checked_option(name: str, field: str, value: Any) -> Any:
    """``value`` for the request field ``field``, checked as ``GenerationRequest`` checks it; the error names
    ``name``, the key the client sent (``override_settings.CLIP_stop_at_last_layers``, an /options key)."""
    try:
        GenerationRequest.create(**{field: value})
    except InvalidRequest as exc:
        raise InvalidRequest(exc.message.replace(field, name, 1), name) from None
    return value


def refuse_unbuilt(body: GenerationFields) -> None:
    """Raise ``InvalidRequest`` for a field that asks for a feature Atelier does not have.

    Silently ignoring these would hand back an image that is not what the client asked for.
    """
    if body.restore_faces:
        raise _not_built("restore_faces", "face restoration is not available; send restore_faces false")
    if body.tiling:
        raise _not_built("tiling", "seamless tiling is not available; send tiling false")
    if body.subseed_strength:
        raise _not_built("subseed_strength", "variation seeds are not available; send subseed_strength 0")
    if body.refiner_checkpoint and body.refiner_checkpoint != "None":
        raise _not_built("refiner_checkpoint", "the SDXL refiner pass is not available")
    if body.script_name and body.script_name != "None":
        raise _not_built("script_name", f"A1111 scripts are not available (got '{body.script_name}')")
    active = [name for name, entry in (body.alwayson_scripts or {}).items() if _script_is_active(entry)]
    if active:
        raise _not_built("alwayson_scripts", f"extension scripts are not available (got {', '.join(active)})")


def _script_is_active(entry: Any) -> bool:
    """An alwayson script entry asks for something unless it has no args or is switched off.

    Clients often send disabled entries (``{"args": []}``, ``{"args": [False]}``, ControlNet units with
    ``enabled: false``) to reset an extension; those ask for nothing and are accepted.
    """
    args = entry.get("args") if isinstance(entry, dict) else entry
    if not args:
        return False
    if isinstance(args, list):
        if args[0] is False:
            return False
        if all(isinstance(unit, dict) and unit.get("enabled") is False for unit in args):
            return False
    return True


def _not_built(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{field}: {message}.", field)


def log_ignored(route: str, body: Any) -> None:
    """Log (debug) the fields a client sent that Atelier does not know, as A1111 ignores them."""
    extra = sorted((body.model_extra or {}).keys())
    if extra:
        log.debug("%s: ignoring unknown fields %s", route, ", ".join(extra))


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def echo_parameters(body: GenerationFields) -> dict[str, Any]:
    """A1111's ``parameters``: the request's known fields with defaults; init images only when asked for."""
    params = body.model_dump(include=set(type(body).model_fields))
    if isinstance(body, Img2ImgRequest):
        if not body.include_init_images:
            params["init_images"] = None
        params["mask"] = None
    return json_safe(params)


def json_safe(value: Any) -> Any:
    """``value`` with NaN/Infinity replaced by None: Python's JSON reader accepts them, strict JSON output does not."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def job_timestamp(now: datetime | None = None) -> str:
    """A1111's ``job_timestamp`` format."""
    return (now or datetime.now()).strftime("%Y%m%d%H%M%S")


def generation_info(body: GenerationFields, request: GenerationRequest, result: Result, timestamp: str,
                    settings: Settings | None = None, styles: Mapping[str, Any] | None = None) -> str:
    """A1111's ``info`` JSON string (``Processed.js()``) for a finished run.

    ``settings`` gives the clip skip a request without one ran with; ``styles`` (name → ``PromptStyle``) the
    styles file, for A1111's ``all_prompts`` (the prompts with the request's styles applied)."""
    count = len(result.seeds) or len(result.images)
    seeds = list(result.seeds) or [request.seed] * count
    subseed = _or(body.subseed, -1)
    styled = apply_named_styles(request.prompt, request.negative_prompt, list(request.styles), styles or {})
    clip_skip = request.clip_skip if request.clip_skip is not None else getattr(settings, "clip_skip", 1)
    info: dict[str, Any] = {
        "prompt": request.prompt,
        "all_prompts": [styled.prompt] * count,
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": [styled.negative_prompt] * count,
        "seed": seeds[0] if seeds else request.seed,
        "all_seeds": seeds,
        "subseed": subseed,
        "all_subseeds": [subseed] * count,
        "subseed_strength": 0,
        "width": request.width,
        "height": request.height,
        "sampler_name": request.sampler,
        "scheduler": request.scheduler,
        "cfg_scale": request.cfg_scale,
        "steps": request.steps,
        "batch_size": request.batch_size,
        "n_iter": request.batch_count,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": result.checkpoint or None,
        "sd_model_hash": result.checkpoint_hash or None,
        "sd_vae_name": request.vae if request.vae not in (None, "Automatic") else None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": request.denoising_strength if request.task == "img2img" else None,
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": list(result.infotexts),
        "styles": list(request.styles),
        "job_timestamp": timestamp,
        "clip_skip": int(clip_skip),
        "is_using_inpainting_conditioning": False,
        # Atelier's own keys: how the run went.
        "memory_mode": result.mode,
        "notes": list(result.notes),
        "warnings": list(result.warnings),  # what the request named and did not get (a LoRA or style not found)
        "interrupted": bool(result.cancelled),
    }
    return json.dumps(info, ensure_ascii=False)


def result_images_base64(result: Result) -> list[str]:
    """Base64 PNGs of a result, each carrying the same ``parameters`` text as the file saved on disk."""
    return [image_base64(result, index) for index in range(len(result.images) or len(result.paths))]


def image_base64(result: Result, index: int) -> str:
    """The saved file's bytes when it exists (identical metadata), else the image re-encoded with its infotext."""
    path = result.paths[index] if index < len(result.paths) else None
    if path is not None and path.is_file():
        return base64.b64encode(path.read_bytes()).decode("ascii")
    infotext = result.infotexts[index] if index < len(result.infotexts) else None
    return png_base64(result.images[index], infotext)


def png_base64(image: Image.Image, parameters: str | None = None) -> str:
    """Encode a PIL image as base64 PNG, with A1111's ``parameters`` text chunk when given."""
    return base64.b64encode(encode_png(image, parameters)).decode("ascii")


def open_image_keeping_text(value: str | None, field: str = "image") -> Image.Image:
    """Open base64 (raw or ``data:`` URL) as a PIL image, keeping its text chunks (for PNG Info).

    ``pipelines.request.decode_image`` converts to RGB for generation; PNG Info needs the file as it is.
    """
    if not value:
        raise InvalidRequest(f"{field}: send an image as base64 PNG (raw or a data: URL).", field)
    return open_image(value, field)
