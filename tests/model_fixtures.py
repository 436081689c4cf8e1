"""Tiny random-weight models written as real model files, built once per test session (a pytest plugin).

Fixtures other test modules use:

* ``tiny_models_dir`` (session): a models folder holding
    - ``checkpoints/tiny-sd15.safetensors``        tiny SD 1.x, seed 0, single file in the original SD key layout
    - ``checkpoints/tiny-sd15-diffusers/``         the same model (seed 0) as a diffusers folder
    - ``checkpoints/tiny-sd15-b.safetensors``      another tiny SD 1.x, seed 1 (different pictures)
    - ``vae/tiny-vae.safetensors``                 a tiny VAE for SD 1.x (seed 2), original layout
    - ``upscale_models/tiny-x4/``                  tiny SD x4 upscaler, diffusers folder
  Names are in ``TINY_MODELS``. Load them with ``ModelRegistry(tiny_models_dir, cache_dir)``.
* ``tiny_cache_dir``: a fresh cache dir per test (hash cache, overrides).

Helpers (importable: ``from model_fixtures import ...``): ``tiny_components(kind, seed)``, ``write_single_file``,
``write_ckpt`` (with the extra objects a real Lightning ``.ckpt`` carries), ``write_diffusers_folder``,
``write_vae_file``, ``reference_image(kind, seed)``.
"""

from __future__ import annotations

import json
import sys
import types
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

TINY_MODELS = {
    "sd15": "tiny-sd15",
    "sd15_diffusers": "tiny-sd15-diffusers",
    "sd15_b": "tiny-sd15-b",
    "vae": "tiny-vae",
    "x4": "tiny-x4",
}
PROMPT = "a red apple on a table"


@lru_cache(maxsize=8)
def tiny_components(kind: str = "sd15", seed: int = 0) -> dict[str, Any]:
    """Tiny components by kind ("sd15", "sd2v", "sdxl", "x4"), built once per (kind, seed) in this process.

    Shared objects: never modify them; build a pipeline around them.
    """
    from pipelines import tiny

    builders = {
        "sd15": tiny.tiny_sd15_components,
        "sd2v": tiny.tiny_sd2v_components,
        "sdxl": tiny.tiny_sdxl_components,
        "x4": tiny.tiny_x4_components,
    }
    return builders[kind](seed)


def pipeline_class(kind: str):
    """The diffusers txt2img (or upscale) pipeline class for a tiny kind."""
    import diffusers

    name = {"sd15": "StableDiffusionPipeline", "sd2v": "StableDiffusionPipeline",
            "sdxl": "StableDiffusionXLPipeline", "x4": "StableDiffusionUpscalePipeline"}[kind]
    return getattr(diffusers, name)


def make_pipeline(kind: str, components: dict[str, Any], **extra: Any):
    """A pipeline over ``components`` (only the names the class takes)."""
    cls = pipeline_class(kind)
    expected, optional = cls._get_signature_keys(cls)
    kwargs = {k: components.get(k) for k in expected if k in components or k in cls._optional_components}
    kwargs.update({k: v for k, v in extra.items() if k in expected or k in optional})
    if "requires_safety_checker" in optional:
        kwargs.setdefault("requires_safety_checker", False)
    if kind == "x4":
        kwargs.setdefault("max_noise_level", 350)
    return cls(**kwargs)


def run_tiny(kind: str, pipe, seed: int = 1234):
    """Two steps at 64 px (x4: a 16 px input) with a CPU generator; returns a float numpy array."""
    import torch

    generator = torch.Generator("cpu").manual_seed(seed)
    if kind == "x4":
        from PIL import Image

        image = Image.new("RGB", (16, 16), (200, 80, 40))
        return pipe(PROMPT, image=image, num_inference_steps=2, generator=generator, output_type="np").images
    return pipe(PROMPT, num_inference_steps=2, height=64, width=64, generator=generator, output_type="np").images


@lru_cache(maxsize=8)
def reference_image(kind: str = "sd15", seed: int = 0):
    """The output of the in-memory tiny model (``run_tiny``), computed once per (kind, seed)."""
    return run_tiny(kind, make_pipeline(kind, tiny_components(kind, seed)))


