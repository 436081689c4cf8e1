"""The engine hooks the A1111 clients drive (issue 27), on tiny random-weight models: Skip ends the batch being drawn
and the job goes on; unloading gives the models' memory back and the next job loads again; the full sha256 of a
model file is known once read and finds the file; refreshing the models folder never changes the current
checkpoint; old sampler names carry their schedule; the memory figures have A1111's shape.
"""

from __future__ import annotations

import gc
import hashlib
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from manager_fixtures import TinyLoader, make_manager
from safetensors.torch import save_file

from pipelines import devices
from pipelines import registry as registry_module
from pipelines.catalog import ModelCatalog
from pipelines.errors import Cancelled
from pipelines.registry import KEY_CROSS_ATTENTION, KEY_INPUT, ModelRegistry
from pipelines.request import GenerationRequest
from pipelines.samplers import resolve_sampler
from pipelines.settings import Settings

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def req(**fields) -> GenerationRequest:
    base = dict(prompt="a lighthouse", steps=4, width=64, height=64, seed=1000)
    base.update(fields)
    return GenerationRequest.create(**base)


@pytest.fixture
def loader() -> TinyLoader:
    return TinyLoader()


@pytest.fixture
def manager(tmp_path, loader):
    mgr = make_manager(tmp_path, loader=loader)
    mgr.start()
    yield mgr
    mgr.close()


def wait_until(condition, timeout: float = 60.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen in {timeout:.0f} s")
        time.sleep(0.01)


def saved_files(manager) -> list[Path]:
    return sorted(Path(manager.settings.outputs_dir).rglob("*.png"))


# --- Skip --------------------------------------------------------------------------------------------------------
def test_skip_ends_the_batch_being_drawn_and_the_job_goes_on_with_the_next(manager) -> None:
    manager.settings.step_delay_s = 0.1
    job = manager.submit(req(batch_count=3))
    wait_until(lambda: job.progress.batch_index == 1 and job.progress.step >= 1, what="the second batch")
    manager.skip()
    result = job.wait(120)
    assert result.seeds == [1000, 1002]  # the middle batch (seed 1001) is the one skipped
    assert len(result.images) == 2 and len(saved_files(manager)) == 2
    assert not result.cancelled and "Skipped batch 2 of 3." in result.notes


def test_skipping_the_only_batch_ends_the_job_like_a_stop_with_nothing_saved(manager) -> None:
    manager.settings.step_delay_s = 0.1
    job = manager.submit(req(steps=6))
    wait_until(lambda: job.progress.step >= 1, what="the first step")
    manager.skip()
    with pytest.raises(Cancelled, match="Skipped"):
        job.wait(60)
    assert saved_files(manager) == []
    manager.settings.step_delay_s = 0.0
    assert len(manager.run(req(steps=2)).images) == 1  # a skip does not stick to the next job


def test_skip_in_the_hires_pass_drops_that_picture_instead_of_keeping_its_first_pass(manager) -> None:
    # A Stop in the hires pass keeps the first pass's picture; a Skip must not: the batch is skipped.
    manager.settings.step_delay_s = 0.1
    job = manager.submit(req(steps=2, batch_count=2, enable_hr=True, hr_scale=2.0, hr_upscaler="Latent",
                             hr_second_pass_steps=4, denoising_strength=0.5))
    wait_until(lambda: job.progress.phase == "hires pass" and job.progress.batch_index == 0, what="the hires pass")
    manager.skip()
    result = job.wait(120)
    assert result.seeds == [1001] and [image.size for image in result.images] == [(128, 128)]
    assert not result.cancelled


# --- unload / reload ---------------------------------------------------------------------------------------------
def test_unload_gives_the_checkpoint_back_and_the_next_job_loads_it_again(manager, loader) -> None:
    first = manager.run(req(steps=2))
    assert manager.status().loaded_checkpoint == "tiny-a" and loader.loads == ["tiny-a"]
    unet = weakref.ref(manager.cache.current("checkpoint").components["unet"])
    manager.unload_checkpoint()
    gc.collect()
    assert manager.cache.names() == [] and manager.status().loaded_checkpoint is None
    assert unet() is None  # nothing holds the UNet any more: its memory is free
    again = manager.run(req(steps=2))
    assert loader.loads == ["tiny-a", "tiny-a"]  # loaded again from the file
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(first.images[0]))


def test_unload_waits_for_the_running_job_and_the_job_keeps_its_images(manager) -> None:
    manager.settings.step_delay_s = 0.1
    job = manager.submit(req(batch_count=2))
    wait_until(lambda: job.progress.step >= 1, what="the first step")
    unloaded = threading.Event()
    threading.Thread(target=lambda: (manager.unload_checkpoint(), unloaded.set()), daemon=True).start()
    result = job.wait(120)
    assert unloaded.wait(30)
    assert len(result.images) == 2 and manager.cache.names() == []


def test_reload_loads_the_current_checkpoint_and_the_next_job_finds_it_loaded(manager, loader) -> None:
    manager.set_default_checkpoint("tiny-b")
    manager.reload_checkpoint()
    assert manager.cache.names() == ["tiny-b"] and loader.loads == ["tiny-b"]
    manager.reload_checkpoint()  # still loaded: nothing is read again
    manager.run(req(steps=2))
    assert loader.loads == ["tiny-b"]


