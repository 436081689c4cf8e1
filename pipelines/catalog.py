"""Request names → installed models: which checkpoint, VAE or upscaler a request means.

A request may name a model by ``name``, ``name [hash]`` or file name, or leave it to the Settings' default (the
checkpoint chosen in the UI, the VAE menu's "Automatic", the first installed SD x4 upscaler). An unknown name is a
``ModelNotFound`` that names the request field. The registry answers what is installed; this room adds the
defaults and the field names.

Upscalers are one list (``registry.all_upscalers``: built-ins, ESRGAN-family files, SD x4 folders); the hires fix
also takes A1111's latent modes (``request.LATENT_UPSCALE_MODES``). The hires fix and the SD upscale script take a
pixel upscaler only (a built-in or a model file): the SD x4 upscaler is a second diffusion model, which A1111 does
not offer there either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidRequest, ModelNotFound
from .families import FAMILIES
from .prompt_parser import PromptStyle, load_styles
from .registry import DEPTH_FAMILY, UPSCALER_SD_X4, ModelInfo
from .request import LATENT_UPSCALE_MODES, GenerationRequest, check_upscale_target
from .settings import Settings
from .upscale import no_upscaler_error

log = logging.getLogger(__name__)

AUTOMATIC_VAE_NAMES = ("automatic", "none", "auto")  # the checkpoint's own VAE


@dataclass
class Targets:
    """The models a request resolved to."""

    checkpoint: Any  # ModelInfo of the checkpoint (or of the upscaler for task "upscale")
    vae: Any = None  # ModelInfo of an external VAE, or None for the checkpoint's own
    upscaler: Any = None  # the pixel upscaler of a hires fix or an SD upscale (None: a latent mode, or none)
    depth: Any = None  # the DPT model of a depth-to-image run (None: not a depth checkpoint, or a depth map given)


class ModelCatalog:
    """Looks names up in ``registry`` (a ``ModelRegistry`` or a stand-in) with the ``settings``' defaults."""

    def __init__(self, registry: Any, settings: Settings):
        self.registry = registry
        self.settings = settings
        self._styles: tuple[tuple[str, int] | None, dict[str, PromptStyle]] = (None, {})
        # The checkpoint the default fell back to while none was chosen: it stays the default through rescans (a
        # new file sorted before it must never become the current checkpoint), until it is gone or one is chosen.
        self._fallback: str | None = None

    # --- styles ---------------------------------------------------------------------------------------------
    def styles_path(self) -> Path | None:
        """A1111's ``styles.csv``: ``--styles-file``, else beside the settings file (None when there is neither)."""
        if self.settings.styles_file is not None:
            return Path(self.settings.styles_file)
        if self.settings.settings_file is not None:
            return Path(self.settings.settings_file).with_name("styles.csv")
        return None

    def styles(self) -> dict[str, PromptStyle]:
        """The styles by name, read again whenever the file changes; {} without a file. A file that cannot be read
        keeps the styles read before (and says why in the log)."""
        path = self.styles_path()
        try:
            stat = path.stat() if path is not None else None
        except OSError:
            stat = None
        version = (str(path), stat.st_mtime_ns) if stat is not None else None
        if version == self._styles[0]:
            return self._styles[1]
        try:
            styles = load_styles(path) if version is not None else {}
        except Exception as exc:  # an unreadable styles file never stops an image (AtelierError, OSError, bad UTF-8)
            log.warning("Could not read the styles file %s: %s", path, exc)
            return self._styles[1]
        self._styles = (version, styles)
        return styles

    def resolve(self, request: GenerationRequest) -> Targets:
        """The checkpoint (or upscaler) and external VAE ``request`` will run with, and the pixel upscaler of a hires
        fix or SD upscale. Raises ``ModelNotFound``/``InvalidRequest`` naming the field."""
        if request.task == "upscale":
            info = self.upscaler(request.upscaler)
            if getattr(info, "family", None) != UPSCALER_SD_X4:  # the SD x4 path keeps its own 4x (and limits)
                check_upscale_target(request, float(getattr(info, "scale", None) or 4))
            return Targets(info)
        vae_name = request.vae if request.vae is not None else self.settings.vae
        targets = Targets(self.checkpoint(request.checkpoint), self.vae(vae_name))
        if request.task == "txt2img" and request.enable_hr and request.hr_upscaler not in LATENT_UPSCALE_MODES:
            targets.upscaler = self.pixel_upscaler(request.hr_upscaler, "hr_upscaler", latent=True)
        if request.sd_upscale:
            targets.upscaler = self.pixel_upscaler(request.sd_upscale_upscaler, "sd_upscale_upscaler")
        spec = FAMILIES.get(getattr(targets.checkpoint, "family", None) or "")
        if spec is not None and spec.is_depth and request.task == "img2img" and request.depth_map is None:
            targets.depth = self.depth_model(targets.checkpoint)
        return targets

    def check_runs(self, targets: Targets, request: GenerationRequest) -> None:
        """``InvalidRequest`` naming the checkpoint when its family has no pipeline for the request (SD 2's depth
        model draws image to image only; txt2img, the hires fix and inpainting need another checkpoint)."""
        info = targets.checkpoint
        spec = FAMILIES.get(getattr(info, "family", None) or "")
        task = request.pipeline_task
        if request.task == "upscale" or spec is None or spec.supports(task):
            return
        what = {"txt2img": "Text to Image", "img2img": "Image to Image", "inpaint": "inpainting or outpainting"}
        runs = " and ".join(what.get(name, name) for name in spec.pipelines)
        raise InvalidRequest(f"{info.name} is an {spec.label} checkpoint, which runs {runs} only, not "
                             f"{what.get(task, task)}. Choose another checkpoint.", field="checkpoint")

    def depth_model(self, checkpoint: Any) -> Any:
        """The DPT model a depth-to-image run of ``checkpoint`` estimates its depth with: the first usable folder of
        ``models/depth/``, else the checkpoint's own ``depth_estimator/`` (a diffusers folder's layout). Without
        either, ``InvalidRequest`` naming ``depth_map``."""
        usable = [info for info in self.registry.depth_models() if getattr(info, "family", None) == DEPTH_FAMILY]
        if usable:
            return usable[0]
        own = Path(str(getattr(checkpoint, "path", ""))) / "depth_estimator"
        if getattr(checkpoint, "format", "") == "diffusers" and (own / "config.json").is_file():
            return ModelInfo(f"{checkpoint.name}/depth_estimator", own, "depth", "transformers", 0, DEPTH_FAMILY,
                             "config")
        raise InvalidRequest(
            f"{checkpoint.name} is a depth-to-image checkpoint: it needs a depth map. Upload one (depth_map), or put a "
            "DPT depth model folder (transformers' DPTForDepthEstimation, e.g. Intel/dpt-hybrid-midas) into "
            "models/depth/ to have it estimated.", field="depth_map")

    def checkpoint(self, name: str | None) -> Any:
        """The checkpoint called ``name``, or the default one for None/""."""
        if name:
            return _with_field(lambda: self.registry.find_checkpoint(name), "checkpoint")
        info = self.default_checkpoint()
        if info is None:
            raise ModelNotFound(self.registry.empty_message(), field="checkpoint")
        return info

    def vae(self, name: str | None) -> Any | None:
        """The external VAE called ``name``; None for the checkpoint's own ("Automatic", "None", empty)."""
        if not name or name.strip().lower() in AUTOMATIC_VAE_NAMES:
            return None
        return _with_field(lambda: self.registry.find_vae(name), "vae")

    def upscaler(self, name: str | None) -> Any:
        """The upscaler called ``name``, or the first installed one for None/""."""
        if name:
            return _with_field(lambda: self.registry.find_upscaler(name), "upscaler")
        installed = list(self.registry.upscalers())
        if not installed:
            raise no_upscaler_error()
        return installed[0]

    def pixel_upscaler(self, name: str, field_name: str, latent: bool = False) -> Any:
        """A built-in or ESRGAN-family upscaler called ``name`` for ``field_name`` (the hires fix's, ``latent``: the
        latent modes are named in the message too); ``ModelNotFound`` listing the ones that can be used."""
        everything = list(self.registry.all_upscalers())
        usable = [info for info in everything if getattr(info, "family", None) != UPSCALER_SD_X4]
        try:
            info = self.registry.find_upscaler(name)
        except ModelNotFound:
            info = None
        if info is not None and getattr(info, "family", None) != UPSCALER_SD_X4:
            return info
        names = [*(LATENT_UPSCALE_MODES if latent else ()), *(i.name for i in usable)]
        why = ("is the SD x4 upscaler, a diffusion model of its own, which cannot be used here" if info is not None
               else "is not installed")
        raise ModelNotFound(f"The upscaler {name!r} {why}. Available: {', '.join(names)}.", field=field_name)

    def default_checkpoint(self) -> Any | None:
        """The checkpoint used when a request names none: the setting, else the one it fell back to before (while it
        is installed), else the first installed usable one."""
        if self.settings.checkpoint:
            try:
                return self.registry.find_checkpoint(self.settings.checkpoint)
            except ModelNotFound:
                log.warning("default checkpoint %r is not installed; using the first one", self.settings.checkpoint)
        installed = list(self.registry.checkpoints())
        # A file the registry already knows cannot load (refused pickle, cut-short download) is never the default.
        usable = [info for info in installed if not getattr(info, "problem", None)]
        candidates = usable or installed
        chosen = next((info for info in candidates if info.name == self._fallback), None)
        if chosen is None:
            chosen = candidates[0] if candidates else None
            self._fallback = chosen.name if chosen is not None else None
        return chosen

    def set_default_checkpoint(self, name: str) -> Any:
        """Make ``name`` the default checkpoint (raises ``ModelNotFound``)."""
        info = _with_field(lambda: self.registry.find_checkpoint(name), "checkpoint")
        self.settings.checkpoint = info.name
        return info

    def set_default_vae(self, name: str | None) -> None:
        """Make ``name`` ("Automatic" or a models/vae file) the default VAE (raises ``ModelNotFound``)."""
        info = self.vae(name)
        self.settings.vae = info.name if info is not None else "Automatic"


def _with_field(find: Callable[[], Any], field_name: str) -> Any:
    try:
        return find()
    except ModelNotFound as exc:
        if exc.field is None:
            exc.field = field_name
        raise
