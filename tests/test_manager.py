"""The pipeline manager end to end on tiny random-weight models (CPU, 64 px, 2 steps).

What a user would notice: images of the asked size and count, seeds that reproduce, Stop that stops, a queue that
keeps order, metadata in every PNG, models that switch without reloading, fallbacks that say what they did.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from manager_fixtures import FakeRegistry, TinyLoader, make_manager
from PIL import Image

from pipelines import memory
from pipelines.errors import AtelierError, Cancelled, ModelLoadError, ModelNotFound, OutOfMemoryEverywhere, QueueFull
from pipelines.infotext import parse_infotext
from pipelines.outputs import read_parameters
from pipelines.request import GenerationRequest

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def req(**fields) -> GenerationRequest:
    base = dict(prompt="a lighthouse at dusk", negative_prompt="blurry", steps=2, width=64, height=64, seed=1234)
    base.update(fields)
    return GenerationRequest.create(**base)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def loader() -> TinyLoader:
    return TinyLoader()


@pytest.fixture(scope="module")
def manager(tmp_path_factory, loader):
    mgr = make_manager(tmp_path_factory.mktemp("manager"), loader=loader)
    yield mgr
    mgr.close()


@pytest.fixture
def slow(manager):
    """Slow every step down (the test-only hook the UI/API tests use too) for the length of one test."""
    manager.settings.step_delay_s = 0.15
    yield manager
    manager.settings.step_delay_s = 0.0


# --- images, sizes, seeds --------------------------------------------------------------------------------------


def test_txt2img_makes_the_requested_count_and_size_and_saves_each(manager):
    result = manager.run(req(width=64, height=72, batch_count=2, batch_size=2, seed=500))
    assert [im.size for im in result.images] == [(64, 72)] * 4
    assert result.seeds == [500, 501, 502, 503]
    assert result.mode == "cpu"
    for path, seed, text in zip(result.paths, result.seeds, result.infotexts, strict=True):
        assert path.exists() and path.name.endswith(f"-{seed}.png")
        assert path.parent.parent.name == "txt2img"
        assert read_parameters(path) == text
        assert f"Seed: {seed}," in text


def test_same_seed_same_pixels_other_seed_other_pixels(manager):
    first = manager.run(req(seed=77)).images[0]
    again = manager.run(req(seed=77)).images[0]
    other = manager.run(req(seed=78)).images[0]
    assert np.array_equal(pixels(first), pixels(again))
    assert np.abs(pixels(first) - pixels(other)).mean() > 1.0


def test_batch_item_i_uses_seed_plus_i(manager):
    batch = manager.run(req(seed=900, batch_size=2))
    alone = manager.run(req(seed=901))
    assert batch.seeds == [900, 901]
    # Item 1 of the batch is the picture seed 901 gives on its own (CPU noise per item; tiny float differences
    # from batched maths at most).
    assert np.abs(pixels(batch.images[1]) - pixels(alone.images[0])).max() <= 2
    assert np.abs(pixels(batch.images[0]) - pixels(alone.images[0])).mean() > 1.0


def test_random_seed_is_reported_and_reproduces(manager):
    result = manager.run(req(seed=-1))
    seed = result.seeds[0]
    assert 0 <= seed < 2**32
    again = manager.run(req(seed=seed))
    assert np.array_equal(pixels(result.images[0]), pixels(again.images[0]))


def test_img2img_size_count_and_strength_in_metadata(manager):
    init = Image.new("RGB", (80, 48), (220, 40, 40))
    result = manager.run(
        req(
            task="img2img",
            init_image=init,
            width=64,
            height=64,
            batch_size=2,
            denoising_strength=0.5,
            steps=4,
            resize_mode="crop and resize",
        )
    )
    assert [im.size for im in result.images] == [(64, 64)] * 2
    assert all(p.parent.parent.name == "img2img" for p in result.paths)
    fields = parse_infotext(result.infotexts[0])
    assert fields["Denoising strength"] == "0.5"


def test_img2img_strength_too_low_for_the_steps_is_a_field_error(manager):
    with pytest.raises(AtelierError) as info:
        manager.submit(req(task="img2img", init_image=Image.new("RGB", (64, 64)), steps=2, denoising_strength=0.2))
    assert info.value.field == "denoising_strength"


# --- progress and cancel ---------------------------------------------------------------------------------------


def test_progress_events_count_steps_with_eta_and_preview(manager):
    events = []
    manager.run(req(steps=4, batch_count=2), on_progress=events.append)
    running = [e for e in events if e.state == "running"]
    assert [(e.batch_index, e.step) for e in running] == [
        (0, 1),
        (0, 2),
        (0, 3),
        (0, 4),
        (1, 1),
        (1, 2),
        (1, 3),
        (1, 4),
    ]
    assert all(e.total_steps == 4 and e.eta_s is not None for e in running)
    assert any(isinstance(e.preview, Image.Image) for e in running)
    assert events[-1].state == "done" and events[-1].fraction == 1.0


def test_eta_after_the_first_step_leaves_out_the_warm_up(monkeypatch):
    from types import SimpleNamespace

    from pipelines import progress

    events = []
    job = SimpleNamespace(cancel_requested=False, id="j", emit=events.append, latest=SimpleNamespace(preview=None))
    clock = iter([0.0, 30.0, 32.0, 34.0])  # start; a 30 s first step (encode, warm-up, compile); then 2 s a step
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    reporter = progress.StepReporter(job, 0, 2, 10, (64, 64), preview_factors=False)
    for done in (1, 2, 3):
        reporter.on_step(done, 10, None)
    assert events[0].eta_s == 30.0 * (9 + 10)  # one step seen: all of it is the estimate
    assert events[2].eta_s == 2.0 * (7 + 10)  # then the steady per-step time, not (34 s / 3) per step


def test_cancel_after_step_one_stops_within_a_step_and_saves_nothing(slow, tmp_path):
    manager = slow
    before = set(Path(manager.settings.outputs_dir).rglob("*.png"))
    steps_seen = []
    job_box = {}

    def on_progress(event):
        if event.state == "running":
            steps_seen.append(event.step)
            if event.step == 1:
                job_box["job"].cancel()

    started = threading.Event()
    job_box["job"] = manager.submit(req(steps=10), on_progress=lambda e: (started.set(), on_progress(e)))
    with pytest.raises(Cancelled):
        job_box["job"].wait(timeout=60)
    assert max(steps_seen) <= 2
    assert job_box["job"].state == "cancelled"
    assert set(Path(manager.settings.outputs_dir).rglob("*.png")) == before


def test_cancel_in_second_batch_keeps_the_first(slow):
    manager = slow
    job_box = {}

    def on_progress(event):
        if event.state == "running" and event.batch_index == 1:
            job_box["job"].cancel()

    job_box["job"] = manager.submit(req(steps=3, batch_count=3, seed=40), on_progress=on_progress)
    result = job_box["job"].wait(timeout=60)
    assert result.cancelled
    assert result.seeds == [40]
    assert len(result.paths) == 1 and result.paths[0].exists()


def test_cancel_removes_a_waiting_job_and_interrupt_stops_the_running_one(slow):
    manager = slow
    first = manager.submit(req(steps=20))
    second = manager.submit(req(steps=2))
    deadline = time.monotonic() + 30
    while first.state != "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first.position() == 0 and second.position() == 1
    assert manager.queue_length() == 1
    second.cancel()
    assert manager.queue_length() == 0
    with pytest.raises(Cancelled):
        second.wait(timeout=5)
    manager.interrupt()
    with pytest.raises(Cancelled):
        first.wait(timeout=30)


def test_queue_full_is_refused(slow):
    manager = slow
    manager.settings.queue_size = 1
    try:
        running = manager.submit(req(steps=20))
        while running.state == "queued":
            time.sleep(0.02)
        waiting = manager.submit(req(steps=2))
        with pytest.raises(QueueFull):
            manager.submit(req(steps=2))
        waiting.cancel()
        running.cancel()
        with pytest.raises(Cancelled):
            running.wait(timeout=30)
    finally:
        manager.settings.queue_size = 100


def test_jobs_from_two_threads_run_one_after_the_other_in_order(slow):
    manager = slow
    jobs = {}
    first_in = threading.Event()

    def submit(name: str, wait_for: threading.Event | None):
        if wait_for is not None:
            wait_for.wait(10)
        jobs[name] = manager.submit(req(steps=3, seed=len(name)))
        if wait_for is None:
            first_in.set()

    threads = [
        threading.Thread(target=submit, args=("one", None)),
        threading.Thread(target=submit, args=("two", first_in)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    one, two = jobs["one"].wait(60), jobs["two"].wait(60)
    assert one.paths and two.paths
    assert jobs["one"].started <= jobs["one"].finished <= jobs["two"].started


# --- model choice, cache, VAE -------------------------------------------------------------------------------------


def test_unknown_names_are_refused_at_submit_naming_the_field(manager):
    with pytest.raises(ModelNotFound) as info:
        manager.submit(req(checkpoint="no-such-model"))
    assert info.value.field == "checkpoint"
    with pytest.raises(ModelNotFound) as info:
        manager.submit(req(vae="no-such-vae"))
    assert info.value.field == "vae"


def test_switching_between_cached_checkpoints_does_not_reload(manager, loader):
    manager.run(req(checkpoint="tiny-a"))
    manager.run(req(checkpoint="tiny-b"))
    loads = len(loader.loads)
    a = manager.run(req(checkpoint="tiny-a", seed=5)).images[0]
    b = manager.run(
        req(checkpoint="tiny-b [" + manager.registry.short_hash(manager.registry.checkpoints()[1]) + "]", seed=5)
    ).images[0]
    assert len(loader.loads) == loads
    assert np.abs(pixels(a) - pixels(b)).mean() > 1.0  # two different models really ran
    assert set(manager.status().loaded_checkpoints) >= {"tiny-a", "tiny-b"}


def test_txt2img_and_img2img_share_one_set_of_weights(manager):
    manager.run(req(checkpoint="tiny-a"))
    manager.run(req(checkpoint="tiny-a", task="img2img", init_image=Image.new("RGB", (64, 64), "white")))
    entry = manager.cache.get(manager.registry.find_checkpoint("tiny-a").path)
    t2i, i2i = entry.pipelines["txt2img"], entry.pipelines["img2img"]
    assert t2i is not i2i
    for name in ("unet", "vae", "text_encoder"):
        p1 = next(getattr(t2i, name).parameters())
        p2 = next(getattr(i2i, name).parameters())
        assert p1.data_ptr() == p2.data_ptr(), name


def test_a_failed_load_leaves_the_loaded_checkpoint_usable(tmp_path):
    loader = TinyLoader()
    manager = make_manager(tmp_path, loader=loader, registry=FakeRegistry(checkpoints=("tiny-a", "tiny-c")))
    try:
        manager.run(req(checkpoint="tiny-a"))
        loader.fail_next = ModelLoadError("tiny-c is truncated.", field="checkpoint")
        with pytest.raises(ModelLoadError):
            manager.run(req(checkpoint="tiny-c"))
        assert manager.run(req(checkpoint="tiny-a")).images
        assert loader.loads == ["tiny-a"]
        assert manager.status().loaded_checkpoint == "tiny-a"
    finally:
        manager.close()


def test_preload_loads_at_start_and_the_first_image_does_not_load_again(tmp_path):
    loader = TinyLoader()
    manager = make_manager(tmp_path, loader=loader, registry=FakeRegistry(checkpoints=("tiny-a", "tiny-b")))
    try:
        job = manager.preload("tiny-b")
        first = manager.submit(req(checkpoint="tiny-b"))  # sent right after start-up: it queues behind the load
        loaded = job.wait(60)
        assert loaded.images == [] and loaded.checkpoint == "tiny-b" and job.state == "done"
        assert first.wait(60).images
        assert loader.loads == ["tiny-b"]  # loaded once, at start
        assert manager.status().loaded_checkpoint == "tiny-b"
    finally:
        manager.close()


def test_a_request_waiting_for_the_start_up_load_says_so_instead_of_a_queue_position(tmp_path):
    loader = TinyLoader()
    release = threading.Event()
    real = loader.__call__

    def slow_load(info, dtype, vae=None):
        release.wait(30)
        return real(info, dtype, vae)

    manager = make_manager(tmp_path, loader=slow_load, registry=FakeRegistry(checkpoints=("tiny-a",)))
    try:
        manager.preload()
        job = manager.submit(req())
        deadline = time.monotonic() + 10
        while manager.current_job() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert job.position() == 0 and job.state == "queued"
        assert job.progress.state == "loading" and job.progress.message.startswith("Loading tiny-a")
        waiting = manager.submit(req(seed=2))
        assert waiting.position() == 1 and waiting.progress.state == "queued"  # one real job ahead
        release.set()
        assert job.wait(60).images and waiting.wait(60).images and loader.loads == ["tiny-a"]
    finally:
        release.set()
        manager.close()


def test_a_failed_preload_is_logged_and_the_next_request_loads_again(tmp_path, caplog):
    loader = TinyLoader()
    manager = make_manager(tmp_path, loader=loader, registry=FakeRegistry(checkpoints=("tiny-a",)))
    try:
        loader.fail_next = ModelLoadError("tiny-a is truncated.", field="checkpoint")
        job = manager.preload()
        with pytest.raises(ModelLoadError):
            job.wait(60)
        assert "Could not load tiny-a at start" in caplog.text
        assert manager.run(req()).images and loader.loads[-1] == "tiny-a"
    finally:
        manager.close()


def test_preload_without_any_checkpoint_does_nothing(tmp_path):
    manager = make_manager(tmp_path, registry=FakeRegistry(checkpoints=()))
    try:
        assert manager.preload() is None and manager.queue_length() == 0
    finally:
        manager.close()


class HashSoonRegistry(FakeRegistry):
    """Records when the manager asks for a file's hash to be read in the background."""

    def __init__(self, loader):
        super().__init__(checkpoints=("tiny-a",))
        self.events = loader.loads  # the loader appends the names it loads: one timeline for both
        self.asked: list[str] = []

    def hash_soon(self, info):
        self.asked.append(info.name)
        self.events.append(f"hash {info.name}")


