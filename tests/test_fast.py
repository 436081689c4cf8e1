"""``--fast`` on CPU: the UNet and the VAE decoder through OpenVINO, on the tiny model.

What a user would notice: the same pixels as default mode (fp32 noise at most), no second conversion after a
restart (the IR is cached on disk), a clear message and default mode when OpenVINO is missing or the cache cannot
be written, and speed-ups that need the torch UNet (DeepCache, token merging) still working on top of it.
"""

from __future__ import annotations

import errno
import platform
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipelines import fast, speedups
from pipelines.tiny import tiny_sd15_pipeline

# requirements.txt installs OpenVINO on x86-64 Linux/Windows and Apple silicon: there a missing package is a broken
# set-up and these tests fail; elsewhere --fast on CPU falls back to eager, and there is nothing to test here.
if platform.machine().lower() in ("x86_64", "amd64") or (sys.platform == "darwin" and platform.machine() == "arm64"):
    import openvino  # noqa: F401
else:
    pytest.skip("OpenVINO has no wheel for this platform; --fast on CPU runs eagerly here", allow_module_level=True)

STEPS = 4




def make_pipe():
    from diffusers import EulerDiscreteScheduler

    pipe = tiny_sd15_pipeline(seed=0)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, seed: int = 7, size: int = 64) -> np.ndarray:
    out = pipe("a red apple on a table", negative_prompt="blurry", num_inference_steps=STEPS, guidance_scale=7.0,
               height=size, width=size, generator=torch.Generator("cpu").manual_seed(seed), output_type="np")
    return out.images[0]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def pipe():
    return make_pipe()


@pytest.fixture(scope="module")
def default_image(pipe) -> np.ndarray:
    return generate(pipe)


@pytest.fixture()
def fast_pipe(pipe, cache_dir):
    """``pipe`` with ``--fast`` on (the first use converts the UNet and caches the IR in ``cache_dir``)."""
    notes = fast.enable_fast(pipe, "cpu", cache_dir)
    yield pipe, notes
    fast.disable_fast(pipe)


@pytest.fixture()
def quick_convert(fast_pipe, cache_dir, monkeypatch) -> list[str]:
    """``fast._convert``/``_convert_decoder`` answered from the IRs the module's first conversion cached (a tiny
    UNet's conversion takes ~10-25 s on a busy 2-core machine); returns a list naming each conversion."""
    import openvino as ov

    (unet_xml,) = (cache_dir / "openvino").glob("unet-*.xml")
    (decoder_xml,) = (cache_dir / "openvino").glob("vae-decoder-*.xml")
    calls: list[str] = []

    def answer(label, xml):
        def convert(module):
            calls.append(label)
            return ov.Core().read_model(str(xml))
        return convert

    monkeypatch.setattr(fast, "_convert", answer("unet", unet_xml))
    monkeypatch.setattr(fast, "_convert_decoder", answer("decoder", decoder_xml))
    return calls


def runner(pipe) -> fast.OpenVinoUNet:
    (only,) = [r for r in pipe._atelier_fast["openvino"] if isinstance(r, fast.OpenVinoUNet)]
    return only


def decoding(pipe) -> fast.OpenVinoDecoder:
    (only,) = [r for r in pipe._atelier_fast["openvino"] if isinstance(r, fast.OpenVinoDecoder)]
    return only


def test_fast_on_cpu_gives_default_pixels_through_openvino(fast_pipe, default_image, cache_dir):
    pipe, notes = fast_pipe
    assert any("runs through OpenVINO" in n for n in notes), notes
    image = generate(pipe)
    assert any("VAE decoder runs through OpenVINO" in n for n in notes), notes
    assert runner(pipe).ov_calls == STEPS and runner(pipe).eager_calls == 0
    assert decoding(pipe).ov_calls == 1 and decoding(pipe).eager_calls == 0
    np.testing.assert_allclose(image, default_image, atol=1e-4)
    for stem in ("unet", "vae-decoder"):
        assert list((cache_dir / "openvino").glob(f"{stem}-*.xml")), stem
        assert list((cache_dir / "openvino").glob(f"{stem}-*.bin")), stem


