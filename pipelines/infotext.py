"""Generation parameters as text, in AUTOMATIC1111's "infotext" format (PNG ``parameters`` chunk, API ``info``).

Format (A1111 ``processing.create_infotext`` / ``infotext_utils.parse_generation_parameters``)::

    <prompt>
    Negative prompt: <negative>
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 512x512, Model hash: 0123456789, Model: name, ...

``k: v`` pairs joined by ", "; a value that contains ``,``, ``:`` or a newline is JSON-quoted. Parsing mirrors
A1111's regular expression, so "Size: 512x512" reads back as ``Size-1``/``Size-2`` like A1111's PNG Info.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .request import GenerationRequest

ATELIER_VERSION = "0.1.0"

_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")


def quote(value: Any) -> str:
    """A1111's ``infotext_utils.quote``: JSON-quote values that would break the ``k: v, k: v`` line."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    """A1111's ``infotext_utils.unquote``."""
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def _fmt_number(value: float) -> str:
    """7.0 -> "7", 7.5 -> "7.5" (A1111 writes CFG scale and strength this way)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def build_infotext(
    prompt: str,
    negative_prompt: str,
    params: dict[str, Any],
) -> str:
    """Join ``prompt``, ``negative_prompt`` and the ordered ``params`` (None values skipped) into A1111 text."""
    pairs = []
    for key, value in params.items():
        if value is None or value == "":
            continue
        value = _fmt_number(value) if isinstance(value, float) else value
        pairs.append(key if key == value else f"{key}: {quote(value)}")
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{', '.join(pairs)}".strip()