def test_a_checkpoint_hash_is_asked_for_before_the_load_and_written_into_the_infotext(tmp_path):
    loader = TinyLoader()
    registry = HashSoonRegistry(loader)
    manager = make_manager(tmp_path, loader=loader, registry=registry)
    try:
        result = manager.run(req())
        assert loader.loads == ["hash tiny-a", "tiny-a"]  # read beside the load, not after the image
        expected = registry.short_hash(registry.checkpoints()[0])
        assert result.checkpoint_hash == expected
        assert f"Model hash: {expected}" in result.infotexts[0]
    finally:
        manager.close()


def test_vae_override_changes_the_decode_and_is_recorded(manager):
    own = manager.run(req(checkpoint="tiny-a", seed=11, vae="Automatic"))
    other = manager.run(req(checkpoint="tiny-a", seed=11, vae="tiny-vae"))
    back = manager.run(req(checkpoint="tiny-a", seed=11, vae="Automatic"))
    assert np.abs(pixels(own.images[0]) - pixels(other.images[0])).mean() > 1.0
    assert np.array_equal(pixels(own.images[0]), pixels(back.images[0]))
    fields = parse_infotext(other.infotexts[0])
    assert fields["VAE"] == "tiny-vae" and len(fields["VAE hash"]) == 10
    assert "VAE" not in parse_infotext(own.infotexts[0])


