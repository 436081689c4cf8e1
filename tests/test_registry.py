"""The model list a person sees: their A1111 or ComfyUI models folder, symlinked files, hashes A1111 would show.

Family detection must read only headers, so these tests use small files with real key names and shapes (plus the
tiny models of ``model_fixtures`` where a real tiny model is needed).
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pipelines import registry as registry_module
from pipelines.errors import ModelNotFound
from pipelines.registry import ModelRegistry, detect_checkpoint_family, read_safetensors_header

UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
CROSS = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
SDXL = "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"


def fake_checkpoint(path: Path, in_channels: int = 4, cross: int = 768, sdxl: bool = False) -> Path:
    """A small safetensors whose sentinel keys have the shapes of a real checkpoint of that family."""
    tensors = {UNET_IN: torch.zeros(8, in_channels, 1, 1), CROSS: torch.zeros(8, cross)}
    if sdxl:
        tensors[SDXL] = torch.zeros(8)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def test_a1111_models_folder_is_read(tmp_path):
    models = tmp_path / "a1111" / "models"
    fake_checkpoint(models / "Stable-diffusion" / "dreamy.safetensors")
    fake_checkpoint(models / "Stable-diffusion" / "anime" / "pastel.safetensors")
    fake_checkpoint(models / "VAE" / "vae-ft-mse.safetensors").unlink()
    save_file({"decoder.conv_in.weight": torch.zeros(8, 4, 3, 3),
               "post_quant_conv.weight": torch.zeros(4, 4, 1, 1)}, str(models / "VAE" / "vae-ft-mse.safetensors"))
    (models / "Lora").mkdir()
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 1)}, str(models / "Lora" / "style.safetensors"))

    registry = ModelRegistry(models, tmp_path / "cache")
    assert sorted(i.name for i in registry.checkpoints()) == ["anime/pastel", "dreamy"]
    assert [i.name for i in registry.vaes()] == ["vae-ft-mse"]
    assert registry.vaes()[0].family == "sd"
    assert [i.name for i in registry.loras()] == ["style"]
    assert registry.find_checkpoint("dreamy.safetensors").name == "dreamy"
    assert registry.find_checkpoint("anime/pastel").family == "sd15"


def test_comfyui_models_folder_is_read(tmp_path, tiny_models_dir):
    models = tmp_path / "ComfyUI" / "models"
    fake_checkpoint(models / "checkpoints" / "sdxl" / "juggernaut.safetensors", cross=2048, sdxl=True)
    shutil.copytree(tiny_models_dir / "upscale_models" / "tiny-x4", models / "upscale_models" / "x4")
    fake_checkpoint(models / "loras" / "detail.safetensors")

    registry = ModelRegistry(models, tmp_path / "cache")
    assert [(i.name, i.family) for i in registry.checkpoints()] == [("sdxl/juggernaut", "sdxl")]
    assert [(i.name, i.family) for i in registry.upscalers()] == [("x4", "x4-upscaler")]
    assert [i.name for i in registry.loras()] == ["detail"]


def test_diffusers_folder_anywhere_under_checkpoints(tiny_models_dir, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir / "checkpoints" / "tiny-sd15-diffusers",
                    models / "checkpoints" / "deep" / "er" / "my-diffusers")
    [info] = ModelRegistry(models, tmp_path / "cache").checkpoints()
    assert (info.name, info.format, info.family) == ("deep/er/my-diffusers", "diffusers", "sd15")


def test_symlinked_files_and_folders_are_followed(tmp_path, tiny_models_dir):
    elsewhere = tmp_path / "other-drive"
    real = fake_checkpoint(elsewhere / "linked.safetensors")
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / "linked.safetensors").symlink_to(real)
    (models / "checkpoints" / "from-other-ui").symlink_to(tiny_models_dir / "checkpoints", target_is_directory=True)
    (models / "checkpoints" / "broken.safetensors").symlink_to(tmp_path / "gone.safetensors")
    (models / "checkpoints" / "loop").symlink_to(models / "checkpoints", target_is_directory=True)

    registry = ModelRegistry(models, tmp_path / "cache")
    names = {i.name for i in registry.checkpoints()}
    assert "linked" in names and "from-other-ui/tiny-sd15" in names and "from-other-ui/tiny-sd15-diffusers" in names
    assert "broken" not in names
    info = registry.find_checkpoint("linked")
    assert info.size == real.stat().st_size and info.family == "sd15"
    assert info.short_hash == hashlib.sha256(real.read_bytes()).hexdigest()[:10]


def test_hash_is_a1111_short_hash_and_computed_once(tmp_path, monkeypatch):
    models = tmp_path / "models"
    path = fake_checkpoint(models / "checkpoints" / "m.safetensors")
    calls = []
    real_sha = registry_module.sha256_file
    monkeypatch.setattr(registry_module, "sha256_file", lambda p: calls.append(p) or real_sha(p))

    first = ModelRegistry(models, tmp_path / "cache")
    assert calls == []  # scanning does not hash
    info = first.find_checkpoint("m")
    expected = hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    assert info.short_hash == expected
    assert info.title == f"m [{expected}]"
    assert len(calls) == 1

    second = ModelRegistry(models, tmp_path / "cache")  # a later start: read from the disk cache
    second.refresh()
    assert second.find_checkpoint(f"m [{expected}]").short_hash == expected
    assert len(calls) == 1

    path.write_bytes(path.read_bytes() + b"")  # same size, new mtime: must be hashed again
    import os
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    second.refresh()
    assert second.find_checkpoint("m").short_hash == expected
    assert len(calls) == 2


def test_detection_reads_only_the_header(tmp_path, monkeypatch):
    path = fake_checkpoint(tmp_path / "models" / "checkpoints" / "big.safetensors", cross=1024, in_channels=9)
    # Any full read of the tensors would go through safetensors' loaders: make them fail.
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: pytest.fail("tensors were read"))
    shapes, _ = read_safetensors_header(path)
    assert detect_checkpoint_family(shapes, path.name).family == "sd2-inpaint"
    assert ModelRegistry(tmp_path / "models", tmp_path / "cache").find_checkpoint("big").family == "sd2-inpaint"


@pytest.mark.parametrize(
    ("kwargs", "family"),
    [({}, "sd15"), ({"in_channels": 9}, "sd15-inpaint"), ({"cross": 1024}, "sd2"),
     ({"cross": 2048, "sdxl": True}, "sdxl"), ({"cross": 2048, "sdxl": True, "in_channels": 9}, "sdxl-inpaint"),
     ({"cross": 1024, "in_channels": 5}, "sd2-depth")],
)
def test_family_from_sentinel_keys(tmp_path, kwargs, family):
    path = fake_checkpoint(tmp_path / "x.safetensors", **kwargs)
    shapes, _ = read_safetensors_header(path)
    assert detect_checkpoint_family(shapes, path.name).family == family


def test_empty_models_folder_says_where_to_put_a_file_and_offers_demo(tmp_path):
    registry = ModelRegistry(tmp_path / "models", tmp_path / "cache")
    assert registry.checkpoints() == []
    with pytest.raises(ModelNotFound) as err:
        registry.find_checkpoint("anything")
    message = str(err.value)
    assert str(tmp_path / "models" / "checkpoints") in message and "--demo" in message


def test_unreadable_folder_is_reported_and_the_rest_still_listed(tmp_path, monkeypatch):
    models = tmp_path / "models"
    fake_checkpoint(models / "checkpoints" / "ok.safetensors")
    fake_checkpoint(models / "checkpoints" / "private" / "secret.safetensors")
    import os

    real_scandir = os.scandir

    def scandir(path="."):
        if str(path).endswith("private"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    registry = ModelRegistry(models, tmp_path / "cache")
    assert [i.name for i in registry.checkpoints()] == ["ok"]
    assert any("private" in p for p in registry.problems)


def test_unreadable_file_is_listed_with_the_reason(tmp_path, monkeypatch):
    models = tmp_path / "models"
    fake_checkpoint(models / "checkpoints" / "locked.safetensors")

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(registry_module, "read_safetensors_header", denied)
    info = ModelRegistry(models, tmp_path / "cache").find_checkpoint("locked")
    assert info.problem and "permission denied" in info.problem


def test_extra_dirs_are_listed_after_the_models_dir(tmp_path, tiny_models_dir):
    models = tmp_path / "models"
    fake_checkpoint(models / "checkpoints" / "mine.safetensors")
    registry = ModelRegistry(models, tmp_path / "cache", extra_dirs=(tiny_models_dir,))
    names = [i.name for i in registry.checkpoints()]
    assert names[0] == "mine" and "tiny-sd15" in names
    assert [i.name for i in registry.upscalers()] == ["tiny-x4"]


def test_scan_time_of_fifty_checkpoints(tmp_path, capsys):
    models = tmp_path / "models"
    for i in range(50):
        fake_checkpoint(models / "checkpoints" / f"model-{i:02d}.safetensors", cross=(768, 1024)[i % 2])
    started = time.perf_counter()
    registry = ModelRegistry(models, tmp_path / "cache")
    registry.refresh()
    cold = time.perf_counter() - started
    started = time.perf_counter()
    registry.refresh()
    warm = time.perf_counter() - started
    assert len(registry.checkpoints()) == 50
    with capsys.disabled():
        print(f"\nscan of 50 checkpoint files: first {cold * 1000:.1f} ms, rescan {warm * 1000:.1f} ms")
    assert cold < 5


def test_x4_upscaler_folder_in_checkpoints_is_an_upscaler_not_a_checkpoint(tmp_path, tiny_models_dir):
    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir / "upscale_models" / "tiny-x4", models / "checkpoints" / "x4-upscaler")
    fake_checkpoint(models / "checkpoints" / "base.safetensors")
    registry = ModelRegistry(models, tmp_path / "cache")
    assert [i.name for i in registry.checkpoints()] == ["base"]
    [upscaler] = registry.upscalers()
    assert (upscaler.name, upscaler.kind, upscaler.family) == ("x4-upscaler", "upscaler", "x4-upscaler")
    assert registry.find_upscaler("x4-upscaler") is upscaler


def test_cached_hash_never_reads_the_file(tmp_path, monkeypatch):
    models = tmp_path / "models"
    fake_checkpoint(models / "checkpoints" / "m.safetensors")
    registry = ModelRegistry(models, tmp_path / "cache")
    info = registry.find_checkpoint("m")
    monkeypatch.setattr(registry_module, "sha256_file", lambda p: pytest.fail("hashed"))
    assert registry.cached_short_hash(info) is None
    monkeypatch.undo()
    assert registry.cached_short_hash(info) is None
    full = info.short_hash
    assert registry.cached_short_hash(info) == full


def test_a_new_file_is_hashed_once_in_the_background_and_a_caller_meanwhile_waits_for_it(tmp_path, monkeypatch):
    import threading

    models = tmp_path / "models"
    path = fake_checkpoint(models / "checkpoints" / "m.safetensors")
    registry = ModelRegistry(models, tmp_path / "cache")
    info = registry.find_checkpoint("m")
    started, release, read_on = threading.Event(), threading.Event(), []
    real_sha = registry_module.sha256_file

    def slow_sha(target):  # a 4 GB file takes seconds
        read_on.append(threading.current_thread().name)
        started.set()
        release.wait(10)
        return real_sha(target)

    monkeypatch.setattr(registry_module, "sha256_file", slow_sha)
    registry.hash_soon(info)
    assert started.wait(10)
    registry.hash_soon(info)  # asked again while it reads: no second read
    threading.Timer(0.2, release.set).start()
    assert registry.short_hash(info) == hashlib.sha256(path.read_bytes()).hexdigest()[:10]  # waited for it
    assert read_on == ["atelier-hash"]
    registry.hash_soon(info)  # known now: nothing to read
    assert registry.short_hash(info) and read_on == ["atelier-hash"]


def test_same_name_in_two_formats_lists_both(tmp_path):
    models = tmp_path / "models"
    fake_checkpoint(models / "checkpoints" / "dream.safetensors")
    (models / "checkpoints" / "dream.ckpt").write_bytes(b"not really")  # listed with its problem
    registry = ModelRegistry(models, tmp_path / "cache")
    assert sorted(i.name for i in registry.checkpoints()) == ["dream", "dream.ckpt"]
    assert registry.find_checkpoint("dream").format == "safetensors"
    assert registry.find_checkpoint("dream.ckpt").problem


@pytest.mark.parametrize("content", [b"", b"\x05\x00\x00\x00\x00\x00\x00\x00[1,2]", b"\xff" * 64,
                                     b"\x02\x00\x00\x00\x00\x00\x00\x00{}", b"\x10\x00\x00\x00\x00\x00\x00\x00" +
                                     b'{"a": {"x": 1}}'])
def test_garbage_files_are_listed_with_a_reason_and_do_not_break_the_list(tmp_path, content):
    models = tmp_path / "models"
    fake_checkpoint(models / "checkpoints" / "good.safetensors")
    (models / "checkpoints" / "junk.safetensors").write_bytes(content)
    registry = ModelRegistry(models, tmp_path / "cache")
    assert registry.find_checkpoint("good").family == "sd15"
    junk = registry.find_checkpoint("junk")
    assert junk.family is None and junk.problem


# --- SD 2's depth model and its depth estimators ------------------------------------------------------------------
def test_a_5_channel_unet_is_sd2s_depth_model_only_with_sd2s_text_width(tmp_path):
    models = tmp_path / "models"
    fake_checkpoint(models / "checkpoints" / "512-depth-ema.safetensors", in_channels=5, cross=1024)
    fake_checkpoint(models / "checkpoints" / "odd-depth.safetensors", in_channels=5, cross=768)
    registry = ModelRegistry(models, tmp_path / "cache")
    depth = registry.find_checkpoint("512-depth-ema")
    assert depth.family == "sd2-depth" and depth.problem is None
    assert depth.notes == []  # epsilon: no SD 2.x prediction-type guess
    odd = registry.find_checkpoint("odd-depth")
    assert odd.family is None and "5 input channels" in odd.problem and "depth model" in odd.problem


def test_a_diffusers_depth_folder_is_sd2_depth(tmp_path):
    import json

    folder = tmp_path / "models" / "checkpoints" / "stable-diffusion-2-depth"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionDepth2ImgPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "depth_estimator": ["transformers", "DPTForDepthEstimation"]}))
    (folder / "unet" / "config.json").write_text(json.dumps({"in_channels": 5, "cross_attention_dim": 1024}))
    registry = ModelRegistry(tmp_path / "models", tmp_path / "cache")
    assert registry.find_checkpoint("stable-diffusion-2-depth").family == "sd2-depth"


def test_dpt_folders_in_models_depth_are_listed_and_other_folders_say_why_not(tmp_path):
    import json

    from pipelines.tiny import write_tiny_dpt

    models = tmp_path / "models"
    write_tiny_dpt(models / "depth" / "Intel" / "dpt-tiny")
    other = models / "depth" / "not-dpt"
    other.mkdir(parents=True)
    (other / "config.json").write_text(json.dumps({"model_type": "vit"}))
    registry = ModelRegistry(models, tmp_path / "cache")
    found = {info.name: info for info in registry.depth_models()}
    assert sorted(found) == ["Intel/dpt-tiny", "not-dpt"]
    assert found["Intel/dpt-tiny"].family == "dpt" and found["Intel/dpt-tiny"].problem is None
    assert found["not-dpt"].family is None and "not a DPT depth model" in found["not-dpt"].problem
    assert registry.checkpoints() == []
