"""One typed request for every front door (UI tabs, REST API), and what a run gives back.

Validation happens here, once, and raises ``InvalidRequest`` with a message that names the field and the
allowed range. Names of checkpoints/VAEs are checked later against the registry by the manager.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from .errors import InvalidRequest
from .masks import MASKED_CONTENT, SIDES, Sides, is_empty, read_mask, resize_image
from .masks import invert as invert_mask
from .prompt_encoding import EMPHASIS_MODES
from .samplers import resolve_sampler
from .settings import DEEP_CACHE_INTERVALS, TOKEN_MERGING_MAX

Task = Literal["txt2img", "img2img", "upscale"]
ResizeMode = Literal["just resize", "crop and resize", "resize and fill"]
RESIZE_MODES: tuple[str, ...] = ("just resize", "crop and resize", "resize and fill")

# Limits (DESIGN.md "The flow of one image"). Each field has its range, and the total work of a request has a
# budget (MAX_WORK below), so that the largest request the limits let through still ends in minutes.
MIN_SIZE, MAX_SIZE = 64, 2048
MAX_STEPS = 150
MIN_CFG, MAX_CFG = 1.0, 30.0
MAX_BATCH_SIZE = 8
MAX_BATCH_COUNT = 16
MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 20_000
MAX_UPSCALE_INPUT = 1024  # px per side: 1024² in → 4096² out, processed in tiles
MAX_UPSCALE_OUTPUT = 4096  # px per side of any upscaled picture (Upscale tab, SD upscale, hires fix's intermediate)
MIN_HR_SCALE, MAX_HR_SCALE = 1.0, 4.0
MAX_UPSCALE_SCALE = 8.0  # A1111's extras slider
MAX_SD_UPSCALE_SCALE = 4.0  # A1111's SD upscale script slider
MAX_SD_UPSCALE_OVERLAP = 256
MAX_MASK_BLUR = 64  # A1111's slider
MAX_INPAINT_PADDING = 256  # A1111's "Only masked padding, pixels" slider
MAX_NOISE_MULTIPLIER = 1.5  # A1111's "Noise multiplier for img2img" slider
SD_UPSCALE = "sd upscale"  # A1111's script name (img2img)
SCRIPT_NAMES = (SD_UPSCALE,)


@dataclass(frozen=True)
class LatentUpscaleMode:
    """One of A1111's latent upscale modes for the hires fix: ``torch.nn.functional.interpolate``'s mode and
    antialias switch (antialias only has an effect for bilinear and bicubic)."""

    mode: str
    antialias: bool = False


# A1111's ``shared.latent_upscale_modes``, names and order exactly; "Latent" is its default
LATENT_UPSCALE_MODES: dict[str, LatentUpscaleMode] = {
    "Latent": LatentUpscaleMode("bilinear"),
    "Latent (antialiased)": LatentUpscaleMode("bilinear", True),
    "Latent (bicubic)": LatentUpscaleMode("bicubic"),
    "Latent (bicubic antialiased)": LatentUpscaleMode("bicubic", True),
    "Latent (nearest)": LatentUpscaleMode("nearest"),
    "Latent (nearest-exact)": LatentUpscaleMode("nearest-exact"),
}
# A1111's "use the first pass's" values for the hires sampler and schedule menus
SAME_SAMPLER = ("", "use same sampler")
SAME_SCHEDULER = ("", "use same scheduler")
MAX_NOISE_LEVEL = 350
MAX_CLIP_SKIP = 12  # CLIP-L has 12 layers
MAX_STYLES = 32
# The work budget of one request: width x height x steps run x images, in pixel-steps. The per-field limits alone
# allow 2048² x 150 steps x 128 images, days of work on a CPU. The budget lets everyday batches through (4,096 steps
# of a 512x512 image: 16 x 8 images of 512² at 32 steps, or one 2048² image at 150 steps, two at up to 128) and
# keeps the largest request within two minutes of the demo model on a 2-core CPU (measured: tests/test_fuzz_api.py).
WORK_UNIT_PX = 512 * 512
MAX_WORK = 4096 * WORK_UNIT_PX


def open_image(value: Any, field_name: str = "image") -> Image.Image:
    """Open raw bytes, base64 text or a ``data:`` URL (or pass a PIL image through) as a loaded PIL image,
    exactly as the file is: mode and text chunks kept (PNG Info needs them).

    Pillow's decompression-bomb limit stays in force. Raises ``InvalidRequest`` for anything undecodable.
    """
    if isinstance(value, Image.Image):
        return value
    data: bytes
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("data:"):
            text = text.split(",", 1)[-1]
        try:
            data = base64.b64decode(text + "=" * (-len(text) % 4), validate=False)
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequest(f"{field_name} is not valid base64 image data.", field=field_name) from exc
    else:
        raise InvalidRequest(f"{field_name} must be an image.", field=field_name)
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Image.DecompressionBombError as exc:
        raise InvalidRequest(
            f"{field_name} is too large to decode safely ({exc}). Use an image under 89 megapixels.",
            field=field_name,
        ) from exc
    except Exception as exc:  # PIL raises many types for truncated/garbage data
        raise InvalidRequest(
            f"{field_name} could not be read as an image (PNG, JPEG or WebP expected).", field=field_name
        ) from exc
    return img


def decode_image(value: Any, field_name: str = "init_image") -> Image.Image:
    """Turn a PIL image, raw bytes, base64 text or a ``data:`` URL into an RGB PIL image.

    16-bit, palette, CMYK and transparent images are converted (transparency over white).
    Pillow's decompression-bomb limit stays in force. Raises ``InvalidRequest`` for anything undecodable.
    """
    img = open_image(value, field_name)
    try:
        img = ImageOps.exif_transpose(img) or img
    except Exception:
        pass
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v / 256).convert("L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.width < 8 or img.height < 8:
        raise InvalidRequest(f"{field_name} is too small ({img.width}x{img.height}); use at least 8x8 px.", field_name)
    return img


def decode_mask(value: Any, size: tuple[int, int], resize_mode: str = "just resize") -> Image.Image:
    """An inpainting mask (PIL image, bytes, base64 or a ``data:`` URL) as A1111 reads it (``masks.read_mask``: a
    brush layer's alpha, else its grey level; white = repaint), resized to ``size`` (the init image's) with the
    request's resize mode. Raises ``InvalidRequest`` naming ``mask``."""
    image = open_image(value, "mask")
    try:
        image = ImageOps.exif_transpose(image) or image
    except Exception:
        pass
    mask = read_mask(image)
    return resize_image(mask, size[0], size[1], resize_mode) if mask.size != size else mask