def test_default_vae_setting_applies_when_the_request_names_none(manager):
    manager.set_default_vae("tiny-vae")
    try:
        text = manager.run(req(checkpoint="tiny-a")).infotexts[0]
        assert parse_infotext(text)["VAE"] == "tiny-vae"
    finally:
        manager.set_default_vae("Automatic")
    with pytest.raises(ModelNotFound):
        manager.set_default_vae("missing")


# --- fault handling ---------------------------------------------------------------------------------------------


def test_nan_from_the_vae_decode_is_redone_in_fp32(manager, monkeypatch):
    manager.run(req(checkpoint="tiny-a"))
    vae = manager.cache.get(manager.registry.find_checkpoint("tiny-a").path).components["vae"]
    real_decode = vae.decode
    calls = []

    def nan_once(latents, *args, **kwargs):
        calls.append(latents.dtype)
        out = real_decode(latents, *args, **kwargs)
        if len(calls) == 1:  # what an fp16 SD VAE does on some latents
            return (torch.full_like(out[0], float("nan")),)
        return out

    monkeypatch.setattr(vae, "decode", nan_once)
    result = manager.run(req(checkpoint="tiny-a", seed=3))
    assert len(calls) == 2
    assert "NaN guard: VAE decoded in fp32" in result.notes
    assert parse_infotext(result.infotexts[0])["NaN guard"] == "VAE decoded in fp32"
    assert pixels(result.images[0]).std() > 0  # not the black image NaN turns into


