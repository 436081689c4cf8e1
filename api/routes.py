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
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import APIRouter, Request
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
    ImageToImageResponse,
    Img2ImgRequest,
    LatentUpscalerModeItem,
    LoraItem,
    Options,
    PNGInfoRequest,
    PNGInfoResponse,
    ProgressResponse,
    ProgressState,
    PromptStyleItem,
    RealesrganItem,
    SamplerItem,
    SchedulerItem,
    ScriptArg,
    ScriptInfo,
    ScriptsList,
    SDModelItem,
    SDVaeItem,
    TextToImageResponse,
    Txt2ImgRequest,
    UpscalerItem,
)

log = logging.getLogger("atelier.api")

PREFIX = "/sdapi/v1"
MAX_EXTRAS_BATCH = 32  # images per /extra-batch-images request: each one is a job of its own
# A1111's SD upscale script's info text (its first argument), as /script-info shows it
SD_UPSCALE_INFO = "Will upscale the image by the selected scale factor; use width and height sliders to set tile size"
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (401, "Login required (--auth)"),
        (422, "Invalid request; `detail` names the field"),
        (429, "The job queue is full"),
    )
}


class SdApi:
    """The route handlers, bound to one manager and its settings."""

    def __init__(self, manager: Any, settings: Settings):
        self.manager = manager
        self.settings = settings
        # Threads that only wait for queued jobs: one per job the queue can hold, plus the running one.
        self._waiters = anyio.CapacityLimiter(max(1, settings.queue_size) + 2)

    # --- generation ----------------------------------------------------------------------------------------
    async def txt2img(self, body: Txt2ImgRequest) -> TextToImageResponse:
        """Text to image, as A1111's ``/sdapi/v1/txt2img``."""
        return await self._generate(convert.txt2img_request, body, TextToImageResponse)

    async def img2img(self, body: Img2ImgRequest) -> ImageToImageResponse:
        """Image to image, as A1111's ``/sdapi/v1/img2img`` (one init image; no inpainting mask), with A1111's
        ``sd upscale`` script."""
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
        try:
            self.manager.registry.find_upscaler(name)
        except ModelNotFound as exc:
            raise _with_choices(exc, field, self._upscaler_names()) from None

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
        """The running job: fraction done, ETA, step counts and the latest preview (A1111's shape)."""
        job = self.manager.current_job()
        if job is None:
            waiting = self.manager.queue_length()
            if waiting:  # between two jobs: not idle yet (webuiapi's util_wait_for_ready polls job_count)
                return ProgressResponse(state=ProgressState(job_count=waiting), textinfo=f"{waiting} job(s) queued")
            return ProgressResponse()
        event = job.progress
        preview = None
        if not skip_current_image and event.preview is not None:
            preview = convert.png_base64(event.preview)
        state = ProgressState(
            job=job.id,
            job_count=max(1, event.batch_count),
            job_no=event.batch_index,
            sampling_step=event.step,
            sampling_steps=event.total_steps,
            interrupted=event.state == "cancelled" or job.state == "cancelled",
            queue_position=event.queue_position,
        )
        textinfo = _progress_text(event)
        return ProgressResponse(
            progress=event.fraction,
            eta_relative=event.eta_s or 0.0,
            state=state,
            current_image=preview,
            textinfo=textinfo,
            current_task=job.id,
        )

    def interrupt(self) -> dict[str, Any]:
        """Stop the running job within a step; images already finished are kept and returned to its caller."""
        self.manager.interrupt()
        return {}

    # --- models and options --------------------------------------------------------------------------------
    def sd_models(self) -> list[SDModelItem]:
        """Installed checkpoints, titled "name [hash]" as A1111 lists them."""
        registry = self.manager.registry
        return [
            SDModelItem(
                title=info.title,
                model_name=info.name,
                hash=registry.short_hash(info),
                sha256=_sha256(registry, info),
                filename=str(info.path),
                config=None,
            )
            for info in self.manager.checkpoints()
        ]

    def sd_vae(self) -> list[SDVaeItem]:
        """VAE files of models/vae/ (A1111's ``/sd-vae``)."""
        return [SDVaeItem(model_name=info.name, filename=str(info.path)) for info in self.manager.vaes()]

    def refresh_checkpoints(self) -> None:
        """Scan the models folders again."""
        self.manager.refresh_models()

    def get_options(self) -> Options:
        """The options Atelier shares with A1111: the default checkpoint and VAE, clip skip, emphasis, speed-ups."""
        default = self.manager.default_checkpoint()
        return Options(
            sd_model_checkpoint=default.title if default is not None else None,
            sd_checkpoint_hash=_sha256(self.manager.registry, default) if default is not None else None,
            sd_vae=self.settings.vae or "Automatic",  # the manager keeps the default VAE in the shared settings
            samples_format="png",
            token_merging_ratio=self.settings.token_merging,
            deep_cache=self.settings.deep_cache,
            deep_cache_interval=self.settings.deep_cache_interval,
            CLIP_stop_at_last_layers=self.settings.clip_skip,
            emphasis=self.settings.emphasis,
        )

    def set_options(self, options: Options) -> None:
        """Switch the default checkpoint (``sd_model_checkpoint``), VAE (``sd_vae``), clip skip
        (``CLIP_stop_at_last_layers``), ``emphasis`` and the speed-up switches (``token_merging_ratio``,
        ``deep_cache``, ``deep_cache_interval``); other keys are ignored. Saved like the Settings tab's values.

        Both names are checked before either is applied; an unknown name is a 422 that lists the valid ones.
        """
        ignored = sorted(
            set(options.model_extra or {}) | ({"sd_checkpoint_hash", "samples_format"} & options.model_fields_set)
        )
        if ignored:
            log.debug("options: ignoring keys Atelier does not set: %s", ", ".join(ignored))
        checkpoint = _option_text(options.sd_model_checkpoint, "sd_model_checkpoint")
        vae = _option_text(options.sd_vae, "sd_vae")
        if checkpoint is not None:
            self._check_checkpoint(checkpoint)
        if vae is not None:
            vae = "Automatic" if vae == "None" else vae
            self._check_vae(vae)
        changes = _setting_options(options)
        if changes:
            _with_option_names(lambda: self.manager.apply_settings(changes))
        if checkpoint is not None:
            self.manager.set_default_checkpoint(checkpoint)
        if vae is not None:
            self.manager.set_default_vae(vae)

    def _check_checkpoint(self, name: str) -> None:
        try:
            self.manager.registry.find_checkpoint(name)
        except ModelNotFound as exc:
            titles = [info.title for info in self.manager.checkpoints()]
            raise _with_choices(exc, "sd_model_checkpoint", titles) from None

    def _check_vae(self, name: str) -> None:
        try:
            self.manager.registry.find_vae(name)
        except ModelNotFound as exc:
            names = ["Automatic", "None", *(info.name for info in self.manager.vaes())]
            raise _with_choices(exc, "sd_vae", names) from None

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
        return [SchedulerItem(name=name.lower(), label=name) for name in SCHEDULE_NAMES]

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


