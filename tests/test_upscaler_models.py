"""ESRGAN-family upscalers through spandrel: tiny random-weight models written in the file formats their releases
ship (ESRGAN's 2018 legacy pickle, Real-ESRGAN's ``params_ema`` new-arch layout, SwinIR's ``params``, Real-ESRGAN
Compact, safetensors) load through spandrel's real loading code, report the scale their weights say, upscale by it,
tile without seams; broken files are left out with a reason; Lanczos and Nearest are PIL's own resize."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("spandrel", reason="spandrel (and a torchvision matching torch) is not installed")

from safetensors.torch import save_file  # noqa: E402
from spandrel.architectures.Compact import Compact  # noqa: E402
from spandrel.architectures.ESRGAN import ESRGAN  # noqa: E402
from spandrel.architectures.SwinIR import SwinIR  # noqa: E402

from pipelines import upscaler_models as um  # noqa: E402
from pipelines.errors import Cancelled, ModelLoadError, ModelNotFound, OutOfMemoryEverywhere  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # torch.meshgrid's indexing notice inside SwinIR

torch.set_num_threads(1)


# --- tiny models in their real file formats ----------------------------------------------------------------------
@torch.no_grad()
def calibrated(net: torch.nn.Module) -> torch.nn.Module:
    """Random weights leave ESRGAN's output near -0.05, which clamps to a black picture; rescale the last conv so the
    output spreads around 0.5 (std 0.2) and every pixel depends on its neighbourhood."""
    last = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    probe = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    std = net(probe).std(dim=(0, 2, 3))
    last.weight.mul_((0.2 / std)[:, None, None, None])
    last.bias.mul_(0.2 / std)
    last.bias.add_(0.5 - net(probe).mean(dim=(0, 2, 3)))
    return net


def _esrgan(scale: int, seed: int, **kw) -> ESRGAN:
    torch.manual_seed(seed)
    return calibrated(ESRGAN(num_filters=16, num_blocks=1, scale=scale, **kw))  # RGB in, also when unshuffled


def _new_arch(old: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ESRGAN's old key layout (``model.N``) → Real-ESRGAN's (``conv_first``, ``body.N.rdbK``, ``conv_up1``…)."""
    renames = {"model.0": "conv_first", "model.3": "conv_up1", "model.6": "conv_up2", "model.8": "conv_hr",
               "model.10": "conv_last"}
    blocks = 1 + max(int(k.split(".")[3]) for k in old if k.startswith("model.1.sub.") and ".RDB" in k)
    new = {}
    for key, value in old.items():
        stem, kind = key.rsplit(".", 1)
        if stem in renames:
            new[f"{renames[stem]}.{kind}"] = value
        elif stem == f"model.1.sub.{blocks}":
            new[f"conv_body.{kind}"] = value
        else:  # model.1.sub.I.RDBk.convj.0
            _, _, _, block, rdb, conv, _ = stem.split(".")
            new[f"body.{block}.{rdb.lower()}.{conv}.{kind}"] = value
    return new


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("upscale_models")
    files: dict[str, Path] = {}

    # ESRGAN 4x as the 2018 releases (RRDB_ESRGAN_x4.pth): an old-layout state dict, legacy (pre-zip) pickle.
    files["esrgan4"] = folder / "ESRGAN_x4_tiny.pth"
    torch.save(_esrgan(4, 0).state_dict(), files["esrgan4"], _use_new_zipfile_serialization=False)

    # ESRGAN 2x as safetensors; the name says 4x, the weights say 2x.
    files["esrgan2"] = folder / "4x-misleading-name.safetensors"
    save_file({k: v.contiguous() for k, v in _esrgan(2, 1).state_dict().items()}, files["esrgan2"])

    # Real-ESRGAN x2plus: basicsr's new-arch keys under "params_ema"; pixel-unshuffle (12 channels in), 4x inside.
    net = _esrgan(4, 2, in_nc=12, out_nc=3, shuffle_factor=2)
    files["realesrgan2"] = folder / "RealESRGAN_x2plus_tiny.pth"
    torch.save({"params_ema": _new_arch(net.state_dict())}, files["realesrgan2"])

    # SwinIR classical SR x2 as its releases: {"params": state_dict}.
    torch.manual_seed(3)
    swin = calibrated(SwinIR(img_size=32, embed_dim=12, depths=[2], num_heads=[2], window_size=8, upscale=2,
                             upsampler="pixelshuffle", resi_connection="1conv"))
    files["swinir2"] = folder / "SwinIR_x2_tiny.pth"
    torch.save({"params": swin.state_dict()}, files["swinir2"])

    # Real-ESRGAN Compact x4 with its last conv zeroed: exactly nearest-neighbour upscaling (its forward adds the
    # nearest-upsampled input to the residual), so its right answer is known pixel for pixel.
    torch.manual_seed(4)
    compact = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=4)
    with torch.no_grad():
        compact.body[-1].weight.zero_()
        compact.body[-1].bias.zero_()
    files["nearest4"] = folder / "realesr-compact-nearest.pth"
    torch.save({"params": compact.state_dict()}, files["nearest4"])
    return files


