"""The ``/sdapi/v1`` routes: AUTOMATIC1111's REST API over Atelier's pipeline manager.

Generation routes turn the body into a ``GenerationRequest`` and wait on the manager's one FIFO queue (shared
with the UI). They are ``async`` and wait for the job in a thread of their own pool, so that a hundred queued
requests never starve the threads that ``/progress`` and ``/interrupt`` need. Every other route is a plain
``def``: FastAPI runs it in its thread pool, off the event loop.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Body, Request
from fastapi.concurrency import run_in_threadpool
from PIL import Image

from pipelines.errors import AtelierError, InvalidRequest, ModelNotFound
from pipelines.infotext import quote
from pipelines.registry import UPSCALER_BUILTIN, UPSCALER_MODEL
from pipelines.request import (
    MAX_SD_UPSCALE_OVERLAP,
    MAX_SD_UPSCALE_SCALE,
    MAX_UPSCALE_INPUT,
    SCRIPT_NAMES,
    SD_UPSCALE,
    GenerationRequest,
    Result,
    decode_image,
)
from pipelines.samplers import SAMPLERS, SCHEDULE_NAMES
from pipelines.settings import Settings

from . import convert
from .auth import BasicAuth
from .control import ControlRoutes
from .cors import CorsPolicy
from .errors import api_field_names, make_route_class
from .models import (
    EmbeddingItem,
    EmbeddingsResponse,
    ErrorResponse,
    ExtrasBaseRequest,
    ExtrasBatchImagesRequest,
    ExtrasBatchImagesResponse,
    ExtrasSingleImageRequest,
    ExtrasSingleImageResponse,
    FaceRestorerItem,
    Flags,
    HypernetworkItem,
    ImageToImageResponse,
    Img2ImgRequest,
    LatentUpscalerModeItem,
    LoraItem,
    MemoryResponse,
    Options,
    PNGInfoRequest,
    PNGInfoResponse,
    ProgressResponse,
    PromptStyleItem,
    RealesrganItem,
    SamplerItem,
    SchedulerItem,
    ScriptArg,
    ScriptInfo,
    ScriptsList,
    SDModelItem,
    SDModuleItem,
    SDVaeItem,
    TextToImageResponse,
    Txt2ImgRequest,
    UpscalerItem,
)
from .openai import ImagesResponse, ModelList, OpenAIRoutes, openai_error
from .options import OptionsStore
from .progress import progress_response

log = logging.getLogger("atelier.api")

# POST /options takes any dict (A1111's does): the keys are read by api/options.py, each leniently
OptionsBody = Annotated[dict[str, Any], Body(
    description="Any options, the whole GET result included: Atelier's are applied (all or none: a bad value is a 422 "
    "naming its key), unknown keys are kept for the next GET.")]

PREFIX = "/sdapi/v1"
MAX_EXTRAS_BATCH = 32  # images per /extra-batch-images request: each one is a job of its own
# A1111's SD upscale script's info text (its first argument), as /script-info shows it
SD_UPSCALE_INFO = "Will upscale the image by the selected scale factor; use width and height sliders to set tile size"
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (401, "Login required (--auth)"),
        (403, "A page of another site (Origin not allowed, or null) may not change anything"),
        (422, "Invalid request; `detail` names the field"),
        (429, "The job queue is full"),
    )
}


class SdApi:
    """The route handlers, bound to one manager and its settings."""

    def __init__(self, manager: Any, settings: Settings, flags: Mapping[str, Any] | None = None):
        self.manager = manager
        self.settings = settings
        # Threads that only wait for queued jobs: one per job the queue can hold, plus the running one.
        self._waiters = anyio.CapacityLimiter(max(1, settings.queue_size) + 2)
        # The handlers of other modules (api/options.py, api/control.py, api/openai.py), bound to the same engine
        self.options = OptionsStore(manager, settings)
        self.control = ControlRoutes(manager, settings, flags, self._waiters)
        self.openai = OpenAIRoutes(manager, settings, self._run)

    # --- generation ----------------------------------------------------------------------------------------
    async def txt2img(self, body: Txt2ImgRequest) -> TextToImageResponse:
        """Text to image, as A1111's ``/sdapi/v1/txt2img``."""
        return await self._generate(convert.txt2img_request, body, TextToImageResponse)

    async def img2img(self, body: Img2ImgRequest) -> ImageToImageResponse:
        """Image to image, as A1111's ``/sdapi/v1/img2img`` (one init image), with A1111's inpainting fields
        (``mask`` ...), Atelier's ``outpaint`` and ``depth_map``, and A1111's ``sd upscale`` script."""
        return await self._generate(self._img2img_request, body, ImageToImageResponse)

    def _img2img_request(self, body: Img2ImgRequest, settings: Settings) -> GenerationRequest:
        names = self._upscaler_names() if body.script_name else []
        return convert.img2img_request(body, settings, names)

    async def _generate(self, build: Any, body: Any, response_type: type[TextToImageResponse]) -> Any:
        timestamp = convert.job_timestamp()
        request = await run_in_threadpool(self._build, build, body)
        result = await self._run(request, convert.GENERATION_FIELD_NAMES)
        return await run_in_threadpool(self._generation_response, response_type, body, request, result, timestamp)

    async def extra_single_image(self, body: ExtrasSingleImageRequest) -> ExtrasSingleImageResponse:
        """Upscale one image with ``upscaler_1`` (any of ``/upscalers``), by ``upscaling_resize`` or to
        ``upscaling_resize_w`` x ``_h``; ``upscaler_2``'s result blended over it by ``extras_upscaler_2_visibility``."""
        convert.log_ignored("extra-single-image", body)
        await run_in_threadpool(self._check_extras, body)
        image = await run_in_threadpool(_extras_input, body.image, "image")
        encoded, info = await self._extras(body, image)
        return ExtrasSingleImageResponse(image=encoded, html_info=info)

    async def extra_batch_images(self, body: ExtrasBatchImagesRequest) -> ExtrasBatchImagesResponse:
        """``/extra-single-image`` for each image of ``imageList`` (``{data, name}``), one job after another."""
        convert.log_ignored("extra-batch-images", body)
        entries = list(body.imageList or [])
        if not entries:
            raise InvalidRequest("imageList: send at least one image as {data: base64, name: file name}.", "imageList")
        if len(entries) > MAX_EXTRAS_BATCH:
            raise InvalidRequest(f"imageList holds {len(entries)} images; the limit is {MAX_EXTRAS_BATCH} per "
                                 "request: split it into several requests.", "imageList")
        await run_in_threadpool(self._check_extras, body)
        # every image decoded before the first job runs: a bad one is a 422 with nothing done
        images = [await run_in_threadpool(_extras_input, entry.data, f"imageList[{index}].data", entry.name)
                  for index, entry in enumerate(entries)]
        encoded: list[str] = []
        info = ""
        for image in images:
            picture, info = await self._extras(body, image)
            encoded.append(picture)
        return ExtrasBatchImagesResponse(images=encoded, html_info=info)

    def _check_extras(self, body: ExtrasBaseRequest) -> None:
        """What the extras routes refuse before any job: face restoration, unknown upscaler names, a bad blend."""
        if body.gfpgan_visibility or body.codeformer_visibility:
            raise InvalidRequest(
                "gfpgan_visibility/codeformer_visibility: face restoration is not available; send 0.",
                "gfpgan_visibility" if body.gfpgan_visibility else "codeformer_visibility",
            )
        visibility = body.extras_upscaler_2_visibility or 0
        if not 0 <= visibility <= 1:
            raise InvalidRequest(f"extras_upscaler_2_visibility must be between 0 and 1 (got {visibility:g}).",
                                 "extras_upscaler_2_visibility")
        self._check_upscaler(body.upscaler_1 or "None", "upscaler_1")
        if _second_upscaler(body):
            self._check_upscaler(body.upscaler_2 or "None", "upscaler_2")

    def _check_upscaler(self, name: str, field: str) -> None:
        """An unknown upscaler is a 422 in A1111's words: the names follow the first ": ", separated by " , " (what
        openOutpaint reads its upscaler list from, posting a made-up name on purpose)."""
        try:
            self.manager.registry.find_upscaler(name)
        except ModelNotFound:
            shown = repr(name) if ": " not in name else "as named"
            raise ModelNotFound(
                f"{field} {shown} is not installed (upscaler model files go into models/upscale_models, then "
                f"refresh); it needs to be one of these: {' , '.join(self._upscaler_names())}", field) from None

    def _upscaler_names(self) -> list[str]:
        return [info.name for info in self.manager.all_upscalers()]

    async def _extras(self, body: ExtrasBaseRequest, image: Image.Image) -> tuple[str, str]:
        """One picture through ``upscaler_1`` (and ``upscaler_2``, blended as A1111's extras do): its base64 PNG and
        infotext. Each upscale is a job of the engine, saved as any upscale is; the blend is only returned."""
        first = await run_in_threadpool(self._build_upscale, body, image, body.upscaler_1 or "None",
                                        convert.UPSCALE_FIELD_NAMES)
        second = None
        if _second_upscaler(body):
            second = await run_in_threadpool(self._build_upscale, body, image, body.upscaler_2 or "None",
                                             convert.SECOND_UPSCALER_FIELD_NAMES)
        result = await self._run(first, convert.UPSCALE_FIELD_NAMES)
        if not result.images:
            raise AtelierError("The upscaler returned no image; see the server log.")
        infotext = result.infotexts[0] if result.infotexts else ""
        if second is None:
            return await run_in_threadpool(convert.image_base64, result, 0), infotext
        other = await self._run(second, convert.SECOND_UPSCALER_FIELD_NAMES)
        if not other.images:
            raise AtelierError("The second upscaler returned no image; see the server log.")
        infotext = f"{infotext.rstrip()}, Postprocess upscaler 2: {quote(second.upscaler)}"
        blended = await run_in_threadpool(blend_upscales, result.images[0], other.images[0],
                                          float(body.extras_upscaler_2_visibility or 0))
        return await run_in_threadpool(convert.png_base64, blended, infotext), infotext

    def _build(self, build: Any, body: Any) -> GenerationRequest:
        with api_field_names(convert.GENERATION_FIELD_NAMES):
            return build(body, self.settings)

    def _build_upscale(self, body: ExtrasBaseRequest, image: Image.Image, upscaler: str,
                       field_names: dict[str, str]) -> GenerationRequest:
        with api_field_names(field_names):
            return convert.upscale_request(body, image, upscaler, self.settings)

    async def _run(self, request: GenerationRequest, field_names: dict[str, str]) -> Result:
        """Queue the request behind the UI's and other clients' jobs and wait for its result."""

        def submit() -> Any:
            with api_field_names(field_names):
                return self.manager.submit(request)

        job = await run_in_threadpool(submit)
        return await anyio.to_thread.run_sync(job.wait, limiter=self._waiters)

    def _generation_response(
        self,
        response_type: type[TextToImageResponse],
        body: Txt2ImgRequest | Img2ImgRequest,
        request: GenerationRequest,
        result: Result,
        timestamp: str,
    ) -> TextToImageResponse:
        images = convert.result_images_base64(result) if body.send_images is not False else []
        styles = {style.name: style for style in self.manager.styles()} if request.styles else {}
        return response_type(
            images=images,
            parameters=convert.echo_parameters(body),
            info=convert.generation_info(body, request, result, timestamp, self.settings, styles),
        )

    # --- progress and interrupt ----------------------------------------------------------------------------
    def progress(self, skip_current_image: bool = False) -> ProgressResponse:
        """The running job: fraction done, ETA, step counts and the live preview; ``job_count`` counts the running
        job's batches (a checkpoint load too) and the waiting jobs; all 0 when idle (``api/progress.py``)."""
        return progress_response(self.manager, skip_current_image)

    def interrupt(self) -> dict[str, Any]:
        """Stop the running job within a step; images already finished are kept and returned to its caller."""
        self.manager.interrupt()
        return {}

    # --- models and options --------------------------------------------------------------------------------
    def sd_models(self) -> list[SDModelItem]:
        """Installed checkpoints, titled "name [hash]" as A1111 lists them, with their sha256 once it has been read
        (in the background: a file not read yet says null, and is read meanwhile)."""
        registry = self.manager.registry
        return [
            SDModelItem(
                title=info.title,
                model_name=info.name,
                hash=registry.short_hash(info),
                sha256=self.manager.sha256(info),
                filename=str(info.path),
                config=None,
            )
            for info in self.manager.checkpoints()
        ]

    def sd_vae(self) -> list[SDVaeItem]:
        """VAE files of models/vae/ (A1111's ``/sd-vae``)."""
        return [SDVaeItem(model_name=info.name, filename=str(info.path)) for info in self.manager.vaes()]

    def refresh_checkpoints(self) -> None:
        """Scan the models folders again; the current checkpoint stays the one it was."""
        self.manager.refresh_models()

    def get_options(self) -> dict[str, Any]:
        """Every option Atelier implements under A1111's name, with its value, and the keys clients left here
        (``api/options.py``)."""
        return self.options.current()

    def set_options(self, body: OptionsBody) -> None:
        """Apply what a client changed (``sd_model_checkpoint`` switches and starts loading the checkpoint)."""
        self.options.apply(body)

    # --- the prompt language's files -----------------------------------------------------------------------
    def loras(self) -> list[LoraItem]:
        """Installed LoRAs (A1111's shape); ``alias`` is the file's ``ss_output_name``, else its name."""
        items = []
        for info in self.manager.loras():
            metadata = _readable_metadata(self.manager, info)
            alias = metadata.get("ss_output_name")
            items.append(LoraItem(name=info.name, alias=alias if isinstance(alias, str) and alias else info.name,
                                  path=str(info.path), metadata=metadata))
        return items

    def refresh_loras(self) -> None:
        """Scan the models folders again (LoRAs included)."""
        self.manager.refresh_models()

    def embeddings(self) -> EmbeddingsResponse:
        """Textual-inversion embeddings: ``loaded`` those the default checkpoint can use, ``skipped`` those made for
        another model (A1111's split). Files that are not embeddings at all are left out (the log says why)."""
        report = self.manager.embeddings()
        return EmbeddingsResponse(
            loaded={name: _embedding_item(embedding) for name, embedding in report.loaded.items()},
            skipped={name: _embedding_item(embedding) for name, embedding in report.skipped.items()},
        )

    def refresh_embeddings(self) -> None:
        """Scan the models folders again (a changed embedding file is read again when next used)."""
        self.manager.refresh_models()

    def prompt_styles(self) -> list[PromptStyleItem]:
        """The styles of the styles file (A1111's styles.csv), in file order."""
        return [PromptStyleItem(name=style.name, prompt=style.prompt, negative_prompt=style.negative_prompt)
                for style in self.manager.styles()]

    # --- lists ---------------------------------------------------------------------------------------------
    def samplers(self) -> list[SamplerItem]:
        """A1111 sampler labels Atelier runs (those whose optional package is installed)."""
        return [
            SamplerItem(name=label, aliases=list(spec.aliases), options={})
            for label, spec in SAMPLERS.items()
            if spec.needs is None or importlib.util.find_spec(spec.needs) is not None
        ]

    def schedulers(self) -> list[SchedulerItem]:
        """Schedule types (A1111 >= 1.9's separate "Schedule type")."""
        return [SchedulerItem(name=name.lower().replace(" ", "_"), label=name) for name in SCHEDULE_NAMES]

    def upscalers(self) -> list[UpscalerItem]:
        """Every upscaler, as A1111 lists them: the built-ins (None, Lanczos, Nearest), the ESRGAN-family model files
        (spandrel's architecture as ``model_name``), the SD x4 upscaler folders."""
        items = []
        for info in self.manager.all_upscalers():
            family = getattr(info, "family", None)
            builtin = family == UPSCALER_BUILTIN
            model_name = getattr(info, "architecture", None) if family == UPSCALER_MODEL else info.name
            items.append(UpscalerItem(name=info.name, model_name=None if builtin else model_name,
                                      model_path=None if builtin else str(info.path),
                                      scale=getattr(info, "scale", None) or 4))
        return items

    def realesrgan_models(self) -> list[RealesrganItem]:
        """The Real-ESRGAN model files among the upscalers (A1111's ``/realesrgan-models`` shape)."""
        return [RealesrganItem(name=info.name, path=str(info.path), scale=int(getattr(info, "scale", None) or 4))
                for info in self.manager.all_upscalers() if _is_realesrgan(info)]

    def latent_upscale_modes(self) -> list[LatentUpscalerModeItem]:
        """The hires fix's latent upscale modes (A1111's names)."""
        return [LatentUpscalerModeItem(name=name) for name in self.manager.latent_upscale_modes()]

    def scripts(self) -> ScriptsList:
        """The A1111 scripts Atelier runs by ``script_name`` (clients such as webuiapi probe this)."""
        return ScriptsList(txt2img=[], img2img=list(SCRIPT_NAMES))

    def script_info(self) -> list[ScriptInfo]:
        """The scripts' arguments, in ``script_args`` order, as A1111's ``/script-info`` describes them."""
        names = self._upscaler_names()
        args = [
            ScriptArg(label=None, value=SD_UPSCALE_INFO),
            ScriptArg(label="Tile overlap", value=64, minimum=0, maximum=MAX_SD_UPSCALE_OVERLAP, step=16),
            ScriptArg(label="Upscaler", value=names[0] if names else "None", choices=names),
            ScriptArg(label="Scale Factor", value=2, minimum=1, maximum=MAX_SD_UPSCALE_SCALE, step=0.05),
        ]
        return [ScriptInfo(name=SD_UPSCALE, is_alwayson=False, is_img2img=True, args=args)]

    # --- PNG info ------------------------------------------------------------------------------------------
    def png_info(self, body: PNGInfoRequest) -> PNGInfoResponse:
        """The A1111 ``parameters`` text of an image, parsed, plus its other text chunks."""
        from pipelines.infotext import parse_infotext
        from pipelines.outputs import read_parameters

        image = convert.open_image_keeping_text(body.image, "image")
        text = read_parameters(image) or ""
        chunks = {**image.info, **(getattr(image, "text", None) or {})}
        items = {key: value for key, value in chunks.items() if key != "parameters" and isinstance(value, str)}
        return PNGInfoResponse(info=text, items=items, parameters=parse_infotext(text) if text else {})

    # --- anything else under /sdapi ------------------------------------------------------------------------
    def unknown_route(self, request: Request, path: str) -> None:
        """A JSON 404 (or 405) for paths under /sdapi/v1 that Atelier does not serve."""
        methods = [route.method for route in _ROUTES if route.path == f"{PREFIX}/{path}"]
        if methods:
            raise _MethodNotAllowed(f"{request.method} is not allowed on {PREFIX}/{path}; use {' or '.join(methods)}.")
        raise _NotFound(
            f"{PREFIX}/{path} is not an Atelier API route. Available: "
            + ", ".join(f"{r.method} {r.path}" for r in _ROUTES)
            + "."
        )