@dataclass(frozen=True)
class _Route:
    """One documented route: method, path under /sdapi/v1, handler name on ``SdApi``, response model, summary."""

    method: str
    suffix: str
    handler: str
    response_model: Any
    summary: str

    @property
    def path(self) -> str:
        return PREFIX + self.suffix


_ROUTES: tuple[_Route, ...] = (
    _Route("POST", "/txt2img", "txt2img", TextToImageResponse, "Text to image"),
    _Route("POST", "/img2img", "img2img", ImageToImageResponse, "Image to image"),
    _Route("POST", "/extra-single-image", "extra_single_image", ExtrasSingleImageResponse, "Upscale one image"),
    _Route("POST", "/extra-batch-images", "extra_batch_images", ExtrasBatchImagesResponse, "Upscale several images"),
    _Route("POST", "/png-info", "png_info", PNGInfoResponse, "Read the generation parameters of a PNG"),
    _Route("GET", "/progress", "progress", ProgressResponse, "Progress of the running job"),
    _Route("POST", "/interrupt", "interrupt", dict[str, Any], "Stop the running job"),
    _Route("GET", "/options", "get_options", Options, "Current default checkpoint and VAE"),
    _Route("POST", "/options", "set_options", None, "Switch the default checkpoint and/or VAE"),
    _Route("GET", "/sd-models", "sd_models", list[SDModelItem], "Installed checkpoints"),
    _Route("GET", "/sd-vae", "sd_vae", list[SDVaeItem], "Installed VAEs"),
    _Route("POST", "/refresh-checkpoints", "refresh_checkpoints", None, "Rescan the models folders"),
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
)


