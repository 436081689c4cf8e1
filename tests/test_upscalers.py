"""Upscalers as one list and the engine's upscale paths: the registry lists every kind (built-ins, ESRGAN-family
files read by spandrel, SD x4 folders) and leaves out what spandrel cannot read; the Upscale task runs a built-in or
a model file by its scale or to a size (tiled, seamless); the hires fix takes a model file; A1111's SD upscale script
redraws an enlarged picture tile by tile; a CPU out-of-memory steps the tiles down."""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from manager_fixtures import FakeRegistry, make_manager
from PIL import Image, PngImagePlugin

from pipelines import devices
from pipelines import registry as registry_module
from pipelines import upscaler_models as um
from pipelines.errors import InvalidRequest, ModelNotFound
from pipelines.infotext import parse_infotext
from pipelines.outputs import read_parameters
from pipelines.registry import ModelRegistry
from pipelines.request import GenerationRequest, sd_upscale_fields
from pipelines.tiles import plan_full_spans

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning", "ignore::UserWarning")


def nearest_model(path: Path, scale: int = 4) -> Path:
    """A Real-ESRGAN Compact model with its last conv zeroed: exactly nearest-neighbour upscaling by ``scale`` (its
    forward adds the nearest-upsampled input to the residual), saved as its releases are ({"params": ...}). Tests
    that need one skip where spandrel (and a torchvision matching torch) is not installed."""
    Compact = pytest.importorskip("spandrel.architectures.Compact").Compact  # noqa: N806
    torch.manual_seed(4)
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=scale)
    with torch.no_grad():
        net.body[-1].weight.zero_()
        net.body[-1].bias.zero_()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params": net.state_dict()}, path)
    return path


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture
def models(tmp_path) -> Path:
    """A models folder with an ESRGAN-family file in ``upscale_models/`` (in a sub-folder), one in A1111's
    ``RealESRGAN/``, and a file that is no model at all."""
    root = tmp_path / "models"
    nearest_model(root / "upscale_models" / "sub" / "nearest-x4.pth")
    nearest_model(root / "RealESRGAN" / "nearest-x2.pth", scale=2)
    (root / "ESRGAN").mkdir(parents=True)
    (root / "ESRGAN" / "notes.pth").write_bytes(b"this is not a model")
    return root


@pytest.fixture
def builtin_manager(tmp_path):
    """A manager whose models folder is empty: the built-in upscalers only."""
    manager = make_manager(tmp_path, registry=ModelRegistry(tmp_path / "empty", tmp_path / "cache"))
    yield manager
    manager.close()


@pytest.fixture
def pixel_manager(tmp_path, models):
    manager = make_manager(tmp_path, registry=ModelRegistry(models, tmp_path / "cache"))
    manager.upscalers_library.tile, manager.upscalers_library.overlap = 16, 4
    yield manager
    manager.close()


# --- the one list ------------------------------------------------------------------------------------------------
def test_every_kind_is_listed_once_with_its_family_and_scale(tmp_path, models, tiny_models_dir, caplog):
    shutil.copytree(tiny_models_dir / "upscale_models" / "tiny-x4", models / "upscale_models" / "x4")
    with caplog.at_level(logging.WARNING):
        registry = ModelRegistry(models, tmp_path / "cache")
        listed = [(i.name, i.family, i.scale) for i in registry.all_upscalers()]
    assert listed == [("None", "builtin", 4), ("Lanczos", "builtin", 4), ("Nearest", "builtin", 4),
                      ("sub/nearest-x4", "spandrel", 4), ("nearest-x2", "spandrel", 2), ("x4", "x4-upscaler", None)]
    assert [i.name for i in registry.upscalers()] == ["x4"]  # the SD x4 list stays as it was
    assert registry.find_upscaler("lanczos").name == "Lanczos"
    assert registry.find_upscaler("nearest-x4.pth").name == "sub/nearest-x4"
    assert registry.find_upscaler("x4").family == "x4-upscaler"
    assert registry.model_upscalers()[0].architecture == "RealESRGAN Compact"
    [(path, reason)] = registry.upscaler_rejects
    assert path.name == "notes.pth" and "notes.pth" in reason
    assert sum("notes.pth" in r.getMessage() for r in caplog.records) == 1
    assert all(i.short_hash == "" for i in registry.all_upscalers()[:3])  # built-ins have no file to hash
    with pytest.raises(ModelNotFound) as info:
        registry.find_upscaler("4x-UltraSharp")
    assert info.value.field == "upscaler" and "Lanczos" in str(info.value) and "nearest-x2" in str(info.value)


