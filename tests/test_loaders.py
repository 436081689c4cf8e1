"""Checkpoints as artists have them load offline and draw exactly what the original model draws.

Each tiny family (SD 1.x, SD 2.x v-prediction, SDXL) is written in every format a person meets -- a diffusers
folder, a single ``.safetensors`` in the original SD key layout, a Lightning ``.ckpt`` with its extra objects --
and the x4 upscaler as a diffusers folder. Loaded back through the registry, each must be detected as the right
family and give the same pixels as the in-memory model for the same seed. Bad files (a pickle that would run a
command, a cut-short download, a LoRA, a VAE of the wrong family, unreadable files, a hub id offline) each give a
clear ``ModelLoadError`` and nothing else.
"""

from __future__ import annotations

import os
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from model_fixtures import (
    make_pipeline,
    reference_image,
    run_tiny,
    tiny_components,
    write_ckpt,
    write_diffusers_folder,
    write_single_file,
    write_vae_file,
)

from pipelines import checkpoint_files, loaders
from pipelines.errors import ModelLoadError, ModelNotFound
from pipelines.registry import ModelRegistry

FAMILY_OF_KIND = {"sd15": "sd15", "sd2v": "sd2-v", "sdxl": "sdxl", "x4": "x4-upscaler"}


@pytest.fixture(scope="module")
def format_models(tmp_path_factory) -> Path:
    """A models folder with every tiny family in every format (names: tiny-<kind>-<format>)."""
    root = tmp_path_factory.mktemp("format-models")
    ckpts = root / "checkpoints"
    for kind in ("sd15", "sd2v", "sdxl"):
        components = tiny_components(kind, 0)
        write_diffusers_folder(kind, components, ckpts / f"tiny-{kind}-diffusers")
        write_single_file(components, ckpts / f"tiny-{kind}-safetensors.safetensors")
        write_ckpt(components, ckpts / f"tiny-{kind}-ckpt.ckpt")
    # SD 2.x v-prediction is told apart as A1111 does: a yaml beside the file...
    (ckpts / "tiny-sd2v-safetensors.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    # ...or the file name ("768-v"), here for the .ckpt.
    (ckpts / "tiny-sd2v-ckpt.ckpt").rename(ckpts / "tiny-sd2v-768-v-ckpt.ckpt")
    (ckpts / "tiny-sd2v-ckpt.config").rename(ckpts / "tiny-sd2v-768-v-ckpt.config")
    write_diffusers_folder("x4", tiny_components("x4", 0), root / "upscale_models" / "tiny-x4-diffusers")
    return root


@pytest.fixture(scope="module")
def format_registry(format_models, tmp_path_factory) -> ModelRegistry:
    return ModelRegistry(format_models, tmp_path_factory.mktemp("format-cache"))


CASES = [(kind, fmt) for kind in ("sd15", "sd2v", "sdxl") for fmt in ("diffusers", "safetensors", "ckpt")]


@pytest.mark.parametrize(("kind", "fmt"), CASES, ids=[f"{k}-{f}" for k, f in CASES])
def test_every_family_and_format_loads_offline_and_draws_the_same_image(format_registry, kind, fmt):
    name = {"ckpt": f"tiny-{kind}-768-v-ckpt" if kind == "sd2v" else f"tiny-{kind}-ckpt"}.get(
        fmt, f"tiny-{kind}-{fmt}")
    info = format_registry.find_checkpoint(name)
    assert info.family == FAMILY_OF_KIND[kind], (info.family, info.family_source, info.problem)
    assert info.format == ("ckpt" if fmt == "ckpt" else fmt)

    loaded = loaders.load_components(info, torch.float32)

    assert loaded.family == FAMILY_OF_KIND[kind]
    assert loaded.prediction_type == ("v_prediction" if kind == "sd2v" else "epsilon")
    assert loaded.scheduler_config["prediction_type"] == loaded.prediction_type
    assert loaded.nbytes > 0 and loaded.notes
    image = run_tiny(kind, make_pipeline(kind, loaded.components))
    np.testing.assert_allclose(image, reference_image(kind, 0), atol=1e-5, rtol=0)


def test_x4_upscaler_folder_loads_and_upscales_like_the_original(format_registry):
    info = format_registry.find_upscaler("tiny-x4-diffusers")
    assert info.family == "x4-upscaler" and info.kind == "upscaler"
    loaded = loaders.load_components(info, torch.float32)
    assert set(loaded.components) >= {"unet", "vae", "text_encoder", "tokenizer", "scheduler", "low_res_scheduler"}
    assert loaded.pipeline_kwargs == {"max_noise_level": 350}
    image = run_tiny("x4", make_pipeline("x4", loaded.components, **loaded.pipeline_kwargs))
    assert image.shape[1:3] == (64, 64)  # 16 px in, 4x out
    np.testing.assert_allclose(image, reference_image("x4", 0), atol=1e-5, rtol=0)


def test_sd2_prediction_type_comes_from_yaml_name_or_override(format_registry):
    by_yaml = format_registry.find_checkpoint("tiny-sd2v-safetensors")
    by_name = format_registry.find_checkpoint("tiny-sd2v-768-v-ckpt")
    by_config = format_registry.find_checkpoint("tiny-sd2v-diffusers")
    assert (by_yaml.family, by_yaml.family_source) == ("sd2-v", "yaml")
    assert (by_name.family, by_name.family_source) == ("sd2-v", "name")
    assert (by_config.family, by_config.family_source) == ("sd2-v", "config")

    overridden = format_registry.set_family("tiny-sd2v-safetensors", "sd2")
    try:
        assert (overridden.family, overridden.family_source) == ("sd2", "override")
        loaded = loaders.load_components(overridden, torch.float32)
        assert loaded.scheduler_config["prediction_type"] == "epsilon"
        assert any("prediction_type" in note for note in loaded.notes)
    finally:
        format_registry.set_family("tiny-sd2v-safetensors", None)
    assert format_registry.find_checkpoint("tiny-sd2v-safetensors").family == "sd2-v"


def test_sd2_file_without_hints_defaults_to_v_prediction_and_says_so(format_models, tmp_path):
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    shutil.copy(format_models / "checkpoints" / "tiny-sd2v-safetensors.safetensors",
                models / "checkpoints" / "my-finetune.safetensors")
    info = ModelRegistry(models, tmp_path / "cache").find_checkpoint("my-finetune")
    assert (info.family, info.family_source) == ("sd2-v", "default")
    assert any("default" in note for note in info.notes)


def test_real_ckpt_extras_need_the_allow_list_and_load_with_it(format_models):
    path = format_models / "checkpoints" / "tiny-sd15-ckpt.ckpt"
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # what diffusers alone would do with a real SD 1.x .ckpt
    checkpoint = checkpoint_files.safe_torch_load(path)
    assert int(checkpoint["global_step"]) == 840000
    assert "model.diffusion_model.input_blocks.0.0.weight" in checkpoint["state_dict"]


class _RunsACommand:
    """What a booby-trapped model file does: unpickling it calls ``os.system``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, format_models):
    marker = tmp_path / "pwned"
    models = tmp_path / "models"
    evil = models / "checkpoints" / "totally-safe-model.ckpt"
    evil.parent.mkdir(parents=True)
    state = {"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1, 4, 3, 3)},
             "payload": _RunsACommand(marker)}
    torch.save(state, evil)

    registry = ModelRegistry(models, tmp_path / "cache")
    info = registry.find_checkpoint("totally-safe-model")  # listed, so the person sees why it does not load
    assert info.problem and "refused" in info.problem
    with pytest.raises(ModelLoadError, match="refused.*Nothing from it was run"):
        loaders.load_components(info, torch.float32)
    with pytest.raises(ModelLoadError, match="system"):
        checkpoint_files.safe_torch_load(evil)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_truncated_download_gives_a_clear_error(format_models, tmp_path, suffix):
    source = format_models / "checkpoints" / ("tiny-sd15-safetensors.safetensors" if suffix == ".safetensors"
                                               else "tiny-sd15-ckpt.ckpt")
    models = tmp_path / "models"
    target = models / "checkpoints" / f"half-downloaded{suffix}"
    target.parent.mkdir(parents=True)
    target.write_bytes(source.read_bytes()[: source.stat().st_size // 2])

    info = ModelRegistry(models, tmp_path / "cache").find_checkpoint("half-downloaded")
    with pytest.raises(ModelLoadError, match="(cut short|damaged).*[Dd]ownload it again"):
        loaders.load_components(info, torch.float32)


def test_lora_selected_as_checkpoint_says_it_is_a_lora(tmp_path):
    from safetensors.torch import save_file

    models = tmp_path / "models"
    lora = models / "checkpoints" / "cute-style.safetensors"
    lora.parent.mkdir(parents=True)
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4),
               "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0)}, str(lora))
    info = ModelRegistry(models, tmp_path / "cache").find_checkpoint("cute-style")
    assert info.family is None
    with pytest.raises(ModelLoadError, match="is a LoRA, not a checkpoint.*models/loras"):
        loaders.load_components(info, torch.float32)


def test_unknown_family_is_named(tmp_path):
    from safetensors.torch import save_file

    models = tmp_path / "models"
    path = models / "checkpoints" / "mystery.safetensors"
    path.parent.mkdir(parents=True)
    save_file({"blocks.0.weight": torch.zeros(2, 2)}, str(path))
    info = ModelRegistry(models, tmp_path / "cache").find_checkpoint("mystery")
    with pytest.raises(ModelLoadError, match="unknown model family"):
        loaders.load_components(info, torch.float32)


def test_external_vae_replaces_the_builtin_one(tiny_models_dir, tiny_cache_dir):
    registry = ModelRegistry(tiny_models_dir, tiny_cache_dir)
    checkpoint = registry.find_checkpoint("tiny-sd15")
    vae = registry.find_vae("tiny-vae")
    assert registry.find_vae("Automatic") is None
    plain = loaders.load_components(checkpoint, torch.float32)
    with_vae = loaders.load_components(checkpoint, torch.float32, vae=vae)
    assert any("tiny-vae" in note for note in with_vae.notes)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = plain.components["vae"].decode(latents).sample
        b = with_vae.components["vae"].decode(latents).sample
    assert a.shape == b.shape == (1, 3, 64, 64)
    assert not torch.allclose(a, b)  # another decoder draws other pixels from the same latents
    alone = loaders.load_vae(vae, torch.float32, family="sd15")
    torch.testing.assert_close(alone.state_dict(), with_vae.components["vae"].state_dict())


def test_vae_of_another_family_is_refused(tiny_models_dir, tmp_path):
    from pipelines.tiny import tiny_vae

    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir / "checkpoints", models / "checkpoints", symlinks=True)
    write_vae_file(tiny_vae(seed=3), models / "vae" / "sdxl_vae.safetensors")  # named for SDXL
    registry = ModelRegistry(models, tmp_path / "cache")
    vae = registry.find_vae("sdxl_vae")
    assert vae.family == "sdxl"
    with pytest.raises(ModelLoadError, match="made for SDXL.*Choose 'Automatic'") as err:
        loaders.load_components(registry.find_checkpoint("tiny-sd15"), torch.float32, vae=vae)
    assert err.value.field == "vae"


def test_unreadable_file_says_permission_denied(tiny_models_dir, tiny_cache_dir, monkeypatch):
    # Root ignores chmod, so the fault is injected where the file is read.
    registry = ModelRegistry(tiny_models_dir, tiny_cache_dir)
    info = registry.find_checkpoint("tiny-sd15")

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(checkpoint_files, "_read_safetensors", denied)
    with pytest.raises(ModelLoadError, match="permission denied"):
        loaders.load_components(info, torch.float32)


def test_hub_id_offline_fails_fast_and_says_where_to_put_a_file(tiny_models_dir, tiny_cache_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    registry = ModelRegistry(tiny_models_dir, tiny_cache_dir)
    info = registry.find_checkpoint("stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert info.format == "hub"
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match="offline.*models/checkpoints"):
        loaders.load_components(info, torch.float32)
    assert time.monotonic() - started < 5
    with pytest.raises(ModelNotFound):
        registry.find_checkpoint("no-such-model")


def test_fp16_load_gives_fp16_modules(tiny_models_dir, tiny_cache_dir):
    info = ModelRegistry(tiny_models_dir, tiny_cache_dir).find_checkpoint("tiny-sd15-diffusers")
    loaded = loaders.load_components(info, torch.float16)
    for name in ("unet", "vae", "text_encoder"):
        assert next(loaded.components[name].parameters()).dtype == torch.float16
    assert loaded.nbytes == sum(p.numel() * 2 for n in ("unet", "vae", "text_encoder")
                                for p in loaded.components[n].parameters()) + sum(
        b.numel() * b.element_size() for n in ("unet", "vae", "text_encoder") for b in loaded.components[n].buffers())


REAL_SIZE_CASES = [("sd15", "sd15", "v1"), ("sd15-inpaint", "sd15-inpaint", "inpainting"), ("sd2-v", "sd2", "v2"),
                   ("sd2-inpaint", "sd2-inpaint", "inpainting_v2"), ("sdxl", "sdxl", "xl_base"),
                   ("sdxl-inpaint", "sdxl-inpaint", "xl_inpaint"), ("sd2-depth", "sd2-depth", "v2")]


@pytest.mark.parametrize(("family", "detected", "diffusers_type"), REAL_SIZE_CASES, ids=[c[0] for c in REAL_SIZE_CASES])
def test_real_size_layouts_match_what_model_sites_ship(family, detected, diffusers_type):
    """Full-size models (bundled configs, no memory: meta tensors) written in the original layout carry the key
    names real files have: our detection and diffusers' own agree on the family, and diffusers' converters map
    every key back onto the model."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pipelines.convert import pipeline_to_original
    from pipelines.families import FAMILIES
    from pipelines.registry import detect_checkpoint_family

    spec = FAMILIES[family]
    folder = spec.config_dir
    with init_empty_weights():
        components = {
            "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet")),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder")),
        }
        if spec.is_xl:
            components["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder_2"))
    original = pipeline_to_original(components)
    shapes = {k: list(v.shape) for k, v in original.items()}

    assert detect_checkpoint_family(shapes, "model.safetensors").family == detected
    assert sfu.infer_diffusers_model_type(original) == diffusers_type
    unet_keys = [k for k in original if k.startswith("model.diffusion_model.")]
    assert len(unet_keys) == (1680 if spec.is_xl else 686)  # as in the released files
    unet = sfu.convert_ldm_unet_checkpoint(original, dict(components["unet"].config))
    assert set(unet) == set(components["unet"].state_dict())
    vae = sfu.convert_ldm_vae_checkpoint(original, dict(components["vae"].config))
    assert set(vae) == set(components["vae"].state_dict())
    if spec.is_xl:
        assert "conditioner.embedders.0.transformer.text_model.embeddings.position_ids" in original
        te2 = sfu.convert_open_clip_checkpoint(components["text_encoder_2"], original,
                                               prefix="conditioner.embedders.1.model.")
        assert set(te2) == set(components["text_encoder_2"].state_dict())
    elif family.startswith("sd2"):
        te = sfu.convert_open_clip_checkpoint(components["text_encoder"], original)
        assert {k.removeprefix("text_model.") for k in te} == set(components["text_encoder"].state_dict())
    else:
        assert "cond_stage_model.transformer.text_model.embeddings.position_ids" in original
        te = sfu.convert_ldm_clip_checkpoint(original)
        assert {k.removeprefix("text_model.") for k in te} - {"embeddings.position_ids"} == set(
            components["text_encoder"].state_dict())