def generation_params(
    *,
    steps: int,
    sampler: str,
    schedule: str = "Automatic",
    cfg_scale: float | None,
    seed: int,
    width: int,
    height: int,
    model_hash: str | None = None,
    model: str | None = None,
    vae: str | None = None,
    vae_hash: str | None = None,
    denoising_strength: float | None = None,
    noise_level: int | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ordered parameter dict for ``build_infotext``, in A1111's key order and spelling."""
    params: dict[str, Any] = {
        "Steps": steps,
        "Sampler": sampler,
        "Schedule type": schedule if schedule and schedule != "Automatic" else None,
        "CFG scale": cfg_scale,
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model hash": model_hash,
        "Model": model,
        "VAE hash": vae_hash,
        "VAE": vae,
        "Denoising strength": denoising_strength,
        "Noise level": noise_level,
    }
    params.update(extra or {})
    params["Version"] = f"atelier-{ATELIER_VERSION}"
    return params


@dataclass(frozen=True)
class Note:
    """Something a run tells the artist (shown under the image, returned by the API). Only a note made with
    ``Note.param`` is also written into the image's parameters, as ``key: value``."""

    text: str
    infotext_key: str | None = None
    infotext_value: str | None = None
    warning: bool = False  # something the request asked for and did not get (the API lists these as "warnings")

    @classmethod
    def param(cls, key: str, value: Any) -> Note:
        """A note that is also the infotext pair ``key: value`` (e.g. ``DeepCache: interval 3``)."""
        return cls(f"{key}: {value}", key, str(value))

    @classmethod
    def warn(cls, text: str) -> Note:
        """A warning: the image was made, without something the request named (a LoRA not found)."""
        return cls(text, warning=True)

    def __str__(self) -> str:
        return self.text


def request_infotext(request: GenerationRequest, *, seed: int, size: tuple[int, int], model: str,
                     model_hash: str | None, vae: str | None = None, vae_hash: str | None = None,
                     notes: Iterable[Note] = (), prompt: str | None = None, negative_prompt: str | None = None,
                     postprocess: bool = False) -> str:
    """The infotext of one image of ``request``: A1111's keys for the task, then the notes that are parameters.

    ``size`` is the image's own (an upscale's output size); ``vae`` is an external VAE's name (None: the
    checkpoint's own); ``prompt``/``negative_prompt`` the texts as run (styles applied), else the request's.
    ``postprocess``: an upscale by a pixel upscaler (``postprocess_infotext``)."""
    extra = {note.infotext_key: note.infotext_value for note in notes if note.infotext_key}
    if postprocess:
        return postprocess_infotext(request, size, model, extra)
    if request.task == "upscale":
        params = generation_params(
            steps=request.steps, sampler=request.sampler, schedule=request.scheduler, cfg_scale=request.cfg_scale,
            seed=seed, width=size[0], height=size[1], model=model, model_hash=model_hash,
            noise_level=request.noise_level, extra=extra,
        )
    else:
        hires = request.task == "txt2img" and request.enable_hr
        params = generation_params(
            steps=request.steps, sampler=request.sampler, schedule=request.scheduler, cfg_scale=request.cfg_scale,
            seed=seed, width=request.width, height=request.height, model_hash=model_hash, model=model, vae=vae,
            vae_hash=vae_hash,
            denoising_strength=request.denoising_strength if request.task == "img2img" or hires else None,
            extra={**({"Tiling": "True"} if request.tiling else {}), **(hires_params(request) if hires else {}),
                   **(img2img_params(request) if request.task == "img2img" else {}), **extra},
        )
    return build_infotext(request.prompt if prompt is None else prompt,
                          request.negative_prompt if negative_prompt is None else negative_prompt, params)


def hires_params(request: GenerationRequest) -> dict[str, Any]:
    """A hires fix's keys in A1111's order and spelling (``processing.StableDiffusionProcessingTxt2Img.init``):
    ``Hires sampler``/``Hires schedule type`` when they differ from the first pass's, ``Hires prompt``/``Hires
    negative prompt`` when given, ``Hires upscale`` (or ``Hires resize: WxH`` when a resize size is given),
    ``Hires steps`` when set, ``Hires upscaler``."""
    params: dict[str, Any] = {}
    if request.hr_sampler_name is not None and request.hr_sampler_name != request.sampler:
        params["Hires sampler"] = request.hr_sampler_name
    if request.hr_scheduler is not None and request.hr_scheduler != request.scheduler:
        params["Hires schedule type"] = request.hr_scheduler
    if request.hr_prompt and request.hr_prompt != request.prompt:
        params["Hires prompt"] = request.hr_prompt
    if request.hr_negative_prompt and request.hr_negative_prompt != request.negative_prompt:
        params["Hires negative prompt"] = request.hr_negative_prompt
    if request.hr_resize_x == 0 and request.hr_resize_y == 0:
        params["Hires upscale"] = float(request.hr_scale)
    else:
        params["Hires resize"] = f"{request.hr_resize_x}x{request.hr_resize_y}"
    if request.hr_second_pass_steps:
        params["Hires steps"] = request.hr_second_pass_steps
    params["Hires upscaler"] = request.hr_upscaler
    return params


def img2img_params(request: GenerationRequest) -> dict[str, Any]:
    """An img2img's inpainting keys in A1111's order and spelling (``StableDiffusionProcessingImg2Img.init`` and
    ``sample``): ``Mask mode``, ``Mask blur`` (when blurred the same along x and y), ``Inpaint area: Only masked``,
    ``Masked area padding``, ``Masked content`` (A1111 writes none for "original"); ``Noise multiplier`` when not 1."""
    from .masks import MASKED_CONTENT, ORIGINAL

    params: dict[str, Any] = {}
    if request.inpainting:
        if request.inpainting_mask_invert:
            params["Mask mode"] = "Inpaint not masked"
        blur_x, blur_y = request.mask_blur_xy
        if blur_x == blur_y and blur_x > 0:
            params["Mask blur"] = blur_x
        if request.inpaint_full_res:
            params["Inpaint area"] = "Only masked"
            params["Masked area padding"] = request.inpaint_full_res_padding
        if request.inpainting_fill != ORIGINAL:
            params["Masked content"] = MASKED_CONTENT[request.inpainting_fill]
    if request.noise_multiplier != 1.0:
        params["Noise multiplier"] = float(request.noise_multiplier)
    return params


def postprocess_infotext(request: GenerationRequest, size: tuple[int, int], upscaler: str,
                         extra: dict[str, Any]) -> str:
    """The infotext of a picture a pixel upscaler enlarged (A1111's extras): the source picture's own parameters
    when it carried them, with A1111's ``Postprocess ...`` keys (``extra``) added to their last line; else those keys
    with the size and version."""
    pairs = {key: value for key, value in extra.items() if key}
    pairs.setdefault("Postprocess upscaler", upscaler)
    source = getattr(request.image, "info", {}).get("parameters") if request.image is not None else None
    if isinstance(source, str) and source.strip():
        added = ", ".join(f"{key}: {quote(value)}" for key, value in pairs.items() if value not in (None, ""))
        return f"{source.rstrip()}, {added}"
    params = {"Size": f"{size[0]}x{size[1]}", **pairs, "Version": f"atelier-{ATELIER_VERSION}"}
    return build_infotext("", "", params)


def parse_infotext(text: str) -> dict[str, Any]:
    """Parse A1111 infotext into a dict: ``Prompt``, ``Negative prompt`` and every ``k: v`` of the last line.

    ``Size: WxH`` becomes ``Size-1``/``Size-2`` (as A1111 does, for its "send to txt2img" buttons).
    Text without a parameter line (fewer than 3 pairs) is all prompt.
    """
    res: dict[str, Any] = {}
    prompt = ""
    negative_prompt = ""
    done_with_prompt = False
    *lines, lastline = (text or "").strip().split("\n")
    if len(_RE_PARAM.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt
    for key, value in _RE_PARAM.findall(lastline):
        if value and value[0] == '"' and value[-1] == '"':
            value = unquote(value)
        match = _RE_IMAGESIZE.match(value)
        if match is not None:
            res[f"{key}-1"] = match.group(1)
            res[f"{key}-2"] = match.group(2)
        else:
            res[key] = value
    return res