@pytest.fixture(scope="module")
def loaded(models) -> dict[str, um.UpscalerModel]:
    return {key: um.load_upscaler(path) for key, path in models.items()}


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def spandrel_untiled(model: um.UpscalerModel, image: Image.Image) -> np.ndarray:
    """spandrel's own call on the whole image, converted to 0–255 the usual way."""
    model.descriptor.to("cpu", torch.float32)
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), np.float32) / 255).permute(2, 0, 1)[None]
    out = model.descriptor(pixels)[0].permute(1, 2, 0)
    return (out.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


# --- loading: the scale and the rest come from the weights ---------------------------------------------------------
EXPECTED = {  # architecture, scale, fp16 per spandrel, multiple_of
    "esrgan4": ("ESRGAN", 4, True, 1),
    "esrgan2": ("ESRGAN", 2, True, 1),
    "realesrgan2": ("ESRGAN", 2, True, 4),
    "swinir2": ("SwinIR", 2, False, 1),
    "nearest4": ("RealESRGAN Compact", 4, True, 1),
}


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_the_file_says_what_it_is_and_the_cheap_probe_agrees(models, loaded, key):
    architecture, scale, half, multiple = EXPECTED[key]
    info = loaded[key].info
    assert (info.architecture, info.scale, info.supports_half, info.size_multiple) == (architecture, scale, half,
                                                                                        multiple)
    assert info.input_channels == 3 and info.output_channels == 3
    assert info.name == models[key].stem
    assert um.probe_upscaler(models[key]) == info


def test_listing_reads_no_weights_where_the_model_builds_on_meta(models, monkeypatch):
    """ESRGAN, Real-ESRGAN and Compact build on the meta device: probing never loads them for real. SwinIR computes
    values while it is built, so it is loaded (and still gives the same answer, checked above)."""
    loads = []
    real_load = um.load_upscaler
    monkeypatch.setattr(um, "load_upscaler", lambda path: loads.append(Path(path).name) or real_load(path))
    for key in EXPECTED:
        um.probe_upscaler(models[key])
    assert loads == [models["swinir2"].name]


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_upscales_by_the_models_scale(loaded, key):
    image = noise(37, 23)  # odd sides: padded to the model's multiple and minimum, cropped back
    out = um.upscale(loaded[key], image, tile=16, overlap=4)
    scale = EXPECTED[key][1]
    assert out.size == (37 * scale, 23 * scale) and out.mode == "RGB"
    assert np.asarray(out).std() > 10  # a picture, not a clamped flat colour


# --- tiling -------------------------------------------------------------------------------------------------------
def test_tiled_matches_spandrels_untiled_call(loaded):
    """With overlap and the edge margin, a tiled run of a convolution network matches the whole-image run to within
    a level or two; without the margin (plain feathering over the whole overlap) it does not."""
    model, image = loaded["esrgan4"], noise(64, 64)
    whole = spandrel_untiled(model, image).astype(np.int16)
    calls = []
    tiled = np.asarray(um.upscale(model, image, tile=32, overlap=8, on_tile=lambda d, t: calls.append((d, t))),
                       np.int16)
    assert calls == [(0, 9), *((i, 9) for i in range(1, 10))]  # 64 px in 32 px tiles with 8 px overlap: 3 x 3
    diff = np.abs(tiled - whole)
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())


def test_the_edge_margin_is_what_hides_tile_edges(loaded, monkeypatch):
    model, image = loaded["esrgan4"], noise(64, 64)
    whole = spandrel_untiled(model, image).astype(np.int16)
    monkeypatch.setattr(um, "EDGE_MARGIN", 0.0)
    plain = np.abs(np.asarray(um.upscale(model, image, tile=32, overlap=8), np.int16) - whole)
    assert plain.max() > 8  # measured 24: the bound above is not met by accident