def test_unet_call_matches_eager_within_fp32_noise(fast_pipe):
    pipe, _ = fast_pipe
    g = torch.Generator().manual_seed(3)
    sample, text = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        through_ov = pipe.unet(sample, torch.tensor(421.5), text).sample
        eager = type(pipe.unet).forward(pipe.unet, sample, torch.tensor(421.5), text).sample
        as_tuple = pipe.unet(sample, 421.5, encoder_hidden_states=text, return_dict=False)
    assert runner(pipe).ov_calls == 2
    assert float((through_ov - eager).abs().max()) < 1e-4
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], through_ov)


def test_decoder_call_matches_eager_and_takes_any_latent_size(fast_pipe):
    pipe, _ = fast_pipe
    decoder = pipe.vae.decoder
    for shape in ((1, 4, 8, 8), (2, 4, 12, 20)):  # another batch, odd and non-square sides (decode tiles)
        latents = torch.randn(*shape, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            through_ov = decoder(latents)
            eager = type(decoder).forward(decoder, latents)
        assert through_ov.shape == eager.shape and float((through_ov - eager).abs().max()) < 1e-4
    assert decoding(pipe).ov_calls == 2 and decoding(pipe).eager_calls == 0
    decoder(torch.zeros(1, 4, 8, 8, requires_grad=True))  # gradients: only torch can give them
    assert decoding(pipe).eager_calls == 1


def test_a_dropped_pipeline_never_stacks_a_second_compiled_model(fast_pipe, cache_dir):
    from diffusers import StableDiffusionPipeline

    pipe, _ = fast_pipe
    first = runner(pipe)
    rebuilt = StableDiffusionPipeline(**pipe.components)  # as after a VAE switch: same modules, new pipeline
    fast.enable_fast(rebuilt, "cpu", cache_dir)
    try:
        assert first._compiled is None  # the old runner was taken off the UNet and freed
        assert getattr(pipe.unet, fast._RUNNER_ATTR) is runner(rebuilt) and runner(rebuilt)._previous is None
        assert getattr(pipe.vae.decoder, fast._RUNNER_ATTR) is decoding(rebuilt)
    finally:
        fast.disable_fast(rebuilt)
    assert "forward" not in pipe.unet.__dict__ and "forward" not in pipe.vae.decoder.__dict__


def test_restart_reads_the_cached_ir_instead_of_converting(fast_pipe, default_image, cache_dir, monkeypatch):
    fast_pipe  # noqa: B018 - the fixture converted and cached the IR
    restarted = make_pipe()  # same checkpoint, new process-like modules

    def no_conversion(unet):
        raise AssertionError("converted again although the IR is cached")

    monkeypatch.setattr(fast, "_convert", no_conversion)
    monkeypatch.setattr(fast, "_convert_decoder", no_conversion)
    notes = fast.enable_fast(restarted, "cpu", cache_dir)
    try:
        assert sum("loaded from the cache" in n for n in notes) == 2, notes  # UNet and decoder
        np.testing.assert_allclose(generate(restarted), default_image, atol=1e-4)
        assert runner(restarted).ov_calls == STEPS
    finally:
        fast.disable_fast(restarted)


def test_another_checkpoint_gets_its_own_ir(cache_dir):
    other, same = tiny_sd15_pipeline(seed=1), tiny_sd15_pipeline(seed=0)
    assert fast.unet_fingerprint(other.unet) != fast.unet_fingerprint(same.unet)
    assert fast.unet_fingerprint(same.unet) == fast.unet_fingerprint(make_pipe().unet)
    decoder_key = fast.decoder_fingerprint(same.vae.decoder, same.vae.config)
    assert decoder_key != fast.decoder_fingerprint(other.vae.decoder, other.vae.config)
    assert decoder_key == fast.decoder_fingerprint(make_pipe().vae.decoder, make_pipe().vae.config)


def test_the_fingerprint_ignores_diffusers_private_config_keys():
    """``_use_default_values`` comes out of a set, in another order in every process: it must not change the key,
    or every restart converts again (and leaves another 3 GiB IR behind)."""
    unet = tiny_sd15_pipeline(seed=0).unet
    before = fast.unet_fingerprint(unet)
    unet.register_to_config(_use_default_values=["dropout", "attention_type", "conv_in_kernel"])
    first = fast.unet_fingerprint(unet)
    unet.register_to_config(_use_default_values=["conv_in_kernel", "dropout", "attention_type"])
    assert fast.unet_fingerprint(unet) == first == before


def test_only_the_most_recently_used_irs_are_kept(default_image, tmp_path, quick_convert):
    import os

    ir_dir = tmp_path / "openvino"
    ir_dir.mkdir()
    old = []
    for i in range(fast.OPENVINO_KEEP + 1):  # older checkpoints' IRs, oldest first
        xml = ir_dir / f"unet-old{i}.xml"
        xml.write_text("<net/>")
        xml.with_suffix(".bin").write_bytes(b"\0")
        os.utime(xml, (1_000_000 + i, 1_000_000 + i))
        old.append(xml)
    pipe = make_pipe()
    fast.enable_fast(pipe, "cpu", tmp_path)
    fast.disable_fast(pipe)
    kept = sorted(p.name for p in ir_dir.glob("unet-*.xml"))
    new = f"unet-{fast.unet_fingerprint(pipe.unet)}.xml"
    assert new in kept and len(kept) == fast.OPENVINO_KEEP
    assert kept == sorted([new] + [p.name for p in old[-(fast.OPENVINO_KEEP - 1):]])
    assert sorted(p.name for p in ir_dir.glob("unet-*.bin")) == sorted(n[:-4] + ".bin" for n in kept)
    assert len(list(ir_dir.glob("vae-decoder-*.xml"))) == 1


def test_disable_gives_the_torch_unet_back(pipe, default_image, cache_dir):
    fast.enable_fast(pipe, "cpu", cache_dir)
    assert "forward" in pipe.unet.__dict__ and "forward" in pipe.vae.decoder.__dict__
    fast.disable_fast(pipe)
    assert not fast.is_fast(pipe) and "forward" not in pipe.unet.__dict__
    assert "forward" not in pipe.vae.decoder.__dict__
    np.testing.assert_array_equal(generate(pipe), default_image)


def test_missing_openvino_falls_back_with_a_message(pipe, default_image, monkeypatch, cache_dir):
    monkeypatch.setitem(sys.modules, "openvino", None)  # ``import openvino`` raises ImportError
    notes = fast.enable_fast(pipe, "cpu", cache_dir)
    try:
        assert fast.is_fast(pipe)
        assert len(notes) == 1 and "OpenVINO" in notes[0] and "pip install openvino" in notes[0]
        assert "forward" not in pipe.unet.__dict__
        np.testing.assert_array_equal(generate(pipe), default_image)
    finally:
        fast.disable_fast(pipe)


def test_conversion_failure_falls_back_with_a_message(default_image, tmp_path, monkeypatch):
    pipe = make_pipe()

    def broken(unet):
        raise RuntimeError("unsupported operation aten::frobnicate")

    monkeypatch.setattr(fast, "_convert", broken)
    notes = fast.enable_fast(pipe, "cpu", tmp_path)
    assert "could not convert" in notes[0] and "aten::frobnicate" in notes[0] and "default mode" in notes[0]
    assert "forward" not in pipe.unet.__dict__ and "forward" not in pipe.vae.decoder.__dict__
    np.testing.assert_array_equal(generate(pipe), default_image)
    fast.disable_fast(pipe)


def test_a_decoder_that_fails_alone_decodes_eagerly_and_keeps_the_fast_unet(default_image, tmp_path, monkeypatch,
                                                                             quick_convert):
    pipe = make_pipe()

    def broken(decoder):
        raise RuntimeError("unsupported operation aten::upsample_frobnicate")

    monkeypatch.setattr(fast, "_convert_decoder", broken)
    notes = fast.enable_fast(pipe, "cpu", tmp_path)
    try:
        assert any("VAE decoder stays in torch" in n and "upsample_frobnicate" in n for n in notes), notes
        assert "forward" not in pipe.vae.decoder.__dict__
        np.testing.assert_allclose(generate(pipe), default_image, atol=1e-4)
        assert runner(pipe).ov_calls == STEPS
    finally:
        fast.disable_fast(pipe)


def test_full_disk_keeps_fast_and_says_it_will_convert_again(default_image, tmp_path, monkeypatch, quick_convert):
    pipe = make_pipe()

    def disk_full(model, xml):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fast, "_save_ir", disk_full)
    notes = fast.enable_fast(pipe, "cpu", tmp_path)
    try:
        assert any("could not save" in n and "No space left" in n for n in notes), notes
        np.testing.assert_allclose(generate(pipe), default_image, atol=1e-4)
        assert runner(pipe).ov_calls == STEPS
        assert not (tmp_path / "openvino").exists() or not list((tmp_path / "openvino").glob("*.xml"))
        assert quick_convert == ["unet", "decoder"]
    finally:
        fast.disable_fast(pipe)