class _NotFound(AtelierError):
    """A path under /sdapi/v1 that Atelier does not serve."""

    http_status = 404


class _MethodNotAllowed(AtelierError):
    """A known /sdapi/v1 path asked with the wrong HTTP method."""

    http_status = 405


OPENAI_PREFIX = "/v1"


@dataclass(frozen=True)
class _Route:
    """One documented route: method, path under ``base`` (/sdapi/v1, or /v1 for the OpenAI-style ones), handler name
    on ``SdApi`` (dotted for a handler of another module: ``control.memory``), response model, summary. Each is
    also answered with a trailing slash (openOutpaint posts ``options/``), undocumented."""

    method: str
    suffix: str
    handler: str
    response_model: Any
    summary: str
    base: str = PREFIX

    @property
    def path(self) -> str:
        return self.base + self.suffix

    @property
    def openai(self) -> bool:
        return self.base == OPENAI_PREFIX


_ROUTES: tuple[_Route, ...] = (
    _Route("POST", "/txt2img", "txt2img", TextToImageResponse, "Text to image"),
    _Route("POST", "/img2img", "img2img", ImageToImageResponse, "Image to image"),
    _Route("POST", "/extra-single-image", "extra_single_image", ExtrasSingleImageResponse, "Upscale one image"),
    _Route("POST", "/extra-batch-images", "extra_batch_images", ExtrasBatchImagesResponse, "Upscale several images"),
    _Route("POST", "/png-info", "png_info", PNGInfoResponse, "Read the generation parameters of a PNG"),
    _Route("GET", "/progress", "progress", ProgressResponse, "Progress of the running job and the queue"),
    _Route("POST", "/interrupt", "interrupt", dict[str, Any], "Stop the running job"),
    _Route("POST", "/skip", "control.skip", None, "End the batch being drawn; the job goes on with the next"),
    _Route("GET", "/options", "get_options", Options, "Every option Atelier implements, with its value"),
    _Route("POST", "/options", "set_options", None, "Change options (the whole GET result may be sent back)"),
    _Route("GET", "/cmd-flags", "control.cmd_flags", Flags, "The command line, under A1111's flag names"),
    _Route("GET", "/memory", "control.memory", MemoryResponse, "RAM and CUDA memory, in bytes"),
    _Route("GET", "/sd-models", "sd_models", list[SDModelItem], "Installed checkpoints"),
    _Route("GET", "/sd-vae", "sd_vae", list[SDVaeItem], "Installed VAEs"),
    _Route("GET", "/sd-modules", "control.sd_modules", list[SDModuleItem], "Forge's extra modules (none)"),
    _Route("POST", "/refresh-checkpoints", "refresh_checkpoints", None, "Rescan the models folders"),
    _Route("POST", "/refresh-vae", "control.refresh_vae", None, "Rescan the VAE folders"),
    _Route("POST", "/unload-checkpoint", "control.unload_checkpoint", dict[str, Any],
           "Free the loaded checkpoints from VRAM and RAM (the next request loads again)"),
    _Route("POST", "/reload-checkpoint", "control.reload_checkpoint", dict[str, Any],
           "Load the current checkpoint again"),
    _Route("GET", "/samplers", "samplers", list[SamplerItem], "Sampler names"),
    _Route("GET", "/schedulers", "schedulers", list[SchedulerItem], "Schedule types"),
    _Route("GET", "/upscalers", "upscalers", list[UpscalerItem], "Every upscaler"),
    _Route("GET", "/realesrgan-models", "realesrgan_models", list[RealesrganItem], "Real-ESRGAN model files"),
    _Route("GET", "/latent-upscale-modes", "latent_upscale_modes", list[LatentUpscalerModeItem],
           "The hires fix's latent upscale modes"),
    _Route("GET", "/scripts", "scripts", ScriptsList, "A1111 scripts Atelier runs"),
    _Route("GET", "/script-info", "script_info", list[ScriptInfo], "The scripts' arguments"),
    _Route("GET", "/loras", "loras", list[LoraItem], "Installed LoRAs"),
    _Route("POST", "/refresh-loras", "refresh_loras", None, "Rescan the LoRA folders"),
    _Route("GET", "/embeddings", "embeddings", EmbeddingsResponse, "Textual-inversion embeddings"),
    _Route("POST", "/refresh-embeddings", "refresh_embeddings", None, "Rescan the embedding folders"),
    _Route("GET", "/prompt-styles", "prompt_styles", list[PromptStyleItem], "Styles of the styles file"),
    _Route("GET", "/hypernetworks", "control.hypernetworks", list[HypernetworkItem],
           "Hypernetworks (none: Atelier does not run them)"),
    _Route("GET", "/face-restorers", "control.face_restorers", list[FaceRestorerItem],
           "Face restorers (none: face restoration is not available)"),
    _Route("POST", "/interrogate", "control.interrogate", None, "Caption an image: not available (422 says why)"),
    _Route("POST", "/images/generations", "openai.generations", ImagesResponse,
           "OpenAI-style image generation (the same queue as txt2img)", base=OPENAI_PREFIX),
    _Route("GET", "/models", "openai.models", ModelList, "OpenAI-style list of the checkpoints", base=OPENAI_PREFIX),
)