def decode_depth_map(value: Any) -> Image.Image:
    """An uploaded depth map (white = near, as MiDaS/DPT draw them) as a float (``F``) image: 16-bit PNGs keep their
    precision. Raises ``InvalidRequest`` naming ``depth_map``."""
    image = open_image(value, "depth_map")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return image.convert("F") if image.mode in ("I", "F") else image.convert("I").convert("F")
    return image.convert("L").convert("F")


class Outpaint(BaseModel):
    """Atelier's outpainting: px added on each side of the init image (multiples of 8); the new strips, and a seam
    into the old picture, are inpainted."""

    model_config = ConfigDict(extra="forbid")

    left: int = 0
    right: int = 0
    up: int = 0
    down: int = 0

    @field_validator("left", "right", "up", "down")
    @classmethod
    def _side(cls, v: int) -> int:
        if not 0 <= v <= MAX_SIZE:
            raise ValueError(f"must be between 0 and {MAX_SIZE} px (got {v})")
        if v % 8:
            raise ValueError(f"must be a multiple of 8 (got {v}; try {v // 8 * 8})")
        return v

    @property
    def sides(self) -> Sides:
        return Sides(self.left, self.right, self.up, self.down)


def _check_finite(value: Any, name: str) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number")
    return value


class GenerationRequest(BaseModel):
    """Everything one generation needs, for txt2img, img2img and upscale alike.

    Build it with ``GenerationRequest.create(**fields)`` to get ``InvalidRequest`` (a person-readable message
    naming the field) instead of pydantic's ``ValidationError``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", validate_assignment=False)

    task: Task = "txt2img"
    prompt: str = ""
    negative_prompt: str = ""
    sampler: str = "Euler a"
    scheduler: str = "Automatic"
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    seed: int = -1
    batch_count: int = 1
    batch_size: int = 1
    checkpoint: str | None = None  # None: the current default checkpoint
    vae: str | None = None  # None: the current default; "Automatic": the checkpoint's own; else a models/vae file
    # img2img
    init_image: Any = None
    denoising_strength: float = 0.75
    resize_mode: ResizeMode = "just resize"
    # upscale
    image: Any = None
    noise_level: int = 20
    upscaler: str | None = None  # None: the first installed SD x4 upscaler
    # opt-in speed-ups that trade a little fidelity (labelled in the infotext); None: the Settings' value
    deep_cache: bool | None = None
    deep_cache_interval: int | None = None
    token_merging: float | None = None
    fast_decode: bool | None = None  # the final decode by TAESD (models/VAE-approx), when installed
    # the prompt language (A1111's): named styles from the styles file; None: the Settings' value
    styles: list[str] = []
    clip_skip: int | None = None  # A1111's CLIP_stop_at_last_layers
    emphasis: str | None = None  # "Original", "No norm", "Ignore" or "None"
    # seamless tiling (txt2img, img2img): the UNet's and VAE's convolutions pad circularly for this run
    tiling: bool = False
    # hires fix (txt2img, A1111's): a first pass at width x height, an upscale (latent or pixels), then an img2img
    # pass at the large size with the same seeds; ``denoising_strength`` is the second pass's
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str = "Latent"  # a latent mode (``hires.LATENT_UPSCALE_MODES``) or any pixel upscaler's name
    hr_second_pass_steps: int = 0  # 0: as many as ``steps``
    hr_resize_x: int = 0  # 0 and 0: from ``hr_scale``; one of them 0: the other keeps the aspect
    hr_resize_y: int = 0
    hr_sampler_name: str | None = None  # None: the first pass's sampler
    hr_scheduler: str | None = None  # None: the first pass's schedule type
    hr_prompt: str = ""  # "": the first pass's prompt
    hr_negative_prompt: str = ""
    # upscale: by ``upscale_scale`` (None: the upscaler's own scale), or to ``upscale_width`` x ``upscale_height``
    # (A1111's extras "scale to", centre-cropped to that size when ``upscale_crop``)
    upscale_scale: float | None = None
    upscale_width: int = 0
    upscale_height: int = 0
    upscale_crop: bool = True
    # img2img scripts (A1111's): "sd upscale" upscales the init image with ``sd_upscale_upscaler`` by
    # ``sd_upscale_scale``, then runs img2img tile by tile (width x height tiles, ``sd_upscale_overlap`` px)
    script_name: str | None = None
    sd_upscale_overlap: int = 64
    sd_upscale_upscaler: str = "None"
    sd_upscale_scale: float = 2.0
    # inpainting (A1111's img2img mask fields): an img2img request with a ``mask`` (white = repaint) or an ``outpaint``
    # runs the inpaint task. The defaults are A1111's UI defaults (its API's differ: the API maps them).
    mask: Any = None
    mask_blur: int = 4
    mask_blur_x: int | None = None  # None: mask_blur
    mask_blur_y: int | None = None
    inpainting_fill: int = 1  # masks.MASKED_CONTENT: 0 fill, 1 original, 2 latent noise, 3 latent nothing (or names)
    inpaint_full_res: bool = False  # "Only masked": redraw the mask's surroundings at width x height, paste back
    inpaint_full_res_padding: int = 32  # px around the mask for "Only masked"
    inpainting_mask_invert: bool = False  # repaint what is not masked
    initial_noise_multiplier: float | None = None  # img2img's noise scaled (A1111's setting); None: 1
    outpaint: Outpaint | None = None  # px added on each side, then inpainted
    # depth-to-image (an SD 2 depth checkpoint): the depth map (white = near); None: estimated by a models/depth/ DPT
    depth_map: Any = None

    @classmethod
    def create(cls, **fields: Any) -> GenerationRequest:
        """Validate ``fields`` and return the request, or raise ``InvalidRequest`` naming the first bad field."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            raise InvalidRequest(_describe(exc), field=_first_field(exc)) from None

    @field_validator("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt")
    @classmethod
    def _prompt_length(cls, v: str) -> str:
        if len(v) > MAX_PROMPT_CHARS:
            raise ValueError(f"is {len(v)} characters long; the limit is {MAX_PROMPT_CHARS}")
        # Control characters other than newline/tab are dropped: they break tokenizers and PNG text.
        return "".join(ch for ch in v if ch in "\n\t" or ch.isprintable())

    @field_validator("hr_scale")
    @classmethod
    def _hr_scale(cls, v: float) -> float:
        _check_finite(v, "hr_scale")
        if not MIN_HR_SCALE <= v <= MAX_HR_SCALE:
            raise ValueError(f"must be between {MIN_HR_SCALE:g} and {MAX_HR_SCALE:g} (got {v:g})")
        return float(v)

    @field_validator("hr_second_pass_steps")
    @classmethod
    def _hr_steps(cls, v: int) -> int:
        if not 0 <= v <= MAX_STEPS:
            raise ValueError(f"must be 0 (as many as steps) or between 1 and {MAX_STEPS} (got {v})")
        return v

    @field_validator("hr_resize_x", "hr_resize_y")
    @classmethod
    def _hr_resize(cls, v: int) -> int:
        if v != 0 and not MIN_SIZE <= v <= MAX_SIZE:
            raise ValueError(f"must be 0 (from hr_scale) or between {MIN_SIZE} and {MAX_SIZE} px (got {v})")
        return v

    @field_validator("hr_upscaler", "sd_upscale_upscaler", mode="before")
    @classmethod
    def _upscaler_name(cls, v: Any, info: Any) -> Any:
        if v is None or (isinstance(v, str) and not v.strip()):
            return "Latent" if info.field_name == "hr_upscaler" else "None"
        if isinstance(v, str) and info.field_name == "hr_upscaler":  # a latent mode in any case: A1111's spelling
            return next((mode for mode in LATENT_UPSCALE_MODES if mode.lower() == v.strip().lower()), v.strip())
        return v.strip() if isinstance(v, str) else v

    @field_validator("hr_sampler_name", "hr_scheduler", mode="before")
    @classmethod
    def _hr_same(cls, v: Any, info: Any) -> Any:
        same = SAME_SAMPLER if info.field_name == "hr_sampler_name" else SAME_SCHEDULER
        if v is None or (isinstance(v, str) and v.strip().lower() in same):
            return None
        return v

    @field_validator("upscale_scale")
    @classmethod
    def _upscale_scale(cls, v: float | None) -> float | None:
        if v is None:
            return None
        _check_finite(v, "upscale_scale")
        if not 1.0 <= v <= MAX_UPSCALE_SCALE:
            raise ValueError(f"must be between 1 and {MAX_UPSCALE_SCALE:g} (got {v:g})")
        return float(v)

    @field_validator("upscale_width", "upscale_height")
    @classmethod
    def _upscale_size(cls, v: int) -> int:
        if v != 0 and not 8 <= v <= MAX_UPSCALE_OUTPUT:
            raise ValueError(f"must be 0 (by scale) or between 8 and {MAX_UPSCALE_OUTPUT} px (got {v})")
        return v

    @field_validator("script_name", mode="before")
    @classmethod
    def _script_name(cls, v: Any) -> Any:
        if v is None:
            return None
        if not isinstance(v, str):
            raise ValueError("must be a script's name")
        name = v.strip().lower()
        if name in ("", "none"):
            return None
        if name not in SCRIPT_NAMES:
            raise ValueError(f"must be one of: {', '.join(repr(n) for n in SCRIPT_NAMES)} (got {v!r})")
        return name

    @field_validator("sd_upscale_overlap")
    @classmethod
    def _sd_upscale_overlap(cls, v: int) -> int:
        if not 0 <= v <= MAX_SD_UPSCALE_OVERLAP:
            raise ValueError(f"must be between 0 and {MAX_SD_UPSCALE_OVERLAP} px (got {v})")
        return v

    @field_validator("sd_upscale_scale")
    @classmethod
    def _sd_upscale_scale(cls, v: float) -> float:
        _check_finite(v, "sd_upscale_scale")
        if not 1.0 <= v <= MAX_SD_UPSCALE_SCALE:
            raise ValueError(f"must be between 1 and {MAX_SD_UPSCALE_SCALE:g} (got {v:g})")
        return float(v)

    @field_validator("mask_blur", "mask_blur_x", "mask_blur_y")
    @classmethod
    def _mask_blur(cls, v: int | None) -> int | None:
        if v is not None and not 0 <= v <= MAX_MASK_BLUR:
            raise ValueError(f"must be between 0 and {MAX_MASK_BLUR} px (got {v})")
        return v

    @field_validator("inpainting_fill", mode="before")
    @classmethod
    def _inpainting_fill(cls, v: Any) -> Any:
        names = ", ".join(MASKED_CONTENT)
        if isinstance(v, str):
            text = v.strip().lower().replace("_", " ")
            if text in MASKED_CONTENT:
                return MASKED_CONTENT.index(text)
            if not text.isdigit():
                raise ValueError(f"must be 0-3 or one of {names} (got {v!r})")
            v = int(text)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < len(MASKED_CONTENT):
            raise ValueError(f"must be 0-3 or one of {names} (got {v!r})")
        return v

    @field_validator("inpaint_full_res_padding")
    @classmethod
    def _inpaint_padding(cls, v: int) -> int:
        if not 0 <= v <= MAX_INPAINT_PADDING:
            raise ValueError(f"must be between 0 and {MAX_INPAINT_PADDING} px (got {v})")
        return v

    @field_validator("initial_noise_multiplier")
    @classmethod
    def _noise_multiplier(cls, v: float | None) -> float | None:
        if v is None:
            return None
        _check_finite(v, "initial_noise_multiplier")
        if not 0.0 <= v <= MAX_NOISE_MULTIPLIER:
            raise ValueError(f"must be between 0 and {MAX_NOISE_MULTIPLIER:g} (got {v:g})")
        return float(v)

    @field_validator("outpaint", mode="before")
    @classmethod
    def _outpaint(cls, v: Any) -> Any:
        if v is None or (isinstance(v, dict) and not any(v.values())):
            return None
        return v

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: int) -> int:
        if not 1 <= v <= MAX_STEPS:
            raise ValueError(f"must be between 1 and {MAX_STEPS} (got {v})")
        return v

    @field_validator("cfg_scale")
    @classmethod
    def _cfg(cls, v: float) -> float:
        _check_finite(v, "cfg_scale")
        if not MIN_CFG <= v <= MAX_CFG:
            raise ValueError(f"must be between {MIN_CFG:g} and {MAX_CFG:g} (got {v:g})")
        return float(v)

    @field_validator("width", "height")
    @classmethod
    def _size(cls, v: int) -> int:
        if not MIN_SIZE <= v <= MAX_SIZE:
            raise ValueError(f"must be between {MIN_SIZE} and {MAX_SIZE} px (got {v})")
        if v % 8:
            raise ValueError(f"must be a multiple of 8 (got {v}; try {max(MIN_SIZE, v // 8 * 8)})")
        return v

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int) -> int:
        if v < -1 or v > MAX_SEED:
            raise ValueError(f"must be -1 (random) or between 0 and {MAX_SEED} (got {v})")
        return v

    @field_validator("batch_size")
    @classmethod
    def _batch_size(cls, v: int) -> int:
        if not 1 <= v <= MAX_BATCH_SIZE:
            raise ValueError(f"must be between 1 and {MAX_BATCH_SIZE} (got {v})")
        return v

    @field_validator("batch_count")
    @classmethod
    def _batch_count(cls, v: int) -> int:
        if not 1 <= v <= MAX_BATCH_COUNT:
            raise ValueError(f"must be between 1 and {MAX_BATCH_COUNT} (got {v})")
        return v

    @field_validator("denoising_strength")
    @classmethod
    def _strength(cls, v: float) -> float:
        _check_finite(v, "denoising_strength")
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"must be between 0 and 1 (got {v:g})")
        return float(v)

    @field_validator("noise_level")
    @classmethod
    def _noise(cls, v: int) -> int:
        if not 0 <= v <= MAX_NOISE_LEVEL:
            raise ValueError(f"must be between 0 and {MAX_NOISE_LEVEL} (got {v})")
        return v

    @field_validator("token_merging")
    @classmethod
    def _tome(cls, v: float | None) -> float | None:
        if v is None:
            return None
        _check_finite(v, "token_merging")
        if not 0.0 <= v <= TOKEN_MERGING_MAX:
            raise ValueError(f"must be between 0 and {TOKEN_MERGING_MAX:g} (got {v:g})")
        return float(v)

    @field_validator("clip_skip")
    @classmethod
    def _clip_skip(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v <= MAX_CLIP_SKIP:
            raise ValueError(f"must be between 1 and {MAX_CLIP_SKIP} (got {v})")
        return v

    @field_validator("emphasis")
    @classmethod
    def _emphasis(cls, v: str | None) -> str | None:
        if v is not None and v not in EMPHASIS_MODES:
            raise ValueError(f"must be one of {', '.join(EMPHASIS_MODES)} (got {v!r})")
        return v

    @field_validator("styles", mode="before")
    @classmethod
    def _styles(cls, v: Any) -> Any:
        if v is None:
            return []
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list) and len(v) > MAX_STYLES:
            raise ValueError(f"holds {len(v)} names; the limit is {MAX_STYLES}")
        return v

    @field_validator("deep_cache_interval")
    @classmethod
    def _deep_cache_interval(cls, v: int | None) -> int | None:
        low, high = DEEP_CACHE_INTERVALS
        if v is not None and not low <= v <= high:
            raise ValueError(f"must be between {low} and {high} (got {v})")
        return v

    @field_validator("resize_mode", mode="before")
    @classmethod
    def _resize_mode(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):  # A1111 sends 0/1/2
            if 0 <= v < len(RESIZE_MODES):
                return RESIZE_MODES[v]
            raise ValueError(f"must be one of {', '.join(RESIZE_MODES)} (or 0-2)")
        if isinstance(v, str):
            return v.strip().lower()
        return v

    @model_validator(mode="after")
    def _consistent(self) -> GenerationRequest:
        label, sched = resolve_sampler(self.sampler, self.scheduler)
        object.__setattr__(self, "sampler", label)
        object.__setattr__(self, "scheduler", sched)
        if self.outpaint is not None and not self.outpaint.sides:
            object.__setattr__(self, "outpaint", None)
        _check_task_fields(self)
        if self.enable_hr:
            _resolve_hires_sampler(self)
            _check_hires_size(self)
        check_work_budget(self)
        _check_steps_after_strength(self)
        if self.task == "img2img":
            if self.init_image is None:
                raise InvalidRequest("Image to Image needs an init image: upload, drop or paste one.", "init_image")
            object.__setattr__(self, "init_image", decode_image(self.init_image, "init_image"))
            if self.script_name == SD_UPSCALE:
                _check_sd_upscale(self)
            _prepare_inpaint(self)
            if self.depth_map is not None:
                object.__setattr__(self, "depth_map", decode_depth_map(self.depth_map))
        if self.task == "upscale":
            if self.image is None:
                raise InvalidRequest("Upscale 4x needs an input image.", field="image")
            img = decode_image(self.image, "image")
            if max(img.size) > MAX_UPSCALE_INPUT:
                raise InvalidRequest(
                    f"The image to upscale is {img.width}x{img.height}; the limit is {MAX_UPSCALE_INPUT} px per "
                    f"side (the result would be {img.width * 4}x{img.height * 4}).",
                    field="image",
                )
            object.__setattr__(self, "image", img)
            _check_upscale_size(self)
        return self

    def resolved_seed(self) -> int:
        """The seed actually used: ``seed`` or, for -1, a fresh random one (call once per run)."""
        return self.seed if self.seed >= 0 else random.randint(0, MAX_SEED)

    def batch_seeds(self, first_seed: int) -> list[list[int]]:
        """The seeds of each batch, A1111's way: consecutive from ``first_seed`` over all images (an upscale is
        one batch of one image)."""
        if self.task == "upscale":
            return [[first_seed]]
        return [[first_seed + batch * self.batch_size + i for i in range(self.batch_size)]
                for batch in range(self.batch_count)]

    @property
    def total_images(self) -> int:
        return self.batch_count * self.batch_size

    @property
    def steps_run(self) -> int:
        """Denoising steps each image really runs: img2img runs ``int(steps x strength)`` of them (diffusers'
        ``StableDiffusionImg2ImgPipeline.get_timesteps``)."""
        if self.task == "img2img":
            return min(int(self.steps * self.denoising_strength), self.steps)
        return self.steps

    @property
    def inpainting(self) -> bool:
        """An img2img request with a mask or an outpaint: the inpaint task runs it."""
        return self.task == "img2img" and (self.mask is not None or self.outpaint is not None)

    @property
    def pipeline_task(self) -> str:
        """The family's pipeline entry that runs the request (``families.FamilySpec.pipelines``)."""
        return "inpaint" if self.inpainting else self.task

    @property
    def mask_blur_xy(self) -> tuple[int, int]:
        """The mask blur along x and y (``mask_blur_x``/``mask_blur_y`` when given, else ``mask_blur``)."""
        x = self.mask_blur if self.mask_blur_x is None else self.mask_blur_x
        y = self.mask_blur if self.mask_blur_y is None else self.mask_blur_y
        return x, y

    @property
    def noise_multiplier(self) -> float:
        """A1111's ``initial_noise_multiplier`` (1 when unset)."""
        return 1.0 if self.initial_noise_multiplier is None else self.initial_noise_multiplier

    @property
    def outpaint_sides(self) -> Sides:
        """The outpaint's sides (all 0 without one)."""
        return self.outpaint.sides if self.outpaint is not None else Sides()

    @property
    def hr_steps(self) -> int:
        """The hires fix's second-pass steps, run exactly as A1111 runs them (``hr_second_pass_steps`` or
        ``steps``, whatever the denoising strength)."""
        return self.hr_second_pass_steps or self.steps

    @property
    def sd_upscale(self) -> bool:
        """An img2img request run by A1111's SD upscale script."""
        return self.task == "img2img" and self.script_name == SD_UPSCALE

    @property
    def work(self) -> int:
        """The request's size in pixel-steps (width x height x steps run x images, the hires fix's second pass and
        every tile of an SD upscale counted), checked against ``MAX_WORK``."""
        width, height = processing_size(self)
        per_image = width * height * self.steps_run
        if self.task == "txt2img" and self.enable_hr:
            size = hires_size(self)
            per_image += size.width * size.height * self.hr_steps
        if self.sd_upscale and isinstance(self.init_image, Image.Image):
            tiles = sd_upscale_tiles(self)
            per_image = sum((t.right - t.left) * (t.bottom - t.top) for t in tiles) * self.steps_run
        return per_image * self.total_images