def test_nan_from_the_unet_is_a_clear_error(manager, monkeypatch):
    manager.run(req(checkpoint="tiny-a"))
    unet = manager.cache.get(manager.registry.find_checkpoint("tiny-a").path).components["unet"]
    real_forward = unet.forward

    def nan_forward(*args, **kwargs):
        out = real_forward(*args, **kwargs)
        return (torch.full_like(out[0], float("nan")),)

    monkeypatch.setattr(unet, "forward", nan_forward)
    with pytest.raises(AtelierError, match="NaN") as info:
        manager.run(req(checkpoint="tiny-a"))
    assert info.value.field == "checkpoint"


def _oom_ladder(fail_on: set[str]):
    """A CPU ladder with GPU rung names: the UNet forward raises OOM while a rung in ``fail_on`` is applied."""
    state = {"applied": []}

    def applier(rung):
        def apply(pipe, choice):
            state["applied"].append(rung)
            unet = pipe.unet
            unet.__dict__.pop("forward", None)
            if rung in fail_on:

                def boom(*args, **kwargs):
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

                unet.forward = boom
            if rung == "sliced":
                memory.apply_sliced(pipe, choice)

        return apply

    rungs = ("full", "sliced")
    return memory.Ladder(rungs, appliers={r: applier(r) for r in rungs}), state


