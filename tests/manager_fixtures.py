"""Helpers for the manager tests: an in-memory registry and loaders over the tiny random-weight models.

They let the manager tests run without model files (the real registry/loaders have their own tests, and
tests/test_manager.py also runs through them when tests/model_fixtures.py provides ``tiny_models_dir``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipelines.errors import ModelNotFound
from pipelines.settings import Settings
from pipelines.tiny import SD15_SCHEDULER_CONFIG, tiny_sd15_components, tiny_text_encoder, tiny_vae

# One intra-op thread: the tiny models gain nothing from two, and on a shared 2-core machine OpenMP's spinning
# threads make every conv 5-6x slower under load (measured: 82 ms vs 14 ms per 64x64 conv).
torch.set_num_threads(1)

X4_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDIMScheduler",
    "beta_end": 0.02,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.0001,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}


@dataclass
class FakeInfo:
    """Shaped like registry.ModelInfo."""

    name: str
    path: Path
    kind: str = "checkpoint"
    format: str = "safetensors"
    size: int = 0
    family: str = "sd15"
    family_source: str = "test"

    @property
    def title(self) -> str:
        return f"{self.name} [{short_hash(self.name)}]"


@dataclass
class FakeLoaded:
    """Shaped like loaders.LoadedCheckpoint."""

    info: Any
    family: str
    components: dict[str, Any]
    scheduler_config: dict[str, Any]
    nbytes: int = 0
    prediction_type: str = "epsilon"
    notes: list[str] = field(default_factory=list)


def short_hash(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:10]


class FakeRegistry:
    """In-memory ``ModelRegistry`` stand-in: checkpoints, VAEs and upscalers by name."""

    def __init__(self, checkpoints=("tiny-a", "tiny-b"), vaes=("tiny-vae",), upscalers=("tiny-x4",)):
        root = Path("/nonexistent-models")
        self._checkpoints = [FakeInfo(n, root / f"{n}.safetensors") for n in checkpoints]
        self._vaes = [FakeInfo(n, root / "vae" / f"{n}.safetensors", kind="vae") for n in vaes]
        self._upscalers = [
            FakeInfo(n, root / "upscale_models" / n, kind="upscaler", format="diffusers", family="x4-upscaler")
            for n in upscalers
        ]
        self.refreshed = 0

    def refresh(self) -> None:
        self.refreshed += 1

    def checkpoints(self):
        return list(self._checkpoints)

    def vaes(self):
        return list(self._vaes)

    def upscalers(self):
        return list(self._upscalers)

    def loras(self):
        return []

    def _find(self, items, name, what):
        for info in items:
            if name in (info.name, info.title, info.path.name):
                return info
        raise ModelNotFound(f"No {what} named '{name}'.")

    def find_checkpoint(self, name):
        return self._find(self._checkpoints, name, "checkpoint")

    def find_vae(self, name):
        if name in ("Automatic", "None", None):
            return None
        return self._find(self._vaes, name, "VAE")

    def find_upscaler(self, name):
        return self._find(self._upscalers, name, "upscaler")

    def short_hash(self, info) -> str:
        return short_hash(info.name)


def tiny_x4_components(seed: int = 0) -> dict[str, Any]:
    """A tiny SD x4 upscaler (diffusers' own test shapes: 7-channel UNet with noise-level class embedding)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel

    from pipelines.tokenizers import clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=7,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        use_linear_projection=True,
        only_cross_attention=(True, True, False),
        num_class_embeds=100,
        norm_num_groups=32,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[32, 32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        latent_channels=4,
        scaling_factor=0.08333,
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": tiny_text_encoder(hidden_size=32, seed=seed, hidden_act="gelu"),
        "tokenizer": clip_tokenizer(),
        "scheduler": DDIMScheduler.from_config(X4_SCHEDULER_CONFIG),
        "low_res_scheduler": DDPMScheduler(beta_schedule="scaled_linear", num_train_timesteps=1000),
    }


class TinyLoader:
    """``load_components`` stand-in: builds tiny models in memory, one seed per checkpoint name; counts loads."""

    def __init__(self):
        self.loads: list[str] = []
        self.fail_next: Exception | None = None

    def __call__(self, info: Any, dtype: Any, vae: Any = None) -> FakeLoaded:
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        self.loads.append(info.name)
        if info.family == "x4-upscaler":
            components = tiny_x4_components()
            config = dict(X4_SCHEDULER_CONFIG)
        else:
            seed = int(short_hash(info.name), 16) % 1000
            components = {k: v for k, v in tiny_sd15_components(seed).items() if v is not None}
            config = dict(SD15_SCHEDULER_CONFIG)
        for module in components.values():
            if hasattr(module, "parameters") and module.dtype != dtype:
                module.to(dtype=dtype)
        nbytes = sum(
            p.numel() * p.element_size()
            for m in components.values()
            if hasattr(m, "parameters")
            for p in m.parameters()
        )
        return FakeLoaded(info, info.family, components, config, nbytes)


def tiny_vae_loader(info: Any, dtype: Any, loaded: Any = None):
    """External VAE stand-in: a tiny VAE with different weights from every checkpoint's own."""
    vae = tiny_vae(seed=1234)
    return vae if vae.dtype == dtype else vae.to(dtype=dtype)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    settings = Settings(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs", cache_dir=tmp_path / ".cache")
    for key, value in overrides.items():
        setattr(settings, key, value)
    return settings


def make_manager(tmp_path: Path, loader: TinyLoader | None = None, registry: Any = None, **settings: Any):
    """A ``PipelineManager`` over the fake registry and tiny loader; tiles small enough for 32-64 px inputs."""
    from pipelines.manager import PipelineManager

    manager = PipelineManager(
        make_settings(tmp_path, **settings),
        registry or FakeRegistry(),
        loader=loader or TinyLoader(),
        vae_loader=tiny_vae_loader,
    )
    manager.upscale_tile, manager.upscale_overlap = 32, 8
    return manager