def check_work_budget(request: GenerationRequest) -> None:
    """Refuse a txt2img/img2img request whose total work is over ``MAX_WORK``, saying what to lower.

    The field named is the one whose lowering helps most plainly: the batch count, else the batch size (one image
    at the largest size and steps always fits, so a refused request always has more than one image).
    """
    if request.task == "upscale" or request.work <= MAX_WORK:
        return
    images = request.total_images
    batches = f"{request.batch_count} × {request.batch_size} images" if request.batch_count > 1 else (
        f"{images} image{'s' if images != 1 else ''}")
    steps = f"{request.steps_run} steps"
    if request.task == "img2img":
        steps += f" ({request.steps} steps × denoising strength {request.denoising_strength:g})"
    size_text = "{}×{}".format(*processing_size(request))
    units = request.work / WORK_UNIT_PX
    limit = MAX_WORK // WORK_UNIT_PX
    extra = ""
    single = "steps"
    if request.task == "txt2img" and request.enable_hr:
        size = hires_size(request)
        extra = f", plus a hires pass of {size.width}×{size.height} px at {request.hr_steps} steps"
        single = "hr_second_pass_steps"
    elif request.sd_upscale:
        out_w, out_h = sd_upscale_size(request)
        extra = f" per tile, in {len(sd_upscale_tiles(request))} tiles of a {out_w}×{out_h} px SD upscale"
        single = "sd_upscale_scale"
    field_name = "batch_count" if request.batch_count > 1 else "batch_size" if request.batch_size > 1 else single
    raise InvalidRequest(
        f"This request is too large for one run: {batches} of {size_text} px at {steps}{extra} "
        f"is the work of {units:,.0f} steps of a 512×512 image, and the limit is {limit:,} per request (for "
        f"example 16 × 8 images of 512×512 at 32 steps, or one 2048×2048 image at 150 steps). Lower the batch "
        f"count, batch size, steps or size, or split it into several requests.",
        field=field_name,
    )