def test_oom_on_the_first_rung_retries_on_the_next_and_says_so(tmp_path):
    manager = make_manager(tmp_path)
    manager.placement.ladder, state = _oom_ladder({"full"})
    manager.settings.memory_mode = "full"
    try:
        result = manager.run(req(seed=8))
        assert result.mode == "sliced"
        assert state["applied"] == ["full", "sliced"]
        assert any("Out of memory in full mode; retried in sliced mode" in n for n in result.notes)
        assert result.images[0].size == (64, 64) and result.paths[0].exists()
        assert manager.status().mode_in_use == "sliced"
        # the same request in plain CPU mode gives the same picture: the retry used fresh, equal generators
        plain = make_manager(tmp_path / "plain")
        try:
            assert np.abs(pixels(plain.run(req(seed=8)).images[0]) - pixels(result.images[0])).max() <= 2
        finally:
            plain.close()
    finally:
        manager.placement.ladder.reset(manager.cache.current().applied[0], "sliced", manager.choice)
        manager.close()


def test_oom_on_every_rung_is_a_clear_error(tmp_path):
    manager = make_manager(tmp_path)
    manager.placement.ladder, _ = _oom_ladder({"full", "sliced"})
    manager.settings.memory_mode = "full"
    try:
        with pytest.raises(OutOfMemoryEverywhere, match="smaller size"):
            manager.run(req())
    finally:
        manager.close()