def test_a_damaged_cached_ir_is_converted_again(default_image, tmp_path, quick_convert):
    pipe = make_pipe()
    ir_dir = tmp_path / "openvino"
    ir_dir.mkdir()
    xml = ir_dir / f"unet-{fast.unet_fingerprint(pipe.unet)}.xml"
    xml.write_text("<net>truncated")
    xml.with_suffix(".bin").write_bytes(b"\0" * 16)
    notes = fast.enable_fast(pipe, "cpu", tmp_path)
    try:
        assert any("converted to OpenVINO" in n for n in notes), notes
        assert quick_convert == ["unet", "decoder"] and xml.stat().st_size > 100  # replaced by a good IR
        np.testing.assert_allclose(generate(pipe), default_image, atol=1e-4)
    finally:
        fast.disable_fast(pipe)


@pytest.mark.parametrize("deep_cache,ratio", [(True, 0.0), (False, 0.5)])
def test_deep_cache_and_token_merging_run_on_the_torch_unet(fast_pipe, cache_dir, deep_cache, ratio):
    pipe, _ = fast_pipe
    fast.disable_fast(pipe)
    with speedups.applied_speedups(pipe, SimpleNamespace(deep_cache=deep_cache, token_merging=ratio)):
        expected = generate(pipe)
    fast.enable_fast(pipe, "cpu", cache_dir)
    with speedups.applied_speedups(pipe, SimpleNamespace(deep_cache=deep_cache, token_merging=ratio)):
        image = generate(pipe)
    # Every UNet call that reaches the wrapper runs eagerly (DeepCache's cached calls skip it altogether).
    assert runner(pipe).eager_calls >= 1 and runner(pipe).ov_calls == 0
    np.testing.assert_allclose(image, expected, atol=1e-4)  # the decoder still runs through OpenVINO: fp32 noise