# --- hires fix, upscale targets, SD upscale: sizes and checks ------------------------------------------------------
@dataclass(frozen=True)
class HiresSize:
    """The hires fix's sizes, A1111's ``calculate_target_resolution``: the first pass is upscaled to
    ``upscale_width`` x ``upscale_height``, then cropped to ``width`` x ``height`` at (``left``, ``top``) when
    ``hr_resize_x`` and ``hr_resize_y`` ask for another aspect; the second pass runs at ``width`` x ``height``.
    All multiples of 8 (latent pixels), as A1111's latents make them."""

    width: int
    height: int
    upscale_width: int
    upscale_height: int
    left: int = 0
    top: int = 0

    @property
    def cropped(self) -> bool:
        return (self.width, self.height) != (self.upscale_width, self.upscale_height)


def hires_size(request: GenerationRequest) -> HiresSize:
    """The hires fix's target sizes for ``request`` (A1111's rules: ``hr_scale`` when both resize fields are 0; one of
    them 0 keeps the first pass's aspect; both set: scale to cover, then crop the centre)."""
    width, height = request.width, request.height
    resize_x, resize_y = request.hr_resize_x, request.hr_resize_y
    if resize_x == 0 and resize_y == 0:
        to_x, to_y = int(width * request.hr_scale), int(height * request.hr_scale)
        target_x, target_y = to_x, to_y
    elif resize_y == 0:
        to_x, to_y = resize_x, resize_x * height // width
        target_x, target_y = to_x, to_y
    elif resize_x == 0:
        to_x, to_y = resize_y * width // height, resize_y
        target_x, target_y = to_x, to_y
    else:
        if width / height < resize_x / resize_y:
            to_x, to_y = resize_x, resize_x * height // width
        else:
            to_x, to_y = resize_y * width // height, resize_y
        target_x, target_y = resize_x, resize_y
    # A1111 truncates the upscaled latents (8 px each) by the difference, half on each side
    truncate_x, truncate_y = max(0, (to_x - target_x) // 8), max(0, (to_y - target_y) // 8)
    latent_x, latent_y = to_x // 8, to_y // 8
    return HiresSize((latent_x - truncate_x) * 8, (latent_y - truncate_y) * 8, latent_x * 8, latent_y * 8,
                     left=truncate_x // 2 * 8, top=truncate_y // 2 * 8)


def _check_task_fields(request: GenerationRequest) -> None:
    """Fields that belong to one task, sent with another: a clear 422 rather than silently ignored."""
    if request.enable_hr and request.task != "txt2img":
        raise InvalidRequest("Hires fix (enable_hr) is part of Text to Image; send it with a txt2img request.",
                             field="enable_hr")
    if request.script_name is not None and request.task != "img2img":
        raise InvalidRequest(f"The {request.script_name!r} script runs on Image to Image requests.",
                             field="script_name")
    for name in ("mask", "outpaint", "depth_map"):
        if getattr(request, name) is not None and request.task != "img2img":
            raise InvalidRequest(f"{name} belongs to Image to Image (inpainting, outpainting, depth); send it with an "
                                 "img2img request and an init image.", field=name)
        if getattr(request, name) is not None and request.script_name is not None:
            raise InvalidRequest(f"The {request.script_name!r} script redraws the whole picture; it takes no {name}.",
                                 field=name)


def _resolve_hires_sampler(request: GenerationRequest) -> None:
    """The second pass's sampler and schedule type, checked like the first pass's (None: the first pass's)."""
    if request.hr_sampler_name is None and request.hr_scheduler is None:
        return
    try:
        label, schedule = resolve_sampler(request.hr_sampler_name or request.sampler,
                                          request.hr_scheduler or request.scheduler)
    except InvalidRequest as exc:
        exc.field = "hr_scheduler" if exc.field == "scheduler" else "hr_sampler_name"
        raise
    object.__setattr__(request, "hr_sampler_name", label)
    object.__setattr__(request, "hr_scheduler", schedule)


def _check_hires_size(request: GenerationRequest) -> None:
    size = hires_size(request)
    from_scale = request.hr_resize_x == 0 and request.hr_resize_y == 0
    for axis, final, upscaled in (("x", size.width, size.upscale_width), ("y", size.height, size.upscale_height)):
        if from_scale:
            field_name = "hr_scale"
        else:
            own, other = f"hr_resize_{axis}", f"hr_resize_{'y' if axis == 'x' else 'x'}"
            field_name = own if getattr(request, own) else other
        if not MIN_SIZE <= final <= MAX_SIZE or upscaled > MAX_UPSCALE_OUTPUT:
            raise InvalidRequest(
                f"Hires fix would make a {size.width}×{size.height} px picture (upscaled to "
                f"{size.upscale_width}×{size.upscale_height} px first) from the {request.width}×{request.height} px "
                f"first pass; each side must be between {MIN_SIZE} and {MAX_SIZE} px. Lower {field_name}.",
                field=field_name,
            )


def upscale_target(request: GenerationRequest, native_scale: float) -> tuple[int, int, bool]:
    """``(width, height, crop)`` of an upscale: A1111's extras. "Scale to" (``upscale_width``/``upscale_height``)
    enlarges by the larger ratio and, with ``upscale_crop``, crops the centre to exactly that size (a 0 side keeps
    the aspect); "scale by" multiplies by ``upscale_scale``, or by the upscaler's own ``native_scale``."""
    image = request.image
    width, height = request.upscale_width, request.upscale_height
    if width or height:
        ratio = max(width / image.width, height / image.height)
        full = (max(1, int(image.width * ratio)), max(1, int(image.height * ratio)))
        if width and height and request.upscale_crop:
            return width, height, True
        return full[0], full[1], False
    scale = request.upscale_scale if request.upscale_scale is not None else native_scale
    return max(1, int(image.width * scale)), max(1, int(image.height * scale)), False


def check_upscale_target(request: GenerationRequest, native_scale: float) -> tuple[int, int, bool]:
    """``upscale_target`` within ``MAX_UPSCALE_OUTPUT`` px a side, else ``InvalidRequest`` naming the field."""
    width, height, crop = upscale_target(request, native_scale)
    if max(width, height) > MAX_UPSCALE_OUTPUT:
        by_size = bool(request.upscale_width or request.upscale_height)
        field_name = ("upscale_width" if request.upscale_width else "upscale_height") if by_size else (
            "upscale_scale")
        raise InvalidRequest(
            f"The upscaled picture would be {width}×{height} px; the limit is {MAX_UPSCALE_OUTPUT} px a side. "
            f"Lower {field_name} or use a smaller image.", field=field_name)
    return width, height, crop


def _check_upscale_size(request: GenerationRequest) -> None:
    """What the request alone says: an explicit scale or size within the limit (the upscaler's own scale is checked
    when its name is resolved)."""
    if request.upscale_scale is not None or request.upscale_width or request.upscale_height:
        check_upscale_target(request, 1.0)


def sd_upscale_size(request: GenerationRequest) -> tuple[int, int]:
    """The SD upscale script's picture size: the init image times ``sd_upscale_scale``, rounded down to a multiple
    of 8 (A1111's ``Upscaler.upscale``); with the "None" upscaler A1111 leaves the image as it is."""
    image = request.init_image
    scale = 1.0 if request.sd_upscale_upscaler.lower() == "none" else request.sd_upscale_scale
    return max(8, int(image.width * scale) // 8 * 8), max(8, int(image.height * scale) // 8 * 8)


def sd_upscale_tile_size(request: GenerationRequest) -> tuple[int, int]:
    """One SD upscale tile: the request's width x height (A1111's), never larger than the picture."""
    out_w, out_h = sd_upscale_size(request)
    return min(request.width, out_w), min(request.height, out_h)


def sd_upscale_tiles(request: GenerationRequest) -> list[Any]:
    """The SD upscale script's tiles (``tiles.plan_full_tiles``) over its picture."""
    from .tiles import plan_full_tiles

    out_w, out_h = sd_upscale_size(request)
    tile_w, tile_h = sd_upscale_tile_size(request)
    return plan_full_tiles(out_w, out_h, tile_w, tile_h, request.sd_upscale_overlap)


def _check_sd_upscale(request: GenerationRequest) -> None:
    out_w, out_h = sd_upscale_size(request)
    if max(out_w, out_h) > MAX_UPSCALE_OUTPUT:
        raise InvalidRequest(
            f"SD upscale would make a {out_w}×{out_h} px picture; the limit is {MAX_UPSCALE_OUTPUT} px a side. "
            "Lower sd_upscale_scale or use a smaller init image.", field="sd_upscale_scale")
    check_work_budget(request)


def firstphase_fields(width: int, height: int, firstphase_width: int = 0, firstphase_height: int = 0) -> dict[str, Any]:
    """A1111's legacy hires fields (``firstphase_width``/``firstphase_height``, from before ``hr_scale``): when
    either is set, the first pass runs at that size and ``width`` x ``height`` is the hires size, as A1111's
    ``StableDiffusionProcessingTxt2Img.__post_init__`` reads them. Returns the request fields to use."""
    if not firstphase_width and not firstphase_height:
        return {"width": width, "height": height}
    return {"width": firstphase_width or width, "height": firstphase_height or height, "hr_resize_x": width,
            "hr_resize_y": height}


def sd_upscale_fields(script_args: list[Any] | tuple[Any, ...]) -> dict[str, Any]:
    """A1111's SD upscale ``script_args`` ``[info, tile_overlap, upscaler_name, scale_factor]`` as request fields
    (missing trailing values keep the defaults; the upscaler may be a name or A1111's index, which the caller maps
    to a name with ``Engine.all_upscalers()``)."""
    args = list(script_args or [])
    fields: dict[str, Any] = {"script_name": SD_UPSCALE}
    for index, name in ((1, "sd_upscale_overlap"), (2, "sd_upscale_upscaler"), (3, "sd_upscale_scale")):
        if len(args) > index and args[index] is not None:
            fields[name] = args[index]
    return fields


def _check_steps_after_strength(request: GenerationRequest) -> None:
    """img2img runs ``int(steps * strength)`` steps; diffusers fails on zero, so say it in words."""
    if request.task == "img2img" and int(request.steps * request.denoising_strength) < 1:
        need = 1.0 / max(request.steps, 1)
        raise InvalidRequest(
            f"With {request.steps} steps a denoising strength of {request.denoising_strength:g} runs no step at all; "
            f"use a strength of at least {need:.2f} or more steps.",
            field="denoising_strength",
        )


# --- inpainting and outpainting: sizes and checks ------------------------------------------------------------------
def processing_size(request: GenerationRequest) -> tuple[int, int]:
    """The size the UNet draws at: ``width`` x ``height``, grown by the outpaint's sides for a "whole picture"
    outpaint ("Only masked" draws its crop at ``width`` x ``height``)."""
    if request.task == "img2img" and request.outpaint is not None and not request.inpaint_full_res:
        return request.outpaint_sides.grown(request.width, request.height)
    return request.width, request.height


def output_size(request: GenerationRequest) -> tuple[int, int]:
    """The size of the picture an img2img request gives: ``processing_size``, except "Only masked", which keeps the
    init image's size (grown by an outpaint's sides)."""
    if request.inpainting and request.inpaint_full_res and isinstance(request.init_image, Image.Image):
        return request.outpaint_sides.grown(*request.init_image.size)
    return processing_size(request)


def _prepare_inpaint(request: GenerationRequest) -> None:
    """The mask read and resized to the init image (an empty one refused, unless an outpaint gives the area to
    repaint), and an outpaint's new size checked against the limits, naming the side."""
    sides = request.outpaint_sides
    if request.mask is not None:
        mask = decode_mask(request.mask, request.init_image.size, request.resize_mode)
        if is_empty(invert_mask(mask) if request.inpainting_mask_invert else mask):
            if not sides:
                raise InvalidRequest(
                    "the mask is empty: paint the area to change (white repaints"
                    + ("; with inpainting_mask_invert, black does)." if request.inpainting_mask_invert else ")."),
                    field="mask")
            mask = None  # the outpaint alone says what to repaint
        object.__setattr__(request, "mask", mask)
    if not sides:
        return
    limit = MAX_UPSCALE_OUTPUT if request.inpaint_full_res else MAX_SIZE
    width, height = output_size(request)
    for axis, size, pair in (("width", width, ("left", "right")), ("height", height, ("up", "down"))):
        if size > limit:
            side = max(pair, key=lambda name: (getattr(sides, name), name == pair[1]))
            raise InvalidRequest(
                f"The outpainted picture would be {width}×{height} px; its {axis} must be at most {limit} px"
                + (" (the limit of a whole-picture outpaint, which is drawn at that size)"
                   if not request.inpaint_full_res else "")
                + f". Lower outpaint.{side}.", field=f"outpaint.{side}")


def _first_field(exc: ValidationError) -> str | None:
    errors = exc.errors()
    if errors and errors[0].get("loc"):
        loc = errors[0]["loc"]
        if loc[0] == "outpaint" and len(loc) > 1 and loc[1] in SIDES:  # name the side: outpaint.left
            return f"outpaint.{loc[1]}"
        return str(loc[0])
    return None


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "request"
        msg = err.get("msg", "is invalid")
        msg = msg.removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "is not a known field"
        parts.append(f"{loc} {msg}")
    return "Invalid request: " + "; ".join(parts) + "."


@dataclass
class Result:
    """What a run gives back. ``mode`` is the memory-ladder rung that ran; ``notes`` say why, and any fallback."""

    images: list[Any] = field(default_factory=list)  # PIL images
    seeds: list[int] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    mode: str = ""
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what the request named and did not get (a LoRA not found)
    cancelled: bool = False
    checkpoint: str = ""
    checkpoint_hash: str = ""
    request: GenerationRequest | None = None
