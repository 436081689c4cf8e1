"""The server's own state over ``/sdapi/v1``, in A1111's shapes: the command line (``cmd-flags``), memory
(``memory``), giving the VRAM away and taking it back (``unload-checkpoint``, ``reload-checkpoint``, as
text-generation-webui does for an LLM), ``skip``, ``refresh-vae``, and the answers for what Atelier does not have:
``hypernetworks``, ``face-restorers`` and ``sd-modules`` are empty lists, ``interrogate`` is a 422 that says why.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio

from pipelines.errors import InvalidRequest
from pipelines.registry import CHECKPOINT_DIRS, EMBEDDING_DIRS, LORA_DIRS, UPSCALER_DIRS, VAE_DIRS

from .models import FaceRestorerItem, Flags, HypernetworkItem, InterrogateRequest, MemoryResponse, SDModuleItem

INTERROGATE_MISSING = (
    "interrogate is not available: Atelier has no captioning model (A1111's CLIP interrogator or DeepDanbooru), so "
    "it cannot describe an image; write the prompt yourself or caption the image with another tool."
)


class ControlRoutes:
    """Handlers bound to one manager, its settings and the command line it was started with (``flags``: app.py's
    parsed flags by name; empty when the API is mounted by a test or another program)."""

    def __init__(self, manager: Any, settings: Any, flags: Mapping[str, Any] | None, waiters: Any):
        self.manager = manager
        self.settings = settings
        self.flags = dict(flags or {})
        self._waiters = waiters  # the thread limiter of the waits on the queue (SdApi's)

    def cmd_flags(self) -> Flags:
        """The command line under A1111's flag names (and Atelier's own); never a password."""
        settings, flags = self.settings, self.flags
        models = Path(settings.models_dir)
        return Flags(
            listen=bool(flags.get("listen")),
            server_name=flags.get("host") or ("0.0.0.0" if flags.get("listen") else None),
            port=flags.get("port"),
            share=bool(flags.get("share")),
            autolaunch=not flags.get("no_browser", True),
            auth=bool(flags.get("auth") or flags.get("auth_file")),
            cors_allow_origins=flags.get("cors_allow_origins"),
            cors_allow_origins_regex=flags.get("cors_allow_origins_regex"),
            data_dir=str(models.parent),
            models_dir=str(models),
            ckpt_dir=_folder(models, CHECKPOINT_DIRS),
            vae_dir=_folder(models, VAE_DIRS),
            lora_dir=_folder(models, LORA_DIRS),
            embeddings_dir=_folder(models, EMBEDDING_DIRS),
            esrgan_models_path=_folder(models, UPSCALER_DIRS),
            styles_file=[str(settings.styles_file)] if settings.styles_file else [],
            ckpt=flags.get("checkpoint"),
            medvram=bool(flags.get("medvram")),
            lowvram=bool(flags.get("lowvram")),
            xformers=bool(settings.xformers),
            precision="full" if settings.precision == "fp32" else "autocast",
            no_half=settings.precision == "fp32",
            use_cpu=["all"] if settings.device == "cpu" else [],
            outputs_dir=str(settings.outputs_dir),
            cache_dir=str(settings.cache_dir),
            settings_file=str(settings.settings_file) if settings.settings_file else None,
            device=settings.device,
            fast=bool(settings.fast),
            demo=bool(settings.demo),
        )

    def memory(self) -> MemoryResponse:
        """RAM (this process's use, the machine's total) and CUDA memory, in bytes, as A1111 reports them."""
        report = self.manager.memory()
        return MemoryResponse(ram=report.get("ram", {}), cuda=report.get("cuda", {}))

    async def unload_checkpoint(self) -> dict[str, Any]:
        """Free the loaded checkpoints (VRAM and RAM) once the running job ends; the next request loads again."""
        await anyio.to_thread.run_sync(self.manager.unload_checkpoint, limiter=self._waiters)
        return {}

    async def reload_checkpoint(self) -> dict[str, Any]:
        """Load the default checkpoint again (behind the queued jobs); answers once it is loaded."""
        await anyio.to_thread.run_sync(self.manager.reload_checkpoint, limiter=self._waiters)
        return {}

    def skip(self) -> None:
        """End the batch being drawn; the job goes on with its next batch (A1111 answers null)."""
        self.manager.skip()

    def refresh_vae(self) -> None:
        """Scan the models folders again (VAEs included); the default checkpoint and VAE stay as they are."""
        self.manager.refresh_models()

    def hypernetworks(self) -> list[HypernetworkItem]:
        """Hypernetworks: Atelier does not run them (LoRAs replaced them), so the list is empty."""
        return []

    def face_restorers(self) -> list[FaceRestorerItem]:
        """Face restorers (GFPGAN, CodeFormer): none until face restoration exists."""
        return []

    def sd_modules(self) -> list[SDModuleItem]:
        """Forge's extra modules (text encoders, VAEs picked per request): Atelier has none."""
        return []

    def interrogate(self, body: InterrogateRequest) -> None:
        """A1111's image captioning: not available (422 with the reason)."""
        raise InvalidRequest(INTERROGATE_MISSING, "model")


def _folder(models: Path, names: tuple[str, ...]) -> str:
    """The first of ``names`` (Atelier's, then A1111's and ComfyUI's) that exists in the models folder, else the
    first (where Atelier looks first)."""
    found = next((models / name for name in names if (models / name).is_dir()), models / names[0])
    return str(found)