def test_odd_latent_size_runs_eagerly(fast_pipe):
    pipe, _ = fast_pipe
    factor = 2 ** pipe.unet.num_upsamplers
    generate(pipe, size=8 * (4 * factor + 1))  # latent side not a multiple of the up factor
    assert runner(pipe).eager_calls == STEPS and runner(pipe).ov_calls == 0


# --- torch's copies dropped while OpenVINO serves them ---------------------------------------------------------


def all_meta(module) -> bool:
    return all(t.is_meta for t in [*module.parameters(), *module.buffers()] if t is not None)


def test_dropped_weights_are_read_back_for_an_eager_call_and_dropped_again(default_image, tmp_path, quick_convert):
    """The weights come back from the reader before an eager-only call (here: an odd latent size), OpenVINO's next
    call drops them again, and after ``disable_fast`` the torch pipeline draws exactly its old pixels."""
    pipe, source = make_pipe(), make_pipe()
    reads: list[str] = []

    def reader(name):
        def read(dtype):
            reads.append(name)
            return {k: v.to(dtype) for k, v in getattr(source, name).state_dict().items()}
        return read

    factor = 2 ** pipe.unet.num_upsamplers
    odd = 8 * (4 * factor + 1)
    eager_odd = generate(source, size=odd)
    notes = fast.enable_fast(pipe, "cpu", tmp_path, readers={"unet": reader("unet"), "vae": reader("vae")})
    try:
        assert any("dropped while OpenVINO serves them" in n for n in notes), notes
        assert all_meta(pipe.unet) and all_meta(pipe.vae.decoder) and not all_meta(pipe.vae.encoder)
        np.testing.assert_allclose(generate(pipe), default_image, atol=1e-4)
        assert reads == [] and runner(pipe).ov_calls == STEPS
        np.testing.assert_allclose(generate(pipe, size=odd), eager_odd, atol=1e-4)  # eager UNet, read back once
        assert reads == ["unet"] and runner(pipe).eager_calls == STEPS and not fast.weights_dropped(pipe.unet)
        generate(pipe)
        assert fast.weights_dropped(pipe.unet) and all_meta(pipe.unet)
    finally:
        fast.disable_fast(pipe)
    assert not fast.weights_dropped(pipe.unet) and not all_meta(pipe.unet) and not all_meta(pipe.vae.decoder)
    np.testing.assert_array_equal(generate(pipe), generate(source))