def test_a_probe_is_cached_by_path_size_and_mtime(tmp_path, models, monkeypatch, caplog):
    ModelRegistry(models, tmp_path / "cache").refresh()
    monkeypatch.setattr(um, "probe_upscaler", lambda path: pytest.fail(f"probed {path} again"))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = ModelRegistry(models, tmp_path / "cache")
        assert [i.name for i in again.model_upscalers()] == ["sub/nearest-x4", "nearest-x2"]
        again.refresh()
    assert len(again.upscaler_rejects) == 1
    assert sum("notes.pth" in r.getMessage() for r in caplog.records) == 1  # said once, not at every scan


def test_without_spandrel_the_files_are_skipped_with_one_log_line(tmp_path, models, monkeypatch, caplog):
    monkeypatch.setattr(um, "spandrel_missing", lambda: "spandrel is not installed")
    with caplog.at_level(logging.WARNING):
        registry = ModelRegistry(models, tmp_path / "fresh-cache")
        names = [i.name for i in registry.all_upscalers()]
    assert names == ["None", "Lanczos", "Nearest"]
    assert len(registry.upscaler_rejects) == 3
    assert [r.getMessage() for r in caplog.records if "spandrel" in r.getMessage()] == [
        "upscaler model files are left out: spandrel is not installed"]


def test_the_registry_reads_the_same_folders_as_the_loader():
    assert registry_module.MODEL_UPSCALER_DIRS == um.UPSCALER_FOLDERS
    assert set(registry_module.MODEL_UPSCALER_SUFFIXES) == set(um.UPSCALER_SUFFIXES)


# --- the Upscale task with pixel upscalers -----------------------------------------------------------------------
def test_lanczos_x2_of_64_is_pils_own_128(builtin_manager):
    image = noise(64, 64, seed=1)
    result = builtin_manager.run(GenerationRequest.create(task="upscale", image=image, upscaler="Lanczos",
                                                        upscale_scale=2))
    assert result.images[0].size == (128, 128)
    assert np.array_equal(np.asarray(result.images[0]),
                          np.asarray(image.resize((128, 128), Image.Resampling.LANCZOS)))
    assert result.paths[0].parent.parent.name == "upscale"
    fields = parse_infotext(read_parameters(result.paths[0]))
    assert fields["Postprocess upscale by"] == "2" and fields["Postprocess upscaler"] == "Lanczos"


def test_a_model_file_upscales_by_its_scale_tiled_without_seams(pixel_manager):
    events = []
    flat = Image.new("RGB", (50, 38), (200, 31, 90))
    result = pixel_manager.run(GenerationRequest.create(task="upscale", image=flat, upscaler="sub/nearest-x4"),
                               on_progress=events.append)
    out = np.asarray(result.images[0])
    assert out.shape == (152, 200, 3) and (out == np.array([200, 31, 90], np.uint8)).all()
    tiles = [e for e in events if e.state == "running"]
    assert len(tiles) > 4 and tiles[-1].step == tiles[-1].total_steps  # 16 px tiles: progress per tile
    picture = noise(45, 29, seed=5)
    result = pixel_manager.run(GenerationRequest.create(task="upscale", image=picture, upscaler="sub/nearest-x4"))
    assert np.array_equal(np.asarray(result.images[0]),
                          np.asarray(picture.resize((180, 116), Image.Resampling.NEAREST)))
    assert parse_infotext(result.infotexts[0])["Postprocess upscale by"] == "4"
    assert pixel_manager.status().loaded_upscaler == "sub/nearest-x4"


