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
    # the prompt language (A1111's): named styles from the styles file; None: the Settings' value
    styles: list[str] = []
    clip_skip: int | None = None  # A1111's CLIP_stop_at_last_layers
    emphasis: str | None = None  # "Original", "No norm", "Ignore" or "None"

    @classmethod
    def create(cls, **fields: Any) -> GenerationRequest:
        """Validate ``fields`` and return the request, or raise ``InvalidRequest`` naming the first bad field."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            raise InvalidRequest(_describe(exc), field=_first_field(exc)) from None

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _prompt_length(cls, v: str) -> str:
        if len(v) > MAX_PROMPT_CHARS:
            raise ValueError(f"is {len(v)} characters long; the limit is {MAX_PROMPT_CHARS}")
        # Control characters other than newline/tab are dropped: they break tokenizers and PNG text.
        return "".join(ch for ch in v if ch in "\n\t" or ch.isprintable())

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
        check_work_budget(self)
        _check_steps_after_strength(self)
        if self.task == "img2img":
            if self.init_image is None:
                raise InvalidRequest("Image to Image needs an init image: upload, drop or paste one.", "init_image")
            object.__setattr__(self, "init_image", decode_image(self.init_image, "init_image"))
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
    def work(self) -> int:
        """The request's size in pixel-steps (width x height x steps run x images), checked against ``MAX_WORK``."""
        return self.width * self.height * self.steps_run * self.total_images


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
    units = request.work / WORK_UNIT_PX
    limit = MAX_WORK // WORK_UNIT_PX
    field_name = "batch_count" if request.batch_count > 1 else "batch_size" if request.batch_size > 1 else "steps"
    raise InvalidRequest(
        f"This request is too large for one run: {batches} of {request.width}×{request.height} px at {steps} is "
        f"the work of {units:,.0f} steps of a 512×512 image, and the limit is {limit:,} per request (for example "
        f"16 × 8 images of 512×512 at 32 steps, or one 2048×2048 image at 150 steps). Lower the batch count, "
        f"batch size, steps or size, or split it into several requests.",
        field=field_name,
    )


def _check_steps_after_strength(request: GenerationRequest) -> None:
    """img2img runs ``int(steps * strength)`` steps; diffusers fails on zero, so say it in words."""
    if request.task == "img2img" and int(request.steps * request.denoising_strength) < 1:
        need = 1.0 / max(request.steps, 1)
        raise InvalidRequest(
            f"With {request.steps} steps a denoising strength of {request.denoising_strength:g} runs no step at all; "
            f"use a strength of at least {need:.2f} or more steps.",
            field="denoising_strength",
        )


def _first_field(exc: ValidationError) -> str | None:
    errors = exc.errors()
    if errors and errors[0].get("loc"):
        return str(errors[0]["loc"][0])
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