@pytest.fixture(scope="module")
def studio(tmp_path_factory, tiny_models_dir) -> Path:
    """A models folder with the tiny SD 1.x single file and a kohya LoRA for it (read by the real loaders)."""
    import shutil

    from test_prompt_language import write_kohya_lora

    root = tmp_path_factory.mktemp("studio")
    (root / "models" / "checkpoints").mkdir(parents=True)
    (root / "models" / "Lora").mkdir()
    shutil.copy(tiny_models_dir / "checkpoints" / "tiny-sd15.safetensors", root / "models" / "checkpoints")
    write_kohya_lora(root / "models" / "Lora" / "style.safetensors", seed=1)
    return root


def studio_manager(studio: Path, tmp_path: Path, **settings):
    from manager_fixtures import make_settings

    from pipelines.manager import PipelineManager
    from pipelines.registry import ModelRegistry

    return PipelineManager(make_settings(tmp_path, models_dir=studio / "models", **settings),
                           ModelRegistry(studio / "models", tmp_path / "registry"))


def studio_request(prompt: str = "a red apple on a table", **fields):
    from pipelines.request import GenerationRequest

    base = dict(prompt=prompt, negative_prompt="blurry", steps=3, width=64, height=64, seed=99, cfg_scale=7.0,
                checkpoint="tiny-sd15")
    return GenerationRequest.create(**{**base, **fields})


def image_pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def test_a_lora_or_deep_cache_after_fast_draws_what_a_manager_that_never_used_fast_draws(studio, tmp_path,
                                                                                         quick_convert):
    lora = "a red apple on a table <lora:style:1>"
    plain_manager = studio_manager(studio, tmp_path / "plain")
    try:
        plain = image_pixels(plain_manager.run(studio_request()))
        with_lora = image_pixels(plain_manager.run(studio_request(lora)))
        deep = image_pixels(plain_manager.run(studio_request(deep_cache=True)))
    finally:
        plain_manager.close()
    assert not np.array_equal(with_lora, plain)

    manager = studio_manager(studio, tmp_path / "fast", fast=True)
    try:
        first = manager.run(studio_request())
        entry = manager.cache.current()
        unet, decoder = entry.components["unet"], entry.components["vae"].decoder
        assert all_meta(unet) and all_meta(decoder), first.notes  # OpenVINO serves them: torch's copies dropped
        assert any("dropped while OpenVINO serves them" in n for n in first.notes), first.notes
        assert int(np.abs(image_pixels(first) - plain).max()) <= 1
        # A LoRA switches --fast off: the UNet is read back whole before the LoRA goes in, the pixels exact.
        assert np.array_equal(image_pixels(manager.run(studio_request(lora))), with_lora)
        assert not fast.weights_dropped(unet) and not all_meta(unet)
        # A plain request goes back to OpenVINO (and drops the weights again).
        again = manager.run(studio_request())
        pipe = entry.pipelines["txt2img"]
        assert fast.is_fast(pipe) and runner(pipe).ov_calls == 3 and fast.weights_dropped(unet)
        assert int(np.abs(image_pixels(again) - plain).max()) <= 1
        # DeepCache needs the torch UNet: --fast is off for it, and the picture is exactly default mode's.
        assert np.array_equal(image_pixels(manager.run(studio_request(deep_cache=True))), deep)
        assert not all_meta(unet)
    finally:
        manager.close()