def test_a_2x_model_runs_twice_for_4x_and_scale_to_crops_the_centre(pixel_manager):
    picture = noise(24, 16, seed=2)
    by4 = pixel_manager.run(GenerationRequest.create(task="upscale", image=picture, upscaler="nearest-x2",
                                                     upscale_scale=4))
    assert np.array_equal(np.asarray(by4.images[0]), np.asarray(picture.resize((96, 64), Image.Resampling.NEAREST)))
    boxed = pixel_manager.run(GenerationRequest.create(task="upscale", image=picture, upscaler="Nearest",
                                                       upscale_width=48, upscale_height=48))
    assert boxed.images[0].size == (48, 48)  # covered (72 x 48), then the centre kept
    expected = picture.resize((72, 48), Image.Resampling.NEAREST).crop((12, 0, 60, 48))
    assert np.array_equal(np.asarray(boxed.images[0]), np.asarray(expected))
    fields = parse_infotext(boxed.infotexts[0])
    assert fields["Postprocess upscale to-1"] == "48" and fields["Postprocess crop to-1"] == "48"


def test_the_source_pictures_parameters_are_kept(builtin_manager):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a red apple\nSteps: 20, Sampler: Euler a, Seed: 5, Size: 32x32")
    buffer = io.BytesIO()
    noise(32, 32).save(buffer, format="PNG", pnginfo=info)
    result = builtin_manager.run(GenerationRequest.create(task="upscale", image=buffer.getvalue(), upscaler="Lanczos",
                                                        upscale_scale=2))
    fields = parse_infotext(result.infotexts[0])
    assert fields["Prompt"] == "a red apple" and fields["Seed"] == "5"
    assert fields["Postprocess upscaler"] == "Lanczos"


def test_upscale_limits_and_unknown_names_are_422(pixel_manager):
    with pytest.raises(InvalidRequest) as info:
        GenerationRequest.create(task="upscale", image=noise(1024, 600), upscale_scale=8)
    assert info.value.field == "upscale_scale"
    with pytest.raises(InvalidRequest) as info:
        GenerationRequest.create(task="upscale", image=noise(64, 64), upscale_width=5000)
    assert info.value.field == "upscale_width"
    with pytest.raises(ModelNotFound) as info:
        pixel_manager.submit(GenerationRequest.create(task="upscale", image=noise(64, 64), upscaler="nope"))
    assert info.value.field == "upscaler" and "sub/nearest-x4" in str(info.value)


def test_the_sd_x4_path_is_unchanged_without_a_name_and_resizes_to_a_named_scale(tmp_path):
    manager = make_manager(tmp_path)
    try:
        result = manager.run(GenerationRequest.create(task="upscale", image=noise(40, 32), steps=2, seed=3))
        assert result.images[0].size == (160, 128)
        assert parse_infotext(result.infotexts[0])["Model"] == "tiny-x4"
        by2 = manager.run(GenerationRequest.create(task="upscale", image=noise(40, 32), steps=2, seed=3,
                                                   upscale_scale=2))
        assert by2.images[0].size == (80, 64)
        assert np.array_equal(np.asarray(by2.images[0]),
                              np.asarray(result.images[0].resize((80, 64), Image.Resampling.LANCZOS)))
    finally:
        manager.close()


# --- the hires fix and SD upscale with pixel upscalers -----------------------------------------------------------
def fake_registry_with_models(tmp_path, models: Path | None) -> FakeRegistry:
    """The tiny checkpoints of ``FakeRegistry`` beside the real entries of ``models``' upscaler files."""
    fake = FakeRegistry()
    if models is not None:
        fake.model_upscaler_infos = ModelRegistry(models, tmp_path / "cache").model_upscalers()
    return fake


def test_hires_fix_with_a_model_file(tmp_path, models):
    manager = make_manager(tmp_path, registry=fake_registry_with_models(tmp_path, models))
    try:
        result = manager.run(GenerationRequest.create(prompt="a boat", steps=2, width=64, height=64, seed=4,
                                                      enable_hr=True, hr_upscaler="nearest-x2",
                                                      denoising_strength=0.4))
        assert result.images[0].size == (128, 128)
        assert parse_infotext(result.infotexts[0])["Hires upscaler"] == "nearest-x2"
        assert manager.upscalers_library.loads == 1
    finally:
        manager.close()