def test_tiles_respect_the_architectures_size_multiple(loaded):
    model = loaded["realesrgan2"]  # pixel-unshuffle: sides must be multiples of 4
    seen = []
    original = model.descriptor

    class Spy:
        def __getattr__(self, name):
            return getattr(original, name)

        def __call__(self, tensor):
            seen.append(tuple(tensor.shape[-2:]))
            return original(tensor)

    model = um.UpscalerModel(model.info, Spy())
    image = noise(70, 61)  # padded to 72 x 64 as spandrel pads it; tiles start on whole 2x2 unshuffle blocks
    out = um.upscale(model, image, tile=48, overlap=16)
    assert out.size == (140, 122)
    assert seen == [(40, 44)] * 4, seen  # 2 x 2 tiles, sides multiples of 4
    whole = spandrel_untiled(loaded["realesrgan2"], image).astype(np.int16)
    diff = np.abs(np.asarray(out, np.int16) - whole)
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())


def test_a_constant_colour_stays_exactly_constant(loaded):
    image = Image.new("RGB", (50, 38), (200, 31, 90))
    out = np.asarray(um.upscale(loaded["nearest4"], image, tile=16, overlap=8))
    assert out.shape == (152, 200, 3)
    assert (out == np.array([200, 31, 90], np.uint8)).all()


def test_alpha_is_kept_beside_an_rgb_model(loaded):
    image = noise(30, 20, seed=3).convert("RGBA")
    image.putalpha(Image.linear_gradient("L").resize((30, 20)))
    out = um.upscale(loaded["nearest4"], image, tile=16, overlap=4)
    assert out.mode == "RGBA" and out.size == (120, 80)
    assert np.array_equal(np.asarray(out.convert("RGB")), np.asarray(image.convert("RGB").resize((120, 80), 0)))
    expected_alpha = np.asarray(image.getchannel("A").resize((120, 80), Image.Resampling.LANCZOS))
    assert np.array_equal(np.asarray(out.getchannel("A")), expected_alpha)


def test_tiles_land_where_they_belong(loaded):
    """The nearest-neighbour model tiled must give PIL's nearest x4 exactly: any tile offset or scale mistake shows."""
    image = noise(45, 29, seed=5)
    out = um.upscale(loaded["nearest4"], image, tile=16, overlap=4)
    assert np.array_equal(np.asarray(out), np.asarray(image.resize((180, 116), Image.Resampling.NEAREST)))


def test_blend_weights_are_a_partition_of_unity_and_feathered():
    """Tiles that disagree (alternately dark and light) meet in a ramp, not a hard edge; equal tiles stay equal."""
    flat = um.blend_tiles(lambda box: torch.full((3, (box.bottom - box.top) * 2, (box.right - box.left) * 2), 0.3),
                          100, 20, 2, tile=32, overlap=8)
    assert torch.allclose(flat, torch.full_like(flat, 0.3), atol=1e-6)
    tiles = iter(range(100))
    row = um.blend_tiles(lambda box: torch.full((1, 2 * (box.bottom - box.top), 2 * (box.right - box.left)),
                                                0.2 if next(tiles) % 2 else 0.8), 100, 8, 2, channels=1, tile=32,
                         overlap=8)[0, 0]
    steps = (row[1:] - row[:-1]).abs()
    assert steps.max() < 0.6 / 2  # a hard cut would jump 0.6 in one pixel
    assert row.min() >= 0.2 - 1e-6 and row.max() <= 0.8 + 1e-6


@pytest.mark.parametrize("length, tile, overlap, align", [(100, 32, 8, 1), (1024, 512, 32, 1), (513, 64, 16, 8),
                                                          (512, 64, 16, 8), (72, 30, 6, 4), (20, 64, 8, 1)])