def build_router(manager: Any, settings: Settings, auth: BasicAuth | None = None) -> APIRouter:
    """An APIRouter with every ``/sdapi/v1`` route bound to ``manager``; login checked first when ``auth``."""
    api = SdApi(manager, settings)
    router = APIRouter(route_class=make_route_class(auth), tags=["sdapi"], responses=_ERRORS)
    for route in _ROUTES:
        router.add_api_route(
            route.path,
            getattr(api, route.handler),
            methods=[route.method],
            response_model=route.response_model,
            summary=route.summary,
            name=f"sdapi_{route.handler}",
        )
    router.add_api_route(
        PREFIX + "/{path:path}",
        api.unknown_route,
        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        include_in_schema=False,
    )
    return router


# --- helpers ---------------------------------------------------------------------------------------------------
def _sha256(registry: Any, info: Any) -> str | None:
    """The full sha256 when the registry has it (A1111 lists it), else None."""
    getter = getattr(registry, "sha256", None)
    if getter is None:
        return None
    try:
        return getter(info)
    except (AtelierError, OSError):
        return None


# /options keys that are Settings → their Settings fields: A1111's keys (token merging, clip skip, emphasis) and ours
# (DeepCache).
_SETTING_OPTIONS = {"token_merging_ratio": "token_merging", "deep_cache": "deep_cache",
                    "deep_cache_interval": "deep_cache_interval", **convert.PROMPT_OPTIONS}


def _setting_options(options: Options) -> dict[str, Any]:
    """The Settings a POST /options body sets, as Settings changes."""
    return {field: getattr(options, key) for key, field in _SETTING_OPTIONS.items()
            if getattr(options, key) is not None}


def _with_option_names(apply: Any) -> Any:
    """Run ``apply``; an ``InvalidRequest`` names the /options key the client sent, not the Settings field."""
    try:
        return apply()
    except InvalidRequest as exc:
        names = {field: key for key, field in _SETTING_OPTIONS.items()}
        if exc.field in names:
            raise InvalidRequest(exc.message.replace(exc.field, names[exc.field], 1), names[exc.field]) from None
        raise


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


def _option_text(value: str | None, key: str) -> str | None:
    if value is None:
        return None
    if not value.strip():
        raise InvalidRequest(f"{key} must be a model name; got an empty text.", key)
    return value.strip()


def _with_choices(exc: ModelNotFound, field: str, choices: list[str]) -> ModelNotFound:
    message = exc.message
    missing = [choice for choice in choices if choice.split(" [", 1)[0] not in message]
    if choices and missing:
        message = f"{message.rstrip('.')}. Valid names: {', '.join(choices)}."
    elif not choices:
        message = f"{message.rstrip('.')}. No models are installed."
    return ModelNotFound(message, field)


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


def _progress_text(event: Any) -> str:
    """A1111's ``textinfo``: what the engine says in words (loading what, an error), else the step counts."""
    if event.message:
        return event.message
    if event.state == "saving":
        return "Saving"
    if event.total_steps:
        phase = f"{event.phase}: " if event.phase else ""
        return f"{phase}Step {event.step}/{event.total_steps} · batch {event.batch_index + 1}/{event.batch_count}"
    return str(event.state)
