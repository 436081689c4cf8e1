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
from pipelines.infotext import hires_params, img2img_params
from pipelines.outputs import encode_png
from pipelines.prompt_parser import apply_named_styles
from pipelines.request import (
    SCRIPT_NAMES,
    SD_UPSCALE,
    GenerationRequest,
    Result,
    firstphase_fields,
    open_image,
    sd_upscale_fields,
)
from pipelines.settings import Settings

from .lenient import as_bool, drawn_schedule, unknown_field_warnings
from .models import ExtrasBaseRequest, GenerationFields, Img2ImgRequest, Txt2ImgRequest

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
    "fast_decode": "override_settings.fast_decode",
    # A1111's SD upscale script_args: [info, tile_overlap, upscaler, scale_factor]
    "sd_upscale_overlap": "script_args[1]",
    "sd_upscale_upscaler": "script_args[2]",
    "sd_upscale_scale": "script_args[3]",
}
# /extra-single-image and /extra-batch-images: the request's upscale fields → A1111's extras fields
UPSCALE_FIELD_NAMES = {
    "upscaler": "upscaler_1",
    "upscale_scale": "upscaling_resize",
    "upscale_width": "upscaling_resize_w",
    "upscale_height": "upscaling_resize_h",
}
SECOND_UPSCALER_FIELD_NAMES = {**UPSCALE_FIELD_NAMES, "upscaler": "upscaler_2"}
# The hires fix's strength when a client sends none: A1111's API default (StableDiffusionProcessingTxt2Img's 0.75;
# its UI and webuiapi send 0.7 themselves).
HIRES_DENOISING_STRENGTH = 0.75
# A1111's "same checkpoint" values of hr_checkpoint_name
SAME_CHECKPOINT = ("", "none", "use same checkpoint")

# override_settings keys that Atelier honours for one request, and the GenerationRequest field they set.
_OVERRIDES = {"sd_model_checkpoint": "checkpoint", "sd_vae": "vae"}
# Opt-in speed-ups that trade a little fidelity (A1111's key for token merging; ours for DeepCache).
SPEEDUP_OVERRIDES = {"token_merging_ratio": "token_merging", "deep_cache": "deep_cache",
                      "deep_cache_interval": "deep_cache_interval", "fast_decode": "fast_decode"}
# The prompt language's options (A1111's keys): checked here, so that an error names the key the client sent.
PROMPT_OPTIONS = {"CLIP_stop_at_last_layers": "clip_skip", "emphasis": "emphasis"}


def txt2img_request(body: Txt2ImgRequest, settings: Settings) -> GenerationRequest:
    """The GenerationRequest for an A1111 txt2img body (the hires fix's fields too); ``InvalidRequest`` names the
    A1111 field at fault."""
    refuse_unbuilt(body)
    if body.firstpass_image:
        raise _not_built("firstpass_image", "a first pass made elsewhere is not available; send it to img2img instead")
    if body.script_name and body.script_name.strip().lower() not in ("", "none"):
        raise unknown_script(body.script_name, "txt2img")
    log_ignored("txt2img", body)
    fields = _common_fields(body, settings)
    # A1111's legacy firstphase_width/height: the first pass at that size, width x height its hires size
    fields.update(firstphase_fields(fields["width"], fields["height"], body.firstphase_width or 0,
                                    body.firstphase_height or 0))
    if body.enable_hr:
        fields.update(hires_fields(body))
    return GenerationRequest.create(task="txt2img", **fields)


def hires_fields(body: Txt2ImgRequest) -> dict[str, Any]:
    """A1111's hires fix fields as request fields: ``None`` means A1111's default (scale 2, the "Latent" upscaler,
    as many steps as the first pass, strength 0.7, the first pass's sampler and prompts)."""
    checkpoint = (body.hr_checkpoint_name or "").strip()
    if checkpoint.lower() not in SAME_CHECKPOINT:
        raise _not_built("hr_checkpoint_name", "a second checkpoint for the hires pass is not available; send "
                         "'Use same checkpoint'")
    fields: dict[str, Any] = {
        "enable_hr": True,
        "hr_scale": _or(body.hr_scale, 2.0),
        "hr_upscaler": body.hr_upscaler or "Latent",
        "hr_second_pass_steps": _or(body.hr_second_pass_steps, 0),
        "hr_resize_x": _or(body.hr_resize_x, 0),
        "hr_resize_y": _or(body.hr_resize_y, 0),
        "hr_sampler_name": body.hr_sampler_name,
        "hr_scheduler": drawn_schedule(body.hr_scheduler),
        "hr_prompt": body.hr_prompt or "",
        "hr_negative_prompt": body.hr_negative_prompt or "",
        "denoising_strength": _or(body.denoising_strength, HIRES_DENOISING_STRENGTH),
    }
    if body.firstphase_width or body.firstphase_height:  # the legacy fields set the hires size already
        fields.pop("hr_resize_x")
        fields.pop("hr_resize_y")
    return fields