def build_router(manager: Any, settings: Settings, auth: BasicAuth | None = None, cors: CorsPolicy | None = None,
                 flags: Mapping[str, Any] | None = None) -> APIRouter:
    """An APIRouter with every ``/sdapi/v1`` route (and the OpenAI-style ``/v1`` ones) bound to ``manager``: a
    cross-site request refused first (``cors``: the origins allowed besides the server's own), then the login checked
    when ``auth``. ``flags``: the command line, for ``/cmd-flags``."""
    api = SdApi(manager, settings, flags)
    router = APIRouter(route_class=make_route_class(auth, cors), tags=["sdapi"], responses=_ERRORS)
    openai_route = make_route_class(auth, cors, bearer=True, error_body=openai_error)
    for route in _ROUTES:
        endpoint = _handler(api, route.handler)
        family = "openai" if route.openai else "sdapi"
        extra: dict[str, Any] = {"route_class_override": openai_route, "tags": ["openai"]} if route.openai else {}
        for path, documented in ((route.path, True), (route.path + "/", False)):
            router.add_api_route(
                path,
                endpoint,
                methods=[route.method],
                response_model=route.response_model,
                summary=route.summary,
                name=f"{family}_{route.handler.replace('.', '_')}{'' if documented else '_slash'}",
                include_in_schema=documented,
                # a JSON body without a Content-Type is read as JSON, as A1111's FastAPI did (Dify posts so); a page of
                # another site cannot use that: its requests carry an Origin, refused by the route class
                strict_content_type=False,
                **extra,
            )
    router.add_api_route(
        PREFIX + "/{path:path}",
        api.unknown_route,
        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        include_in_schema=False,
    )
    return router