def test_unwritable_outputs_fail_the_job_with_no_partial_file(manager, monkeypatch):
    import pipelines.outputs as outputs

    def deny(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(outputs, "write_atomic", deny)
    with pytest.raises(AtelierError, match="may not write") as info:
        manager.run(req())
    assert info.value.http_status == 507
    assert not list(Path(manager.settings.outputs_dir).rglob("*.tmp"))


# --- status, settings, tokens ----------------------------------------------------------------------------------


def test_status_reports_the_cpu_setup(manager):
    manager.run(req())
    status = manager.status()
    assert status.device == "cpu" and status.dtype == "fp32"
    assert status.vram_used is None and status.vram_total is None
    assert status.mode_in_use == "cpu" and status.memory_mode == "auto"
    assert status.loaded_checkpoint in ("tiny-a", "tiny-b")
    assert status.queue == 0 and status.demo is False


def test_apply_settings_validates_and_applies(manager):
    with pytest.raises(AtelierError) as info:
        manager.apply_settings({"memory_mode": "turbo"})
    assert info.value.field == "memory_mode"
    changed = manager.apply_settings({"memory_mode": "sliced", "checkpoint": "tiny-b", "ram_slots": 3})
    try:
        assert set(changed) == {"memory_mode", "checkpoint", "ram_slots"}
        assert manager.default_checkpoint().name == "tiny-b"
        assert manager.cache.capacity() == 3
    finally:
        manager.apply_settings({"memory_mode": "auto", "checkpoint": "tiny-a", "ram_slots": 0})


def test_settings_change_while_an_image_runs_and_both_finish(tmp_path):
    manager = make_manager(tmp_path, step_delay_s=0.1, ram_slots=3)
    seen_during_run = []
    try:
        manager.run(req(checkpoint="tiny-a", seed=3, steps=3))
        reference = manager.run(req(checkpoint="tiny-b", seed=3, steps=6)).images[0]
        running = threading.Event()
        job = manager.submit(req(checkpoint="tiny-b", seed=3, steps=6),
                             on_progress=lambda e: running.set() if e.state == "running" else None)
        waiting = manager.submit(req(checkpoint="tiny-a", seed=3, steps=3))
        assert running.wait(30)
        started = time.monotonic()
        changed = manager.apply_settings({"ram_slots": 1, "xformers": True, "memory_mode": "cpu"})
        assert time.monotonic() - started < 0.5  # saved at once: the running image is not waited for
        assert set(changed) == {"ram_slots", "xformers", "memory_mode"}
        seen_during_run.append(manager.cache.capacity())  # the cache is the worker's until the image is done
        assert np.array_equal(pixels(job.wait(60).images[0]), pixels(reference))
        assert waiting.wait(60).images  # the change ran between the two jobs, ahead of the waiting one
        assert manager.cache.capacity() == 1 and manager.cache.names() == ["tiny-a"]
        assert manager.choice.xformers is False  # no CUDA here: asked for, never switched on
    finally:
        manager.close()
    assert seen_during_run == [3]


def test_fast_setting_on_cpu_keeps_the_pixels(manager):
    from pipelines import fast

    plain = manager.run(req(checkpoint="tiny-a", seed=31)).images[0]
    manager.apply_settings({"fast": True})
    try:
        events = []
        first = manager.run(req(checkpoint="tiny-a", seed=31), on_progress=events.append)
        quick = first.images[0]
        again = manager.run(req(checkpoint="tiny-a", seed=31))
        entry = manager.cache.get(manager.registry.find_checkpoint("tiny-a").path)
        assert fast.is_fast(entry.pipelines["txt2img"])
        # An external VAE and back: each switch drops the pipelines; their OpenVINO models go with them, never
        # stacking a second compiled copy on the same UNet.
        manager.run(req(checkpoint="tiny-a", seed=31, vae="tiny-vae"))
        back = manager.run(req(checkpoint="tiny-a", seed=31, vae="Automatic")).images[0]
        runners = entry.pipelines["txt2img"]._atelier_fast["openvino"]
        unet = entry.components["unet"]
        assert getattr(unet, fast._RUNNER_ATTR) is runners[0] and runners[0]._previous is None
        assert np.array_equal(pixels(back), pixels(quick))
    finally:
        manager.apply_settings({"fast": False})
    # On CPU --fast runs the UNet through OpenVINO (fp32): the same picture within fp32 noise (±1 level at most).
    assert int(np.abs(pixels(plain) - pixels(quick)).max()) <= 1
    # The user is told before the slow switch-on, and what it did is in the result (UI info, API info).
    assert any("Preparing the fast path" in e.message for e in events)
    assert any(note.startswith("--fast") for note in first.notes), first.notes
    assert not any(note.startswith("--fast") for note in again.notes)  # said once, not on every image
    manager.run(req(checkpoint="tiny-a"))
    assert not fast.is_fast(entry.pipelines["txt2img"])


def test_count_tokens_for_the_prompt_counter(manager):
    assert manager.count_tokens("") == (0, 75)
    assert manager.count_tokens("a photo of a cat") == (5, 75)
    assert manager.count_tokens("a photo of a cat <lora:style:0.8>") == (5, 75)  # tags are not sent to CLIP
    assert manager.count_tokens(", ".join(["stone"] * 45)) == (89, 150)  # A1111's counter: a second chunk
    assert manager.count_tokens("a cat BREAK a dog") == (77, 150)  # BREAK closes the first chunk at 75


def test_no_checkpoint_installed_says_what_to_do(tmp_path):
    manager = make_manager(tmp_path, registry=FakeRegistry(checkpoints=()))
    with pytest.raises(ModelNotFound, match="--demo") as info:
        manager.submit(req())
    assert info.value.field == "checkpoint"


# --- through the real registry and loaders (tiny model files written by tests/model_fixtures.py) ---------------


def test_real_models_generate_switch_without_rereading_files_and_upscale(tiny_models_dir, tmp_path, monkeypatch):
    import builtins

    import safetensors.torch
    from manager_fixtures import make_settings

    from pipelines import loaders
    from pipelines.manager import PipelineManager
    from pipelines.registry import ModelRegistry

    registry = ModelRegistry(tiny_models_dir, tmp_path / "cache")
    manager = PipelineManager(make_settings(tmp_path), registry)
    manager.upscale_tile, manager.upscale_overlap = 32, 8
    try:
        first = manager.run(req(checkpoint="tiny-sd15", seed=21))
        second = manager.run(req(checkpoint="tiny-sd15-b", seed=21))
        assert np.abs(pixels(first.images[0]) - pixels(second.images[0])).mean() > 1.0

        opened: list[str] = []
        real_open, real_load = builtins.open, safetensors.torch.load_file

        def counting_open(file, *args, **kwargs):
            if str(tiny_models_dir) in str(file):
                opened.append(str(file))
            return real_open(file, *args, **kwargs)

        def counting_load(path, *args, **kwargs):
            opened.append(str(path))
            return real_load(path, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", counting_open)
        monkeypatch.setattr(safetensors.torch, "load_file", counting_load)
        monkeypatch.setattr(loaders, "read_state_dict", lambda path: opened.append(str(path)) or {})
        again = manager.run(req(checkpoint="tiny-sd15", seed=21))
        back = manager.run(req(checkpoint="tiny-sd15-b", seed=21))
        assert opened == []  # both came from the cache: no model file was opened
        assert np.array_equal(pixels(again.images[0]), pixels(first.images[0]))
        assert np.array_equal(pixels(back.images[0]), pixels(second.images[0]))
        monkeypatch.undo()

        fields = parse_infotext(first.infotexts[0])
        assert fields["Model"] == "tiny-sd15"
        assert fields["Model hash"] == registry.short_hash(registry.find_checkpoint("tiny-sd15"))

        with_vae = manager.run(req(checkpoint="tiny-sd15", seed=21, vae="tiny-vae"))
        assert np.abs(pixels(with_vae.images[0]) - pixels(first.images[0])).mean() > 1.0
        assert parse_infotext(with_vae.infotexts[0])["VAE"] == "tiny-vae"

        upscaled = manager.run(GenerationRequest.create(task="upscale", image=Image.new("RGB", (40, 32), "teal"),
                                                        prompt="sharp", steps=2, seed=3))
        assert upscaled.images[0].size == (160, 128)
        assert upscaled.paths[0].parent.parent.name == "upscale"
        assert parse_infotext(upscaled.infotexts[0])["Model"] == "tiny-x4"
        status = manager.status()  # the bar names the checkpoint in use, and the upscaler beside it
        assert (status.loaded_checkpoint, status.loaded_upscaler) == ("tiny-sd15", "tiny-x4")
    finally:
        manager.close()


# --- speed-up switches from Settings ----------------------------------------------------------------------------
def test_settings_speedups_apply_to_requests_that_leave_them_unset(manager):
    from pipelines.speedups import unet_is_pristine

    manager.settings.deep_cache, manager.settings.deep_cache_interval = True, 4
    try:
        by_settings = manager.run(req(seed=31))
        explicit_off = manager.run(req(seed=31, deep_cache=False))
        plain = manager.run(req(seed=31, deep_cache=False, token_merging=0.0))
    finally:
        manager.settings.deep_cache, manager.settings.deep_cache_interval = False, 3
    assert "DeepCache: interval 4" in by_settings.infotexts[0]
    assert "DeepCache" not in explicit_off.infotexts[0]
    np.testing.assert_array_equal(pixels(explicit_off.images[0]), pixels(plain.images[0]))
    entry = manager.cache.get(manager.default_checkpoint().path)
    assert all(unet_is_pristine(p.unet) for p in entry.pipelines.values())


def test_settings_speedup_changes_are_range_checked(manager):
    from pipelines.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as info:
        manager.apply_settings({"deep_cache_interval": 11})
    assert info.value.field == "deep_cache_interval"
    with pytest.raises(InvalidRequest) as info:
        manager.apply_settings({"token_merging": 0.9})
    assert info.value.field == "token_merging"
    assert (manager.settings.deep_cache_interval, manager.settings.token_merging) == (3, 0.0)
    assert manager.apply_settings({"token_merging": 0.25}) == ["token_merging"]
    manager.apply_settings({"token_merging": 0.0})