def img2img_request(body: Img2ImgRequest, settings: Settings,
                    upscaler_names: list[str] | None = None) -> GenerationRequest:
    """The GenerationRequest for an A1111 img2img body (one init image, raw base64 or a ``data:`` URL), with A1111's
    SD upscale script when ``script_name`` asks for it (``upscaler_names``: ``/upscalers``' names, in order, for
    the script's upscaler given as an index)."""
    refuse_unbuilt(body)
    if body.latent_mask:
        raise _not_built("latent_mask", "a separate latent mask is not available; send the mask alone")
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
    fields.update(inpaint_fields(body))
    script = (body.script_name or "").strip().lower()
    if script not in ("", "none"):
        if script not in SCRIPT_NAMES:
            raise unknown_script(body.script_name or "", "img2img")
        fields.update(script_fields(script, body.script_args, upscaler_names or []))
    return GenerationRequest.create(task="img2img", **fields)


def inpaint_fields(body: Img2ImgRequest) -> dict[str, Any]:
    """A1111's inpainting fields as request fields, with the defaults of A1111's API (its
    ``StableDiffusionProcessingImg2Img``, not its UI): blur 4 along x and y, masked content 0 ("fill"), "Only masked"
    on with 0 px padding, the mask not inverted; ``mask_blur``, when sent, sets both axes (A1111's setter). A mask of
    "" or null is no mask. Atelier's ``outpaint`` and ``depth_map`` pass through."""
    fields: dict[str, Any] = {
        "inpainting_fill": _or(body.inpainting_fill, 0),
        "inpaint_full_res": _flag(body.inpaint_full_res, True, "inpaint_full_res"),
        "inpaint_full_res_padding": _or(body.inpaint_full_res_padding, 0),
        "inpainting_mask_invert": _flag(body.inpainting_mask_invert, False, "inpainting_mask_invert"),
        "initial_noise_multiplier": body.initial_noise_multiplier,
    }
    if body.mask_blur is not None:
        fields["mask_blur"] = body.mask_blur
    else:
        fields.update(mask_blur_x=_or(body.mask_blur_x, 4), mask_blur_y=_or(body.mask_blur_y, 4))
    if body.mask:
        fields["mask"] = body.mask
    if body.outpaint is not None:
        fields["outpaint"] = {side: value or 0 for side, value in body.outpaint.model_dump().items()}
    if body.depth_map:
        fields["depth_map"] = body.depth_map
    return fields


def _flag(value: bool | int | None, default: bool, name: str) -> bool:
    """A1111's boolean fields, sent as ``true``/``false`` or ``1``/``0`` (``default`` when not sent)."""
    return default if value is None else as_bool(value, name)


def script_fields(script: str, script_args: list[Any] | None, upscaler_names: list[str]) -> dict[str, Any]:
    """``script_args`` of A1111's SD upscale (``[info, tile_overlap, upscaler, scale_factor]``) as request fields; the
    upscaler may be a name or, as A1111's own UI sends it, an index into ``/sdapi/v1/upscalers``."""
    if script != SD_UPSCALE:
        raise unknown_script(script, "img2img")
    if script_args is not None and not isinstance(script_args, list):
        raise InvalidRequest("script_args must be a list: [info, tile_overlap, upscaler, scale_factor].", "script_args")
    fields = sd_upscale_fields(script_args or [])
    upscaler = fields.get("sd_upscale_upscaler")
    if isinstance(upscaler, bool) or (upscaler is not None and not isinstance(upscaler, (int, str))):
        raise InvalidRequest(f"script_args[2] (the upscaler) must be a name or an index of /sdapi/v1/upscalers; "
                             f"got {upscaler!r}.", "script_args[2]")
    if isinstance(upscaler, int):
        if not 0 <= upscaler < len(upscaler_names):
            listed = ", ".join(f"{index}: {name}" for index, name in enumerate(upscaler_names))
            raise InvalidRequest(f"script_args[2] is the upscaler's index in /sdapi/v1/upscalers, 0 to "
                                 f"{len(upscaler_names) - 1} ({listed}); got {upscaler}.", "script_args[2]")
        fields["sd_upscale_upscaler"] = upscaler_names[upscaler]
    return fields


def unknown_script(name: str, route: str) -> InvalidRequest:
    """A script Atelier does not run on ``route``: 422 naming the ones it does."""
    available = list(SCRIPT_NAMES) if route == "img2img" else []
    offer = f"the scripts on {route}: {', '.join(repr(n) for n in available)}" if available else (
        f"{route} runs no scripts ('sd upscale' runs on img2img)")
    return InvalidRequest(f"script_name: A1111 script {name!r} is not available; {offer}.", "script_name")