def write_single_file(components: dict[str, Any], path: Path, embed_configs: bool = True) -> Path:
    """Original-layout ``.safetensors`` (see ``pipelines.demo.write_single_file``)."""
    from pipelines.demo import write_single_file as write

    return write(components, path, embed_configs=embed_configs)


def write_config_sidecar(components: dict[str, Any], checkpoint: Path) -> Path:
    """``<stem>.config/`` beside ``checkpoint`` with the components' diffusers configs (for .ckpt files)."""
    from pipelines.demo import component_configs
    from pipelines.loaders import write_config_folder

    folder = checkpoint.with_name(checkpoint.stem + ".config")
    write_config_folder(folder, component_configs(components))
    return folder


def _fake_lightning_class():
    """A class that pickles as ``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint``."""
    name = "pytorch_lightning.callbacks.model_checkpoint"
    modules = {}
    for i, part in enumerate(name.split(".")):
        modules[".".join(name.split(".")[: i + 1])] = types.ModuleType(part)
    cls = type("ModelCheckpoint", (), {"__module__": name})
    modules[name].ModelCheckpoint = cls
    return cls, modules


def write_ckpt(components: dict[str, Any], path: Path, with_sidecar: bool = True) -> Path:
    """A ``.ckpt`` as Lightning wrote SD 1.x: ``state_dict`` (original layout) + ``global_step`` (numpy int) +
    ``callbacks`` keyed by Lightning's ``ModelCheckpoint`` class (+ a numpy float score, bytes via protocol 2).

    Lightning is not installed: a stand-in module is placed in ``sys.modules`` only while saving.
    """
    import numpy as np
    import torch

    from pipelines.convert import pipeline_to_original

    cls, modules = _fake_lightning_class()
    saved = {k: sys.modules.get(k) for k in modules}
    sys.modules.update(modules)
    try:
        checkpoint = {
            "state_dict": pipeline_to_original(components),
            "global_step": np.int64(840000),
            "epoch": 6,
            "pytorch-lightning_version": "1.4.2",
            "callbacks": {cls: {"best_model_score": np.float64(0.25), "best_model_path": "/logs/last.ckpt",
                                "monitor": None, "dirpath": b"/logs/checkpoints"}},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(checkpoint, path)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    if with_sidecar:
        write_config_sidecar(components, path)
    return path


def write_diffusers_folder(kind: str, components: dict[str, Any], folder: Path) -> Path:
    """``save_pretrained`` of the tiny pipeline (model_index.json + component folders)."""
    make_pipeline(kind, components).save_pretrained(str(folder), safe_serialization=True)
    return folder


def write_vae_file(vae, path: Path) -> Path:
    """A standalone VAE file as ``models/VAE`` holds them (original layout, no prefix) with its config embedded."""
    from safetensors.torch import save_file

    from pipelines.convert import vae_to_original
    from pipelines.loaders import EMBEDDED_CONFIG_KEY

    state = {k: v.contiguous() for k, v in vae_to_original(vae.state_dict(), dict(vae.config), prefix="").items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "pt", EMBEDDED_CONFIG_KEY: json.dumps(
        {"vae": json.loads(vae.to_json_string())})})
    return path


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with tiny SD 1.x checkpoints (single file, diffusers folder, second seed), a VAE and an x4."""
    from pipelines.tiny import tiny_vae

    root = tmp_path_factory.mktemp("tiny-models")
    checkpoints = root / "checkpoints"
    write_single_file(tiny_components("sd15", 0), checkpoints / f"{TINY_MODELS['sd15']}.safetensors")
    write_diffusers_folder("sd15", tiny_components("sd15", 0), checkpoints / TINY_MODELS["sd15_diffusers"])
    write_single_file(tiny_components("sd15", 1), checkpoints / f"{TINY_MODELS['sd15_b']}.safetensors")
    write_vae_file(tiny_vae(seed=2), root / "vae" / f"{TINY_MODELS['vae']}.safetensors")
    write_diffusers_folder("x4", tiny_components("x4", 0), root / "upscale_models" / TINY_MODELS["x4"])
    return root


@pytest.fixture
def tiny_cache_dir(tmp_path: Path) -> Path:
    """An empty cache dir (model hash cache, family overrides) for one test."""
    path = tmp_path / "cache"
    path.mkdir()
    return path
