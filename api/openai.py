"""OpenAI's image API for the chat front-ends that speak it (Open WebUI's "OpenAI" image engine, LibreChat):
``POST /v1/images/generations`` and ``GET /v1/models``.

A generation becomes the same ``GenerationRequest`` as a ``/sdapi/v1/txt2img`` call and waits in the same queue:
``prompt``; ``n`` pictures (a batch, up to 8; more run as batches one after another, up to 16); ``size`` "WxH"
(``auto`` or none: the checkpoint's own size); ``model`` a checkpoint as ``/v1/models`` lists it (or any name
``/sdapi/v1/options`` takes), while OpenAI's own ids (``dall-e-3``, ``gpt-image-1``), which these clients send by
default, mean the current checkpoint; ``response_format`` ``b64_json`` (the PNG with A1111's parameters) or ``url``
(the same PNG as a ``data:`` URL: Atelier keeps no public file links). Atelier's ``negative_prompt``, ``steps`` and
``seed`` may be added; OpenAI's ``quality``, ``style`` and ``user`` are ignored. Errors come in OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``. The login is the API's: an ``--auth`` password as the Bearer
"API key", or HTTP Basic.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from pipelines.errors import InvalidRequest
from pipelines.families import FAMILIES
from pipelines.request import MAX_BATCH_COUNT, MAX_BATCH_SIZE, GenerationRequest, Result

from . import convert

OPENAI_MODEL_PREFIXES = ("dall-e", "gpt-image")  # OpenAI's model ids: the current checkpoint
RESPONSE_FORMATS = ("b64_json", "url")
DEFAULT_SIZE = 512
# GenerationRequest field → the OpenAI field a client sent
FIELD_NAMES = {"width": "size", "height": "size", "batch_size": "n", "batch_count": "n", "checkpoint": "model",
               "prompt": "prompt", "negative_prompt": "negative_prompt", "steps": "steps", "seed": "seed"}
ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


class ImageGenerationRequest(BaseModel):
    """``POST /v1/images/generations`` (OpenAI's fields; unknown ones ignored)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    prompt: str | None = Field(None, description="What to draw.")
    model: str | None = Field(
        None, description="A checkpoint (an id of /v1/models); OpenAI's ids (dall-e-*, gpt-image-*) or none: the "
        "current checkpoint.")
    n: int | None = Field(1, description="How many pictures (1-16; up to 8 are drawn as one batch).")
    size: str | None = Field(None, description="'WxH' in px, multiples of 8 from 64 to 2048; 'auto' or none: the "
                             "checkpoint's own size (512 or 1024).")
    response_format: str | None = Field("b64_json", description="'b64_json', or 'url' (a data: URL of the PNG).")
    negative_prompt: str | None = Field(None, description="Atelier: what to avoid.")
    steps: int | None = Field(None, description="Atelier: sampling steps (default: the server's).")
    seed: int | None = Field(None, description="Atelier: the seed (-1 or none: random).")


class ImageData(BaseModel):
    """One picture: ``b64_json`` (a PNG with A1111's parameters) or ``url`` (a data: URL of it)."""

    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    """OpenAI's answer: when it was made and the pictures."""

    created: int
    data: list[ImageData] = Field(default_factory=list)


class ModelCard(BaseModel):
    """One checkpoint as OpenAI lists a model."""

    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "atelier"


class ModelList(BaseModel):
    """``GET /v1/models``: the installed checkpoints that can draw."""

    object: str = "list"
    data: list[ModelCard] = Field(default_factory=list)


def openai_error(status: int, kind: str, detail: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    """An error in OpenAI's shape (what OpenAI's client libraries read), with the same status as the API's."""
    kind_name = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    body = {"error": {"message": detail, "type": kind_name, "param": field, "code": kind}}
    return JSONResponse(body, status_code=status, headers=headers)


class OpenAIRoutes:
    """The OpenAI-style handlers over one manager; ``run`` queues a request and waits for its result (SdApi's)."""

    def __init__(self, manager: Any, settings: Any, run: Callable[[GenerationRequest, dict[str, str]],
                                                                  Awaitable[Result]]):
        self.manager = manager
        self.settings = settings
        self._run = run

    async def generations(self, body: ImageGenerationRequest) -> ImagesResponse:
        """Draw ``n`` pictures of ``prompt`` with the current (or the named) checkpoint."""
        request = await run_in_threadpool(self._request, body)
        result = await self._run(request, FIELD_NAMES)
        images = await run_in_threadpool(convert.result_images_base64, result)
        as_url = (body.response_format or "b64_json").strip().lower() == "url"
        data = [ImageData(url=f"data:image/png;base64,{image}", revised_prompt=request.prompt) if as_url
                else ImageData(b64_json=image, revised_prompt=request.prompt) for image in images]
        return ImagesResponse(created=int(time.time()), data=data)

    def models(self) -> ModelList:
        """The checkpoints that can draw (a file the registry knows cannot load is left out)."""
        cards = []
        for info in self.manager.checkpoints():
            if getattr(info, "problem", None):
                continue
            created = int(getattr(info, "mtime_ns", 0) or 0) // 1_000_000_000
            cards.append(ModelCard(id=info.name, created=created))
        return ModelList(data=cards)

    def _request(self, body: ImageGenerationRequest) -> GenerationRequest:
        prompt = (body.prompt or "").strip()
        if not prompt:
            raise InvalidRequest("prompt: describe the picture to draw.", "prompt")
        response_format = (body.response_format or "b64_json").strip().lower()
        if response_format not in RESPONSE_FORMATS:
            raise InvalidRequest(f"response_format must be 'b64_json' or 'url'; got {body.response_format!r}.",
                                 "response_format")
        checkpoint = self._checkpoint(body.model)
        width, height = self._size(body.size, checkpoint)
        n = 1 if body.n is None else body.n
        if not 1 <= n <= MAX_BATCH_COUNT:
            raise InvalidRequest(f"n must be between 1 and {MAX_BATCH_COUNT} (got {n}).", "n")
        batch = {"batch_size": n, "batch_count": 1} if n <= MAX_BATCH_SIZE else {"batch_size": 1, "batch_count": n}
        fields: dict[str, Any] = {
            "task": "txt2img", "prompt": prompt, "negative_prompt": body.negative_prompt or "",
            "width": width, "height": height, "steps": body.steps or self.settings.default_steps,
            "sampler": self.settings.default_sampler, "seed": -1 if body.seed is None else body.seed,
            "checkpoint": checkpoint, **batch,
        }
        try:
            return GenerationRequest.create(**fields)
        except InvalidRequest as exc:
            name = FIELD_NAMES.get(exc.field or "", exc.field)
            message = exc.message if name is None or name in exc.message else f"{name}: {exc.message}"
            raise InvalidRequest(message, name) from None

    def _checkpoint(self, model: str | None) -> str | None:
        """The checkpoint name ``model`` means: None (the current one) for none or an OpenAI id."""
        name = (model or "").strip()
        if not name or name.lower().startswith(OPENAI_MODEL_PREFIXES):
            return None
        try:
            return self.manager.registry.find_checkpoint(name).name
        except InvalidRequest:
            names = [info.name for info in self.manager.checkpoints() if not getattr(info, "problem", None)]
            listed = ", ".join(names) if names else "none is installed"
            raise InvalidRequest(f"model {name!r} is not an installed checkpoint; GET /v1/models lists them "
                                 f"({listed}).", "model") from None

    def _size(self, size: str | None, checkpoint: str | None) -> tuple[int, int]:
        """``size`` "WxH" as (width, height); "auto" or none: the checkpoint family's own square size."""
        text = (size or "").strip().lower()
        if text in ("", "auto"):
            side = self._native_size(checkpoint)
            return side, side
        match = re.fullmatch(r"(\d{1,5})\s*[x×]\s*(\d{1,5})", text)
        if match is None:
            raise InvalidRequest(f"size must be 'WxH' in px (e.g. '512x512') or 'auto'; got {size!r}.", "size")
        return int(match.group(1)), int(match.group(2))

    def _native_size(self, checkpoint: str | None) -> int:
        try:
            info = (self.manager.registry.find_checkpoint(checkpoint) if checkpoint
                    else self.manager.default_checkpoint())
        except InvalidRequest:
            info = None
        spec = FAMILIES.get(getattr(info, "family", None) or "")
        return spec.native_size if spec is not None else DEFAULT_SIZE
