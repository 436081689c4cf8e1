"""``--demo``: tiny random-weight models built once into the cache dir, in real formats, loaded like real files."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from model_fixtures import make_pipeline, run_tiny

from pipelines import demo
from pipelines.loaders import load_components
from pipelines.registry import ModelRegistry, read_safetensors_header
from pipelines.tiny import demo_sd15_components


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    return demo.ensure_demo_models(tmp_path_factory.mktemp("demo-cache"))


def test_demo_models_are_real_formats_and_load_through_the_registry(demo_dir, tmp_path):
    checkpoint = demo_dir / "checkpoints" / f"{demo.DEMO_CHECKPOINT_NAME}.safetensors"
    shapes, _ = read_safetensors_header(checkpoint)
    assert "model.diffusion_model.input_blocks.0.0.weight" in shapes
    assert "cond_stage_model.transformer.text_model.embeddings.position_ids" in shapes
    assert "first_stage_model.decoder.conv_in.weight" in shapes
    assert (demo_dir / "upscale_models" / demo.DEMO_UPSCALER_NAME / "model_index.json").is_file()

    registry = ModelRegistry(tmp_path / "empty-models", tmp_path / "cache", extra_dirs=(demo_dir,))
    info = registry.find_checkpoint(demo.DEMO_CHECKPOINT_NAME)
    assert info.family == "sd15" and info.format == "safetensors"
    loaded = load_components(info, torch.float32)
    image = run_tiny("sd15", make_pipeline("sd15", loaded.components))
    in_memory = run_tiny("sd15", make_pipeline("sd15", demo_sd15_components(seed=0)))
    torch.testing.assert_close(torch.from_numpy(image), torch.from_numpy(in_memory))  # the file round trip is exact
    [upscaler] = registry.upscalers()
    assert (upscaler.name, upscaler.family) == (demo.DEMO_UPSCALER_NAME, "x4-upscaler")


def test_a_copied_demo_file_loads_alone_in_a_fresh_models_folder(demo_dir, tmp_path):
    # The "done when": a tiny original-layout file copied into models/checkpoints/ appears and loads.
    models = tmp_path / "models" / "checkpoints"
    models.mkdir(parents=True)
    source = demo_dir / "checkpoints" / f"{demo.DEMO_CHECKPOINT_NAME}.safetensors"
    (models / "tiny.safetensors").write_bytes(source.read_bytes())
    registry = ModelRegistry(tmp_path / "models", tmp_path / "cache")
    assert [i.name for i in registry.checkpoints()] == ["tiny"]
    assert load_components(registry.find_checkpoint("tiny"), torch.float32).family == "sd15"


def test_second_call_reuses_the_built_models(demo_dir, monkeypatch):
    monkeypatch.setattr(demo, "_build", lambda target: pytest.fail("demo models rebuilt"))
    assert demo.ensure_demo_models(demo_dir.parent) == demo_dir


def test_two_processes_starting_at_once_both_get_a_complete_folder(tmp_path, monkeypatch):
    barrier = threading.Barrier(2)
    builds = []

    def slow_build(target: Path) -> None:
        builds.append(target)
        barrier.wait(timeout=10)  # both builds run at the same time
        (target / "checkpoints").mkdir(parents=True)
        (target / "checkpoints" / "x.safetensors").write_bytes(b"x" * 1000)
        (target / demo._DONE_MARKER).write_text(demo.DEMO_VERSION)

    monkeypatch.setattr(demo, "_build", slow_build)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(demo.ensure_demo_models(tmp_path))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(builds) == 2 and len(set(results)) == 1 and len(results) == 2
    root = results[0]
    assert (root / demo._DONE_MARKER).is_file()
    assert (root / "checkpoints" / "x.safetensors").stat().st_size == 1000
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temp folder left behind


def test_demo_model_has_no_attention_over_full_size_latents(demo_dir, tmp_path):
    """What keeps a 2048x2048 demo image cheap: no self-attention at latent size in the UNet or the VAE, and the
    SD 1.x interface (8x VAE, 4 latent channels, text conditioning) kept, so sizes and metadata behave as usual."""
    registry = ModelRegistry(tmp_path / "empty-models", tmp_path / "cache", extra_dirs=(demo_dir,))
    components = load_components(registry.find_checkpoint(demo.DEMO_CHECKPOINT_NAME), torch.float32).components
    from diffusers.models.attention_processor import Attention

    unet, vae = components["unet"], components["vae"]
    attending = [name for name, module in unet.named_modules() if isinstance(module, Attention)]
    assert attending and all(name.startswith("mid_block.") for name in attending), attending
    assert unet.config.cross_attention_dim == components["text_encoder"].config.hidden_size
    assert not any(isinstance(module, Attention) for module in vae.modules())
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 8 and unet.config.in_channels == 4


def test_demo_images_are_noise_at_any_allowed_size(demo_dir, tmp_path):
    """Random weights draw noise, but valid noise: finite, full of detail, at odd sizes too (64 x 200 px)."""
    registry = ModelRegistry(tmp_path / "empty-models", tmp_path / "cache", extra_dirs=(demo_dir,))
    components = load_components(registry.find_checkpoint(demo.DEMO_CHECKPOINT_NAME), torch.float32).components
    pipe = make_pipeline("sd15", components)
    for width, height in ((64, 64), (64, 200), (136, 72)):
        images = pipe("a lighthouse", num_inference_steps=2, width=width, height=height, output_type="np",
                      generator=torch.Generator("cpu").manual_seed(1)).images
        assert images.shape == (1, height, width, 3)
        assert bool(torch.isfinite(torch.from_numpy(images)).all()) and images.std() > 0.01, (width, height)


def test_an_old_demo_cache_is_rebuilt_not_reused(tmp_path):
    """Bumping ``DEMO_VERSION`` gives a fresh folder: a cache from an older demo model is never loaded."""
    old = tmp_path / "demo-models-v1"
    (old / "checkpoints").mkdir(parents=True)
    (old / demo._DONE_MARKER).write_text("1")
    assert demo.DEMO_VERSION != "1"
    root = demo.ensure_demo_models(tmp_path)
    assert root != old and (root / demo._DONE_MARKER).read_text() == demo.DEMO_VERSION
