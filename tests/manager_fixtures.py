"""Helpers for the manager tests: loaders over the tiny random-weight models, and a manager built on them and on
``fakes.FakeRegistry`` (re-exported here for the tests that import it from this module).

They let the manager tests run without model files (the real registry/loaders have their own tests, and
tests/test_manager.py also runs through them when tests/model_fixtures.py provides ``tiny_models_dir``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fakes import FakeRegistry, name_hash

from pipelines.settings import Settings
from pipelines.tiny import (
    SD15_SCHEDULER_CONFIG,
    X4_SCHEDULER_CONFIG,
    tiny_depth_components,
    tiny_sd15_components,
    tiny_sd15_inpaint_components,
    tiny_sdxl_components,
    tiny_vae,
    tiny_x4_components,
)

# the tiny components for a checkpoint of each family a test's registry names (FakeInfo.family); others: SD 1.x
TINY_BUILDERS = {"sd15-inpaint": tiny_sd15_inpaint_components, "sd2-inpaint": tiny_sd15_inpaint_components,
                 "sd2-depth": tiny_depth_components, "sdxl": tiny_sdxl_components}


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


class TinyLoader:
    """``load_components`` stand-in: builds tiny models in memory, one seed per checkpoint name; counts loads. The
    checkpoint's ``family`` picks the UNet (a 9-channel inpainting one, a 5-channel depth one, else SD 1.x's)."""

    def __init__(self):
        self.loads: list[str] = []
        self.fail_next: Exception | None = None

    @staticmethod
    def seed_for(name: str) -> int:
        """The weights' seed of the tiny checkpoint called ``name``."""
        return int(name_hash(name), 16) % 1000

    def __call__(self, info: Any, dtype: Any, vae: Any = None) -> FakeLoaded:
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        self.loads.append(info.name)
        if info.family == "x4-upscaler":
            components = tiny_x4_components()
            config = dict(X4_SCHEDULER_CONFIG)
        else:
            build = TINY_BUILDERS.get(info.family, tiny_sd15_components)
            components = {k: v for k, v in build(self.seed_for(info.name)).items() if v is not None}
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
