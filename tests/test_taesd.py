"""TAESD (issue 28): tiny autoencoder files found where A1111, Atelier and ComfyUI keep them, loaded into diffusers'
``AutoencoderTiny`` from taesd's own ``.pth``/``.safetensors`` layout or a diffusers folder, used for live previews
every step, and as the opt-in final decode (Settings, a request's ``fast_decode``, the API's
``override_settings.fast_decode``) written into the infotext as ``VAE: taesd``.

The tiny random ``AutoencoderTiny`` of ``pipelines/tiny.py`` stands in for the real files, saved in both file formats.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from manager_fixtures import make_manager

from pipelines import taesd
from pipelines.errors import ModelLoadError
from pipelines.infotext import parse_infotext
from pipelines.request import GenerationRequest
from pipelines.tasks import denoise
from pipelines.tiny import taesd_decoder_state, tiny_autoencoder_tiny, write_taesd_decoder

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

FORMATS = {  # where and how a TAESD is installed: A1111's folder, ours, ComfyUI's; taesd's two files, a folder
    "pth": ("VAE-approx", "taesd_decoder.pth"),
    "safetensors": ("vae-approx", "taesd_decoder.safetensors"),
    "diffusers": ("vae_approx", "taesd-sd"),
}


@pytest.fixture(scope="module")
def tiny_ae() -> Any:
    return tiny_autoencoder_tiny(seed=5)


def install(models_dir: Path, model: Any, kind: str) -> Path:
    folder, name = FORMATS[kind]
    return write_taesd_decoder(model, models_dir / folder / name)


def request(**fields: Any) -> GenerationRequest:
    return GenerationRequest.create(**{"prompt": "a lighthouse", "steps": 3, "width": 64, "height": 64, "seed": 21,
                                       **fields})


# --- files --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(FORMATS))
def test_a_taesd_in_either_format_loads_into_autoencoder_tiny(tmp_path: Path, tiny_ae: Any, kind: str) -> None:
    from diffusers import AutoencoderTiny

    path = install(tmp_path, tiny_ae, kind)
    [found] = taesd.find_tiny_decoders(tmp_path)
    assert (found.path, found.group, found.format) == (path, "sd1", kind)
    assert taesd.tiny_decoder_for(tmp_path, "sd15") == found and taesd.tiny_decoder_for(tmp_path, "sd2-v") == found
    assert taesd.tiny_decoder_for(tmp_path, "sdxl") is None and taesd.tiny_decoder_for(tmp_path, "x4-upscaler") is None
    loaded = taesd.load_tiny_autoencoder(found)
    assert isinstance(loaded, AutoencoderTiny)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded.decoder(latents), tiny_ae.decoder(latents))  # every weight where it belongs


def test_taesds_own_layout_is_mapped_onto_the_decoder_layers(tiny_ae: Any) -> None:
    native = taesd_decoder_state(tiny_ae)
    assert "1.weight" in native and "0.weight" not in native  # taesd's layer 0 is its clamp (no weights)
    mapped = taesd.decoder_state_dict(native)
    assert set(mapped) == set(tiny_ae.decoder.state_dict())
    assert torch.equal(mapped["layers.0.weight"], native["1.weight"])
    config = taesd.decoder_config(mapped)
    assert (config["decoder_block_out_channels"], config["num_decoder_blocks"], config["latent_channels"]) == (
        (8, 8, 8, 8), (1, 1, 1, 1), 4)
    # real taesd's shapes (diffusers' AutoencoderTiny defaults) read back the same way
    from diffusers import AutoencoderTiny

    real = taesd.decoder_config(taesd.decoder_state_dict(taesd_decoder_state(AutoencoderTiny())))
    assert (real["decoder_block_out_channels"], real["num_decoder_blocks"]) == ((64, 64, 64, 64), (3, 3, 3, 1))


def test_the_sdxl_decoder_is_told_apart_and_a_wrong_file_is_refused(tmp_path: Path, tiny_ae: Any) -> None:
    from safetensors.torch import save_file

    write_taesd_decoder(tiny_ae, tmp_path / "VAE-approx" / "taesdxl_decoder.safetensors")
    assert taesd.tiny_decoder_for(tmp_path, "sdxl").group == "sdxl"
    assert taesd.tiny_decoder_for(tmp_path, "sd15") is None
    bad = tmp_path / "VAE-approx" / "taesd_decoder.safetensors"
    save_file({"conv_in.weight": torch.zeros(8, 4, 3, 3)}, str(bad))
    with pytest.raises(ModelLoadError, match="not a TAESD decoder"):
        taesd.load_tiny_autoencoder(taesd.tiny_decoder_for(tmp_path, "sd15"))
    assert taesd.TinyDecoders().get(tmp_path, "sd15") is None  # previews and decodes go on without it


# --- previews -----------------------------------------------------------------------------------------------------
def test_previews_come_from_taesd_every_step_but_the_last(tmp_path: Path, tiny_ae: Any,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    install(tmp_path / "models", tiny_ae, "pth")
    drawn: list[tuple[int, ...]] = []
    plain = taesd.preview

    def preview(model: Any, latents: Any, size: Any = None, side: int = taesd.PREVIEW_SIDE) -> Any:
        drawn.append(tuple(latents.shape))
        return plain(model, latents, size, side)

    monkeypatch.setattr(taesd, "preview", preview)
    monkeypatch.setattr("pipelines.progress.TAESD_PREVIEW_BUDGET", 10.0)  # the tiny model's steps are too short
    mgr = make_manager(tmp_path, step_delay_s=0.3)  # steps slower than the previews' minimum interval
    previews: list[Any] = []
    try:
        result = mgr.run(request(steps=4), on_progress=lambda e: previews.append(e.preview)
                         if e.state == "running" else None)
    finally:
        mgr.close()
    assert len(drawn) == 3  # steps 1-3; the last step's picture is the image itself
    assert all(p is not None and p.size == (64, 64) for p in previews)
    assert "VAE" not in parse_infotext(result.infotexts[0])  # previews alone change nothing in the picture


def test_without_taesd_the_cheap_previews_remain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    called: list[int] = []
    monkeypatch.setattr(taesd, "preview", lambda *a, **k: called.append(1))
    mgr = make_manager(tmp_path, step_delay_s=0.3)
    previews: list[Any] = []
    try:
        mgr.run(request(steps=3), on_progress=lambda e: previews.append(e.preview) if e.state == "running" else None)
    finally:
        mgr.close()
    assert not called and previews[0] is not None


def test_a_preview_shrinks_the_latents_first(tiny_ae: Any) -> None:
    image = taesd.preview(tiny_ae, torch.randn(1, 4, 96, 64), (512, 768))
    assert image.size == (170, 256)  # the preview's longest side; a 768 px picture is not decoded at full size


# --- the final decode ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(FORMATS))
def test_fast_decode_uses_taesd_and_says_so(tmp_path: Path, tiny_ae: Any, kind: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    install(tmp_path / "models", tiny_ae, kind)
    latents: list[torch.Tensor] = []
    plain = denoise.vae_decode

    def vae_decode(pipe: Any, lat: torch.Tensor) -> torch.Tensor:
        latents.append(lat.clone())
        return plain(pipe, lat)

    monkeypatch.setattr(denoise, "vae_decode", vae_decode)
    mgr = make_manager(tmp_path)
    try:
        full = mgr.run(request())
        fast = mgr.run(request(fast_decode=True))
    finally:
        mgr.close()
    assert len(latents) == 1  # the fast decode never ran the VAE
    fields = parse_infotext(fast.infotexts[0])
    assert fields["VAE"] == "taesd" and "VAE" not in parse_infotext(full.infotexts[0])
    assert any("Fast decode (TAESD)" in note and "slightly different" in note for note in fast.notes)
    # the picture is TAESD's decode of the very latents the full decode got
    with torch.no_grad():
        expected = (tiny_ae.decoder(latents[0]) / 2 + 0.5).clamp(0, 1)
    expected = (expected[0].permute(1, 2, 0).numpy() * 255).round().astype(np.int16)
    got = np.asarray(fast.images[0], dtype=np.int16)
    assert np.abs(got - expected).max() <= 1
    assert np.abs(got - np.asarray(full.images[0], dtype=np.int16)).mean() > 1  # a different decoder


def test_the_setting_switches_fast_decode_on_and_a_missing_file_is_a_warning(tmp_path: Path) -> None:
    mgr = make_manager(tmp_path, fast_decode=True)
    try:
        without_file = mgr.run(request())
        plain = mgr.run(request(fast_decode=False))
        assert any("no TAESD decoder" in warning for warning in without_file.warnings)
        assert np.array_equal(np.asarray(without_file.images[0]), np.asarray(plain.images[0]))  # the full VAE's
        install(tmp_path / "models", tiny_autoencoder_tiny(seed=5), "safetensors")
        with_file = mgr.run(request())  # installed while running: found by the next job
        assert parse_infotext(with_file.infotexts[0])["VAE"] == "taesd" and not with_file.warnings
        assert "VAE" not in parse_infotext(mgr.run(request(fast_decode=False)).infotexts[0])
    finally:
        mgr.close()


def test_the_api_and_the_settings_tab_carry_fast_decode() -> None:
    from api.convert import override_fields
    from pipelines.settings import Settings
    from ui.settings_tab import EDITABLE, collect_changes

    assert override_fields({"fast_decode": True}) == {"fast_decode": True}
    assert GenerationRequest.create(**override_fields({"fast_decode": True})).fast_decode is True
    assert "fast_decode" in EDITABLE and collect_changes(Settings(), {"fast_decode": True}) == {"fast_decode": True}


def test_the_api_lists_the_new_sampler_and_schedule() -> None:
    from fakes import FakeManager, FakeRegistry
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from api import mount
    from pipelines.settings import Settings

    manager = FakeManager(Settings(), FakeRegistry())
    app = FastAPI()
    mount(app, manager, manager.settings, None)
    try:
        client = TestClient(app)
        samplers = [item["name"] for item in client.get("/sdapi/v1/samplers").json()]
        schedulers = {item["name"]: item["label"] for item in client.get("/sdapi/v1/schedulers").json()}
    finally:
        manager.close()
    assert "TCD" in samplers and "LCM" in samplers
    assert schedulers["sgm_uniform"] == "SGM Uniform" and schedulers["automatic"] == "Automatic"