def _handler(api: SdApi, name: str) -> Any:
    """The bound handler called ``name`` on ``api`` (``control.memory``: the ``memory`` of ``api.control``)."""
    target: Any = api
    for part in name.split("."):
        target = getattr(target, part)
    return target


# --- helpers ---------------------------------------------------------------------------------------------------
def _readable_metadata(manager: Any, info: Any) -> dict[str, Any]:
    """A LoRA's metadata as A1111 lists it: text values that hold a JSON object (kohya's ``ss_tag_frequency``,
    ``ss_dataset_dirs``) parsed; {} when the file cannot be read."""
    try:
        raw = manager.lora_metadata(info) or {}
    except (AtelierError, OSError):
        return {}
    metadata: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, str) and value[:1] == "{":
            try:
                value = json.loads(value)
            except ValueError:
                pass
        metadata[str(key)] = value
    return metadata


def _embedding_item(embedding: Any) -> EmbeddingItem:
    """A1111's entry for one embedding: ``shape`` is the vector width (both encoders' together for SDXL)."""
    return EmbeddingItem(step=embedding.step, sd_checkpoint=embedding.sd_checkpoint,
                         sd_checkpoint_name=embedding.sd_checkpoint_name, shape=sum(embedding.widths),
                         vectors=embedding.vector_count)