def upscale_request(body: ExtrasBaseRequest, image: Image.Image, upscaler: str,
                    settings: Settings) -> GenerationRequest:
    """The GenerationRequest for A1111's extras (``/extra-single-image``, each image of ``/extra-batch-images``) with
    ``upscaler``: by ``upscaling_resize`` (``resize_mode`` 0) or to ``upscaling_resize_w`` x ``_h`` (1, cropped to
    that size with ``upscaling_crop``). The SD x4 upscaler reads Atelier's optional prompt fields too."""
    fields: dict[str, Any] = {
        "image": image,
        "upscaler": upscaler,
        "prompt": body.prompt or "",
        "negative_prompt": body.negative_prompt or "",
        "steps": _or(body.steps, settings.default_steps),
        "seed": _or(body.seed, -1),
    }
    mode = _or(body.resize_mode, 0)
    if mode == 1:
        fields.update(upscale_width=_or(body.upscaling_resize_w, 512), upscale_height=_or(body.upscaling_resize_h, 512),
                      upscale_crop=_or(body.upscaling_crop, True))
        if not fields["upscale_width"] or not fields["upscale_height"]:
            missing = "upscaling_resize_w" if not fields["upscale_width"] else "upscaling_resize_h"
            raise InvalidRequest(f"{missing} must be a size in px with resize_mode 1 (got 0).", missing)
    elif mode == 0:
        fields["upscale_scale"] = _or(body.upscaling_resize, 2.0)
    else:
        raise InvalidRequest(f"resize_mode must be 0 (scale by) or 1 (scale to), got {mode!r}.", "resize_mode")
    if body.noise_level is not None:
        fields["noise_level"] = body.noise_level
    return GenerationRequest.create(task="upscale", **fields)


def _common_fields(body: GenerationFields, settings: Settings) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "prompt": body.prompt or "",
        "negative_prompt": body.negative_prompt or "",
        # A1111: sampler_name wins; sampler_index is its old name.
        "sampler": body.sampler_name or body.sampler_index or settings.default_sampler,
        "scheduler": drawn_schedule(body.scheduler) or "Automatic",
        "steps": _or(body.steps, settings.default_steps),
        "cfg_scale": _or(body.cfg_scale, 7.0),
        "width": _or(body.width, 512),
        "height": _or(body.height, 512),
        "seed": _or(body.seed, -1),
        "batch_count": _or(body.n_iter, 1),
        "batch_size": _or(body.batch_size, 1),
        "styles": list(body.styles or []),
        "tiling": bool(body.tiling),
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
        if key in SPEEDUP_OVERRIDES and value is not None:
            # GenerationRequest validates type and range (token_merging 0-0.75) and names the field.
            out[SPEEDUP_OVERRIDES[key]] = value
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
    if body.subseed_strength:
        raise _not_built("subseed_strength", "variation seeds are not available; send subseed_strength 0")
    if body.refiner_checkpoint and body.refiner_checkpoint != "None":
        raise _not_built("refiner_checkpoint", "the SDXL refiner pass is not available")
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
    if isinstance(body, Img2ImgRequest) and not body.include_init_images:  # the mask with the init images, or neither
        params.update(init_images=None, mask=None, depth_map=None)
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
    hires = request.task == "txt2img" and request.enable_hr
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
        "denoising_strength": request.denoising_strength if request.task == "img2img" or hires else None,
        "extra_generation_params": extra_generation_params(request),
        "index_of_first_image": 0,
        "infotexts": list(result.infotexts),
        "styles": list(request.styles),
        "job_timestamp": timestamp,
        "clip_skip": int(clip_skip),
        "is_using_inpainting_conditioning": False,
        # Atelier's own keys: how the run went.
        "memory_mode": result.mode,
        "notes": list(result.notes),
        # what the request named and did not get (a LoRA or style not found), and the fields no one reads
        "warnings": [*unknown_field_warnings(body), *result.warnings],
        "interrupted": bool(result.cancelled),
    }
    return json.dumps(info, ensure_ascii=False)


def extra_generation_params(request: GenerationRequest) -> dict[str, Any]:
    """A1111's ``extra_generation_params``: the hires fix's keys, or the SD upscale script's, or an img2img's mask keys
    (``Mask blur``, ``Inpaint area``, ``Masked area padding``, ...) and its noise multiplier."""
    if request.task == "txt2img" and request.enable_hr:
        return hires_params(request)
    if request.sd_upscale:
        return {"SD upscale overlap": request.sd_upscale_overlap, "SD upscale upscaler": request.sd_upscale_upscaler}
    if request.task == "img2img":
        return img2img_params(request)
    return {}


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