def test_tiles_are_planned_evenly(length, tile, overlap, align):
    spans = um.plan_spans(length, tile, overlap, align)
    sizes = {end - start for start, end in spans}
    assert spans[0][0] == 0 and spans[-1][1] == length and len(sizes) == 1
    size = sizes.pop()
    cap = min(overlap, tile // align // 4 * align)  # the overlap is capped at a quarter tile
    if len(spans) > 1:
        assert size <= tile and size % align == 0
        assert all(e0 - s1 >= cap for (_, e0), (s1, _) in zip(spans, spans[1:], strict=False))
        if length % align == 0:
            assert all(start % align == 0 for start, _ in spans)
    # the work beyond one whole-image run is the overlaps, not a tile flush with the end
    assert len(spans) * size <= length + (len(spans) + 1) * (cap + 2 * align)
    assert um.plan_spans(1024, 512, 32) == [(0, 363), (330, 693), (661, 1024)]


# --- memory and cancel --------------------------------------------------------------------------------------------
class OomAbove:
    """A descriptor that runs out of memory for tiles larger than ``limit`` px (or always)."""

    def __init__(self, real, limit: int):
        self.real, self.limit, self.sides = real, limit, []

    def to(self, *args, **kwargs):
        return self

    def __call__(self, tensor):
        self.sides.append(max(tensor.shape[-2:]))
        if max(tensor.shape[-2:]) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.real(tensor)


def test_out_of_memory_halves_the_tile_and_still_gets_the_picture(loaded, monkeypatch, caplog):
    monkeypatch.setattr(um, "MIN_TILE", 8)
    fake = OomAbove(loaded["nearest4"].descriptor, limit=20)
    model = um.UpscalerModel(loaded["nearest4"].info, fake)
    image = noise(60, 44, seed=2)
    with caplog.at_level(logging.WARNING, logger="pipelines.upscaler_models"):
        out = um.upscale(model, image, tile=80, overlap=4)
    assert np.array_equal(np.asarray(out), np.asarray(image.resize((240, 176), Image.Resampling.NEAREST)))
    assert fake.sides[0] == 60 and max(fake.sides[-4:]) <= 20  # 80 (whole image) → 40 → 20
    assert "out of memory" in caplog.text


def test_out_of_memory_at_the_smallest_tile_is_a_clear_error(loaded, monkeypatch):
    monkeypatch.setattr(um, "MIN_TILE", 16)
    model = um.UpscalerModel(loaded["nearest4"].info, OomAbove(loaded["nearest4"].descriptor, limit=0))
    with pytest.raises(OutOfMemoryEverywhere, match="16 px tiles"):
        um.upscale(model, noise(40, 40), tile=64, overlap=4)


def test_on_tile_can_cancel(loaded):
    ran = []

    def stop_after_first(done, total):
        ran.append(done)
        if done == 1:
            raise Cancelled("Stopped.")

    with pytest.raises(Cancelled):
        um.upscale(loaded["esrgan2"], noise(48, 48), tile=16, overlap=4, on_tile=stop_after_first)
    assert ran == [0, 1]


def test_half_precision_only_on_cuda_and_where_spandrel_allows(loaded, monkeypatch):
    esrgan, swin = loaded["esrgan4"].info, loaded["swinir2"].info
    assert um.resolve_dtype(esrgan, "cpu", torch.float16) == torch.float32
    assert um.resolve_dtype(esrgan, "mps", torch.float16) == torch.float32
    assert um.resolve_dtype(esrgan, "cuda", torch.float16) == torch.float16
    assert um.resolve_dtype(esrgan, "cuda", torch.float32) == torch.float32
    monkeypatch.setattr(um.devices, "pick_dtype", lambda device, precision: torch.bfloat16)
    assert um.resolve_dtype(swin, "cuda", torch.float16) == torch.bfloat16  # SwinIR: no fp16 in spandrel
    monkeypatch.setattr(um.devices, "pick_dtype", lambda device, precision: torch.float16)  # GPU without bf16
    assert um.resolve_dtype(swin, "cuda", torch.float16) == torch.float32


# --- files that are not upscalers -----------------------------------------------------------------------------------
class Exploit:
    marker: Path

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def junk(tmp_path, models) -> dict[str, Path]:
    folder = tmp_path / "models" / "ESRGAN"
    folder.mkdir(parents=True)
    files = {"random": folder / "random-bytes.pth", "truncated": folder / "cut-short.safetensors",
             "truncated_pth": folder / "cut-short-zip.pth", "unknown": folder / "some-other-net.safetensors",
             "exploit": folder / "exploit.pth", "empty": folder / "empty.ckpt"}
    files["random"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    data = models["esrgan2"].read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    zipped = tmp_path / "zip.pth"
    torch.save(torch.load(models["esrgan4"], weights_only=True), zipped)
    files["truncated_pth"].write_bytes(zipped.read_bytes()[:3000])
    save_file({"encoder.weight": torch.zeros(4, 4)}, files["unknown"])
    Exploit.marker = tmp_path / "exploited"
    torch.save({"model.0.weight": Exploit()}, files["exploit"])
    files["empty"].touch()
    return files


def test_broken_and_foreign_files_are_left_out_with_a_reason(tmp_path, models, junk, caplog):
    esrgan = tmp_path / "models" / "ESRGAN"
    (esrgan / "notes.txt").write_text("not a model")
    x4 = tmp_path / "models" / "upscale_models" / "stable-diffusion-x4-upscaler"  # the SD x4 diffusers folder
    (x4 / "unet").mkdir(parents=True)
    (x4 / "model_index.json").write_text("{}")
    (x4 / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(models["esrgan2"].read_bytes())
    (tmp_path / "models" / "upscale_models" / "4x-linked.pth").symlink_to(models["esrgan4"])
    (tmp_path / "models" / "RealESRGAN").mkdir()
    (tmp_path / "models" / "RealESRGAN" / "sub").mkdir()
    (tmp_path / "models" / "RealESRGAN" / "sub" / "x2.pth").write_bytes(models["realesrgan2"].read_bytes())

    folders = um.upscaler_folders(tmp_path / "models")
    assert [f.name for f in folders] == ["upscale_models", "ESRGAN", "RealESRGAN"]
    with caplog.at_level(logging.WARNING, logger="pipelines.upscaler_models"):
        scan = um.scan_upscaler_folders(folders)

    assert sorted((i.name, i.scale) for i in scan.found) == [("4x-linked", 4), ("sub/x2", 2)]
    reasons = {r.path.name: r.reason for r in scan.rejected}
    assert set(reasons) == {p.name for p in junk.values()}
    assert "cut short" in reasons["cut-short.safetensors"] and "cut short" in reasons["cut-short-zip.pth"]
    assert "architecture spandrel" in reasons["some-other-net.safetensors"]
    assert "Python objects" in reasons["exploit.pth"]
    assert "not a model file" in reasons["random-bytes.pth"]
    for name, reason in reasons.items():
        assert reason.startswith(name) and name in caplog.text
    assert not Exploit.marker.exists()


@pytest.mark.parametrize("kind", ["random", "truncated", "truncated_pth", "unknown", "exploit", "empty"])
def test_loading_a_broken_file_is_a_model_load_error(junk, kind):
    with pytest.raises(ModelLoadError) as caught:
        um.load_upscaler(junk[kind])
    assert junk[kind].name in caught.value.message and caught.value.http_status == 400
    assert not Exploit.marker.exists()


def test_without_spandrel_the_files_are_left_out_with_one_log_line(models, monkeypatch, caplog):
    def missing():
        raise ModelLoadError("Upscaler model files need the spandrel package (no module named 'spandrel').")

    monkeypatch.setattr(um, "_spandrel", missing)
    with caplog.at_level(logging.WARNING, logger="pipelines.upscaler_models"):
        scan = um.scan_upscaler_folders([models["esrgan4"].parent])
    assert scan.found == [] and len(scan.rejected) == len(models)
    assert all("spandrel package" in r.reason for r in scan.rejected)
    assert caplog.text.count("spandrel package") == 1


def test_other_extensions_are_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="not an upscaler model file"):
        um.load_upscaler(tmp_path / "model.onnx")


# --- PIL's built-ins and sizing --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, resample", [("Lanczos", Image.Resampling.LANCZOS),
                                            ("Nearest", Image.Resampling.NEAREST)])
def test_lanczos_and_nearest_are_pils_own_resize(name, resample):
    image = noise(64, 64, seed=9)
    calls = []
    out = um.upscale(um.builtin_upscaler(name, 2), image, on_tile=lambda d, t: calls.append((d, t)))
    assert out.size == (128, 128)
    assert np.array_equal(np.asarray(out), np.asarray(image.resize((128, 128), resample)))
    assert calls == [(0, 1), (1, 1)]
    assert um.BUILTIN_UPSCALERS[name].scale == 4


def test_an_unknown_builtin_is_model_not_found():
    with pytest.raises(ModelNotFound, match="Lanczos, Nearest"):
        um.builtin_upscaler("Bicubic")


def test_upscale_to_size_runs_the_model_until_large_enough_then_lanczos(loaded):
    passes = []
    out = um.upscale_to_size(loaded["esrgan2"], noise(20, 16), 70, 50, tile=64,
                             on_tile=lambda d, t: passes.append(d) if d == 0 else None)
    assert out.size == (70, 50) and len(passes) == 2  # 20 → 40 → 80 ≥ 70, then down to 70 x 50
    assert um.upscale_to_size(um.builtin_upscaler("Lanczos"), noise(20, 16), 33, 21).size == (33, 21)