@pytest.mark.parametrize("upscaler, size", [("Lanczos", (96, 80)), ("nearest-x2", (96, 80)), ("None", (48, 40))])
def test_sd_upscale_enlarges_then_redraws_tile_by_tile(tmp_path, request, upscaler, size):
    models = request.getfixturevalue("models") if upscaler == "nearest-x2" else None
    manager = make_manager(tmp_path, registry=fake_registry_with_models(tmp_path, models))
    events = []
    try:
        job = GenerationRequest.create(
            task="img2img", init_image=noise(48, 40), prompt="detailed", steps=4, denoising_strength=0.5, width=64,
            height=64, seed=9, **sd_upscale_fields(["", 16, upscaler, 2]))
        job = job.model_copy(update={"width": 32, "height": 32})  # 32 px tiles: several on a small picture
        result = manager.run(job, on_progress=events.append)
    finally:
        manager.close()
    assert result.images[0].size == size
    fields = parse_infotext(result.infotexts[0])
    assert fields["SD upscale overlap"] == "16" and fields["SD upscale upscaler"] == upscaler
    tiles = len(plan_full_spans(size[0], 32, 16)) * len(plan_full_spans(size[1], 32, 16))
    running = [e for e in events if e.state == "running"]
    assert running[-1].step == running[-1].total_steps == 2 * tiles  # 4 steps x 0.5 per tile


def test_sd_upscale_fields_and_its_checks():
    assert sd_upscale_fields(["", 64, "R-ESRGAN 4x+", 2.5]) == {
        "script_name": "sd upscale", "sd_upscale_overlap": 64, "sd_upscale_upscaler": "R-ESRGAN 4x+",
        "sd_upscale_scale": 2.5}
    assert sd_upscale_fields([]) == {"script_name": "sd upscale"}
    init = noise(64, 64)
    with pytest.raises(InvalidRequest) as info:
        GenerationRequest.create(task="img2img", init_image=init, script_name="SD Upscale", sd_upscale_scale=5)
    assert info.value.field == "sd_upscale_scale"
    with pytest.raises(InvalidRequest) as info:  # 1024² x 4 = 4096² in 512² tiles at 150 steps: over the budget
        GenerationRequest.create(task="img2img", init_image=noise(1024, 1024), script_name="sd upscale",
                                 sd_upscale_scale=4, sd_upscale_upscaler="Lanczos", steps=150,
                                 denoising_strength=1.0)
    assert info.value.field == "sd_upscale_scale"


def test_an_unknown_sd_upscale_upscaler_names_its_field(tmp_path):
    manager = make_manager(tmp_path)
    try:
        with pytest.raises(ModelNotFound) as info:
            manager.submit(GenerationRequest.create(task="img2img", init_image=noise(64, 64), script_name="sd upscale",
                                                    sd_upscale_upscaler="nope"))
        assert info.value.field == "sd_upscale_upscaler" and "Lanczos" in str(info.value)
    finally:
        manager.close()


def test_full_size_tiles_cover_the_picture_evenly():
    for length, tile, overlap in ((96, 32, 16), (1024, 512, 64), (512, 512, 64), (80, 32, 8), (200, 64, 256)):
        spans = plan_full_spans(length, tile, overlap)
        assert spans[0][0] == 0 and spans[-1][1] == length
        assert all(end - start == min(tile, length) for start, end in spans)
        assert all(b0 < a1 for (_, a1), (b0, _) in zip(spans, spans[1:], strict=False))  # neighbours overlap


# --- memory ------------------------------------------------------------------------------------------------------
def test_the_cpu_allocators_out_of_memory_is_recognised():
    assert devices.is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:118] data. DefaultCPUAllocator: can't "
                                       "allocate memory: you tried to allocate 123456789 bytes."))
    assert devices.is_oom(MemoryError())
    assert not devices.is_oom(RuntimeError("shapes cannot be multiplied"))


def test_a_cpu_out_of_memory_steps_the_tiles_down(tmp_path, models, monkeypatch):
    model = um.load_upscaler(models / "upscale_models" / "sub" / "nearest-x4.pth")
    real = model.descriptor
    sides = []

    class Hungry:
        def to(self, *args, **kwargs):
            real.to(*args, **kwargs)
            return self

        def __call__(self, tensor):
            sides.append(tensor.shape[-1])
            if tensor.shape[-1] > 64:
                raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
            return real(tensor)

    picture = noise(100, 100)
    out = um.upscale(um.UpscalerModel(model.info, Hungry()), picture, tile=128, overlap=8)
    assert out.size == (400, 400) and sides[0] == 100 and max(sides[1:]) <= 64
    assert np.array_equal(np.asarray(out), np.asarray(picture.resize((400, 400), Image.Resampling.NEAREST)))