def _extras_input(value: str | None, field: str, name: str = "") -> Image.Image:
    """An extras route's image, decoded; ``name`` (a batch entry's file name) is said in the message."""
    called = f" ({name})" if name else ""
    if not value:
        raise InvalidRequest(f"{field}{called}: send the image to upscale as base64 (raw or a data: URL).", field)
    image = decode_image(value, field)
    if max(image.size) > MAX_UPSCALE_INPUT:
        raise InvalidRequest(
            f"{field}{called} is {image.width}x{image.height}; the limit is {MAX_UPSCALE_INPUT} px per side.", field
        )
    return image


def _second_upscaler(body: ExtrasBaseRequest) -> bool:
    """A1111 runs ``upscaler_2`` only when it names one and its visibility is above 0."""
    return (body.upscaler_2 or "None").strip().lower() != "none" and (body.extras_upscaler_2_visibility or 0) > 0


def blend_upscales(first: Image.Image, second: Image.Image, visibility: float) -> Image.Image:
    """A1111's extras: ``upscaler_2``'s picture over ``upscaler_1``'s with ``visibility`` (``Image.blend``)."""
    first, second = first.convert("RGB"), second.convert("RGB")
    if second.size != first.size:  # both upscales aim at the same size; a model may round differently
        second = second.resize(first.size, Image.Resampling.LANCZOS)
    return Image.blend(first, second, visibility)


def _is_realesrgan(info: Any) -> bool:
    """A Real-ESRGAN model file: spandrel's Compact architecture, or an ESRGAN-shaped file in A1111's
    ``RealESRGAN/`` folder or named so."""
    if getattr(info, "family", None) != UPSCALER_MODEL:
        return False
    if getattr(info, "architecture", None) == "RealESRGAN Compact":
        return True
    path = str(getattr(info, "path", "")).lower().replace("\\", "/")
    return "/realesrgan/" in path or "realesrgan" in info.name.lower() or "r-esrgan" in info.name.lower()