# --- hashes and the current checkpoint ------------------------------------------------------------------------------
def checkpoint_file(path: Path, fill: float = 0.0) -> Path:
    """A small safetensors whose keys say "SD 1.x checkpoint" (the registry reads only names and shapes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({KEY_INPUT: torch.full((8, 4, 1, 1), fill), KEY_CROSS_ATTENTION: torch.zeros(8, 768)}, str(path))
    return path


def test_the_full_sha256_is_known_once_read_and_finds_the_checkpoint(tmp_path, monkeypatch) -> None:
    models = tmp_path / "models" / "checkpoints"
    first = checkpoint_file(models / "m-first.safetensors", 1.0)
    second = checkpoint_file(models / "m-second.safetensors", 2.0)
    registry = ModelRegistry(tmp_path / "models", tmp_path / "cache")
    infos = {info.name: info for info in registry.checkpoints()}
    assert registry.sha256(infos["m-first"]) is None  # never read yet: not known, and not read for the asking
    read_on: list[str] = []
    real_sha = registry_module.sha256_file
    monkeypatch.setattr(registry_module, "sha256_file",
                        lambda path: read_on.append(threading.current_thread().name) or real_sha(path))
    registry.hash_all_soon()
    wait_until(lambda: all(registry.sha256(info) for info in infos.values()), what="the background hashing")
    assert read_on == ["atelier-hash-all", "atelier-hash-all"]  # one thread, one file after the other
    digest = hashlib.sha256(first.read_bytes()).hexdigest()
    assert registry.sha256(infos["m-first"]) == digest
    assert registry.sha256(infos["m-second"]) == hashlib.sha256(second.read_bytes()).hexdigest()
    for name in (digest[:10], digest, digest.upper(), f"renamed-since [{digest[:10]}]"):
        assert registry.find_checkpoint(name).name == "m-first", name


def test_refreshing_never_makes_a_new_file_the_current_checkpoint(tmp_path) -> None:
    models = tmp_path / "models" / "checkpoints"
    kept = checkpoint_file(models / "m-kept.safetensors")
    registry = ModelRegistry(tmp_path / "models", tmp_path / "cache")
    settings = Settings(models_dir=tmp_path / "models")
    catalog = ModelCatalog(registry, settings)
    assert catalog.default_checkpoint().name == "m-kept"
    checkpoint_file(models / "a-new.safetensors")  # sorts first
    registry.refresh()
    assert [info.name for info in registry.checkpoints()][0] == "a-new"
    assert catalog.default_checkpoint().name == "m-kept"
    kept.unlink()  # gone: the default falls back to what is there
    registry.refresh()
    assert catalog.default_checkpoint().name == "a-new"
    checkpoint_file(models / "0-newer.safetensors")
    registry.refresh()
    assert catalog.default_checkpoint().name == "a-new"
    catalog.set_default_checkpoint("0-newer")  # chosen: it is the current one
    assert catalog.default_checkpoint().name == "0-newer"


# --- sampler names, memory figures ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "expected"), [
    ("DPM++ SDE Karras", ("DPM++ SDE Karras", "Automatic")),
    ("DPM++ 2M Karras", ("DPM++ 2M Karras", "Automatic")),
    ("Euler a", ("Euler a", "Automatic")),
    ("euler A", ("Euler a", "Automatic")),
    ("DPM2 a Karras", ("DPM2 a", "Karras")),
    ("LMS Karras", ("LMS", "Karras")),
    ("DPM++ 2M SDE Exponential", ("DPM++ 2M SDE", "Exponential")),
])
def test_old_sampler_names_carry_their_schedule(name: str, expected: tuple[str, str]) -> None:
    assert resolve_sampler(name) == expected
    assert resolve_sampler(name, "automatic") == expected


def test_an_unknown_sampler_with_a_schedule_word_is_still_an_error() -> None:
    from pipelines.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="Unknown sampler 'Warp Karras'"):
        resolve_sampler("Warp Karras")


def test_memory_figures_have_a1111s_shape_on_a_cpu() -> None:
    report = devices.memory_report(torch.device("cpu"))
    ram = report["ram"]
    assert set(ram) == {"free", "used", "total"} and 0 < ram["used"] < ram["total"]
    assert ram["free"] == ram["total"] - ram["used"]
    assert report["cuda"] == {"error": "unavailable"}


def test_refresh_checkpoints_over_the_api_keeps_the_current_checkpoint(tmp_path) -> None:
    from fakes import FakeManager
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from api import mount

    models = tmp_path / "models" / "checkpoints"
    checkpoint_file(models / "m-kept.safetensors")
    registry = ModelRegistry(tmp_path / "models", tmp_path / "cache")
    manager = FakeManager(Settings(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs"), registry)
    app = FastAPI()
    mount(app, manager, manager.settings)
    client = TestClient(app)
    try:
        current = client.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
        assert current.startswith("m-kept [")
        checkpoint_file(models / "a-new.safetensors")
        assert client.post("/sdapi/v1/refresh-checkpoints").json() is None
        assert [m["model_name"] for m in client.get("/sdapi/v1/sd-models").json()] == ["a-new", "m-kept"]
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == current
        body = {"prompt": "x", "steps": 2, "width": 64, "height": 64}
        info = client.post("/sdapi/v1/txt2img", json=body).json()["info"]
        assert '"sd_model_name": "m-kept"' in info
    finally:
        manager.close()
