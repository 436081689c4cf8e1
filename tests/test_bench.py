"""The benchmark script, the opt-in speed-ups (DeepCache, token merging) and the ``--fast`` switch, on tiny models.

What a user would notice: the bench prints a table they can read; a speed-up changes the picture only a little,
says so in the infotext notes, and once switched off leaves the very same pixels as before it was ever used.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipelines import fast, speedups
from pipelines.tiny import tiny_sd15_pipeline

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH = REPO_ROOT / "bench" / "run.py"
RESULT_KEYS = {
    "kind", "family", "size", "mode", "steps", "s_per_it", "image_s", "cpu_s", "first_image_s", "load_s",
    "peak_rss_gib", "ratio_image", "ratio_cpu", "ratio_first", "ratio_rss", "max_pixel_diff", "psnr_db", "pixels_vs",
    "notes", "error",
}
STEPS = 6


# --- the bench script -----------------------------------------------------------------------------------------
def assert_ratio(ratio: float, value: float, base: float) -> None:
    """``ratio`` (3 decimals) is ``value / base`` as the bench measured them, before it rounded each to 3 decimals
    (tiny-model times are a few hundredths of a second, so the rounding alone moves the quotient by a few %)."""
    half = 5e-4
    low, high = (value - half) / (base + half), (value + half) / (base - half)
    assert low - half <= ratio <= high + half, (ratio, value, base)


@pytest.fixture(scope="module")
def bench_lines(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    work = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--tiny", "--threads", "1", "--work-dir", str(work), "--out",
         str(work / "out.jsonl"), "--modes",
         "diffusers,default,fast,deep_cache,token_merging,deep_cache@5+token_merging@0.25,deep_cache+token_merging"],
        capture_output=True, text=True, timeout=600, env=env, cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert (work / "out.jsonl").read_text().splitlines() == proc.stdout.splitlines()
    return lines


def test_bench_tiny_prints_one_json_line_per_mode(bench_lines: list[dict]) -> None:
    env, results = bench_lines[0], bench_lines[1:]
    assert env["kind"] == "env" and env["tiny"] is True and env["sizes"] == [64]
    modes = [r["mode"] for r in results]
    assert modes == ["diffusers", "default", "fast", "deep_cache", "token_merging", "deep_cache@5+token_merging@0.25",
                     "deep_cache+token_merging"]
    for record in results:
        assert set(record) >= RESULT_KEYS, record
        assert record["error"] is None, record
        assert record["image_s"] > 0 and record["s_per_it"] > 0 and record["peak_rss_gib"] > 0
        assert record["cpu_s"] > 0
        assert_ratio(record["ratio_image"], record["image_s"], results[0]["image_s"])
    assert results[0]["first_image_s"] > results[0]["load_s"] > 0


def test_bench_default_mode_gives_plain_diffusers_pixels(bench_lines: list[dict]) -> None:
    by_mode = {r["mode"]: r for r in bench_lines[1:]}
    assert by_mode["default"]["pixels_vs"] == "diffusers"
    assert by_mode["default"]["max_pixel_diff"] == 0  # same file, scheduler and seed: the same image
    assert by_mode["fast"]["max_pixel_diff"] <= 1  # exact options only (fp32 noise at most)
    assert by_mode["deep_cache"]["notes"] == ["DeepCache: interval 3"]
    assert by_mode["token_merging"]["notes"] == ["Token merging ratio: 0.5"]
    assert by_mode["deep_cache@5+token_merging@0.25"]["notes"] == ["DeepCache: interval 5", "Token merging ratio: 0.25"]


def test_bench_through_the_api_times_plain_diffusers_beside_each_mode(tmp_path: Path) -> None:
    """``--via api --interleave``: each Atelier mode's ratios are to a plain-diffusers image timed right after it."""
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--tiny", "--threads", "1", "--via", "api", "--interleave", "--modes",
         "diffusers,default", "--work-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"), cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain, default = [json.loads(line) for line in proc.stdout.splitlines()[1:]]
    assert plain["base"] == "diffusers mode" and default["base"] == "adjacent diffusers image"
    assert default["error"] is None and default["max_pixel_diff"] == 0  # same pixels through the API
    assert_ratio(default["ratio_image"], default["image_s"], default["base_image_s"])
    assert "diffusers again, beside default" in proc.stderr
    # Both first images count a process start: Atelier's server, and a script importing torch and diffusers.
    assert plain["first_image_s"] > plain["start_s"] + plain["load_s"] and plain["start_s"] > 0.5
    assert default["first_image_s"] > default["start_s"] > 0.5 and default["load_s"] is None
    assert (tmp_path / "cache" / "model_cache.json").exists()  # the server used the bench's cache (--cache-dir)


def test_bench_rejects_unknown_mode() -> None:
    proc = subprocess.run([sys.executable, str(BENCH), "--tiny", "--modes", "turbo"], capture_output=True,
                          text=True, timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 2 and "unknown mode(s) turbo" in proc.stderr


def run_bench(work: Path, *args: str) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--tiny", "--threads", "1", "--work-dir", str(work), *args],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"), cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def test_bench_few_step_lines_lcm_lora_and_taesd(tmp_path: Path) -> None:
    """Issue 28's lines: LCM, 4 steps (2 here), CFG 1 beside plain diffusers' LCMScheduler; the LoRA on both sides;
    TAESD's final decode, with and without --fast."""
    lines = run_bench(tmp_path, "--sampler", "LCM", "--cfg", "1", "--steps", "2", "--modes",
                      "diffusers,diffusers+lora,default,lora,taesd,fast+taesd,fast+lora")
    env, results = lines[0], {r["mode"]: r for r in lines[1:]}
    assert (env["sampler"], env["schedule"], env["cfg"]) == ("LCM", "Automatic", 1.0)
    assert list(results) == ["diffusers", "diffusers+lora", "default", "lora", "taesd", "fast+taesd", "fast+lora"]
    assert all(r["error"] is None for r in results.values()), results
    assert results["default"]["max_pixel_diff"] == 0  # plain diffusers' LCM picture, exactly
    assert results["diffusers+lora"]["max_pixel_diff"] > 0  # the LoRA changes the picture ...
    for mode in ("lora", "fast+lora"):  # ... and Atelier's LoRA picture is plain diffusers' LoRA picture
        assert results[mode]["pixels_vs"] == "diffusers+lora" and results[mode]["max_pixel_diff"] == 0
        assert_ratio(results[mode]["ratio_image"], results[mode]["image_s"], results["diffusers+lora"]["image_s"])
    for mode in ("taesd", "fast+taesd"):
        assert any("Fast decode (TAESD)" in note for note in results[mode]["notes"])
        assert results[mode]["psnr_db"] is not None and results[mode]["ratio_vs_default"] is not None
    assert not any("TAESD" in note for note in results["default"]["notes"] + results["lora"]["notes"])
    assert any("OpenVINO" in note for note in results["fast+taesd"]["notes"])
    assert not (tmp_path / "models" / "VAE-approx" / "taesd_decoder.safetensors").exists()  # installed only for them


def test_bench_turbo_line_runs_one_trailing_step(tmp_path: Path) -> None:
    lines = run_bench(tmp_path, "--sampler", "Euler a", "--schedule", "SGM Uniform", "--cfg", "1", "--steps", "1",
                      "--modes", "diffusers,default")
    plain, default = lines[1:]
    assert lines[0]["schedule"] == "SGM Uniform" and default["error"] is None
    assert default["max_pixel_diff"] == 0  # trailing timesteps on both sides: the same picture


def test_bench_refuses_a_sampler_without_a_plain_twin() -> None:
    proc = subprocess.run([sys.executable, str(BENCH), "--tiny", "--sampler", "DPM2"], capture_output=True,
                          text=True, timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 2 and "--sampler must be one of" in proc.stderr


# --- speed-ups on a tiny pipeline -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe():
    from diffusers import EulerDiscreteScheduler

    p = tiny_sd15_pipeline()
    p.scheduler = EulerDiscreteScheduler.from_config(p.scheduler.config)
    p.set_progress_bar_config(disable=True)
    return p


def generate(pipe, seed: int = 7) -> np.ndarray:
    out = pipe("a red apple on a table", negative_prompt="blurry", num_inference_steps=STEPS, guidance_scale=7.0,
               height=64, width=64, generator=torch.Generator("cpu").manual_seed(seed), output_type="np")
    return out.images[0]


def request(deep_cache: bool = False, token_merging: float = 0.0) -> SimpleNamespace:
    return SimpleNamespace(deep_cache=deep_cache, token_merging=token_merging)


@pytest.fixture(scope="module")
def default_image(pipe) -> np.ndarray:
    return generate(pipe)


@pytest.mark.parametrize("deep_cache,ratio,notes", [
    (True, 0.0, ["DeepCache: interval 3"]),
    (False, 0.5, ["Token merging ratio: 0.5"]),
    (True, 0.5, ["DeepCache: interval 3", "Token merging ratio: 0.5"]),
])
def test_speedup_changes_the_image_a_little_and_is_removed_cleanly(pipe, default_image, deep_cache, ratio, notes):
    processors = dict(pipe.unet.attn_processors)
    with speedups.applied_speedups(pipe, request(deep_cache, ratio)) as applied:
        assert not speedups.unet_is_pristine(pipe.unet)
        image = generate(pipe)
    assert [str(note) for note in applied] == notes
    assert all(note.infotext_key for note in applied)  # written into the image's parameters
    diff = np.abs(image - default_image)
    assert 0 < diff.max() < 0.25, diff.max()  # changed, but the same picture (values in 0..1)
    assert diff.mean() < 0.02
    # Removed: same processors, no instance forward, no hooks, and the default pixels exactly.
    assert speedups.unet_is_pristine(pipe.unet)
    assert "forward" not in pipe.unet.__dict__
    assert dict(pipe.unet.attn_processors) == processors
    assert not pipe.unet._forward_pre_hooks
    assert not pipe.unet.up_blocks[-1].resnets[-1]._forward_pre_hooks
    np.testing.assert_array_equal(generate(pipe), default_image)


def test_default_request_leaves_the_unet_alone(pipe, default_image):
    forward_before = pipe.unet.forward
    with speedups.applied_speedups(pipe, request()) as notes:
        assert notes == []
        assert pipe.unet.forward == forward_before and "forward" not in pipe.unet.__dict__
        np.testing.assert_array_equal(generate(pipe), default_image)


def test_speedups_are_removed_after_an_error(pipe, default_image):
    with pytest.raises(RuntimeError, match="boom"), speedups.applied_speedups(pipe, request(True, 0.5)):
        raise RuntimeError("boom")
    assert speedups.unet_is_pristine(pipe.unet)
    np.testing.assert_array_equal(generate(pipe), default_image)


def test_deep_cache_runs_the_deep_unet_every_third_step(pipe):
    with speedups.DeepCache(pipe.unet, interval=3) as cache:
        generate(pipe)
    assert (cache.full_calls, cache.cached_calls) == (2, 4)  # steps 0 and 3 in full; 1, 2, 4, 5 cached


def test_the_requested_deep_cache_interval_is_used_and_written_down(pipe, monkeypatch):
    made = []

    class Recording(speedups.DeepCache):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(speedups, "DeepCache", Recording)
    asked = SimpleNamespace(deep_cache=True, deep_cache_interval=6, token_merging=None)
    with speedups.applied_speedups(pipe, asked) as notes:
        generate(pipe)
    assert [str(note) for note in notes] == ["DeepCache: interval 6"]
    assert (made[0].full_calls, made[0].cached_calls) == (1, STEPS - 1)  # interval 3 would give 2 full calls
    assert speedups.unet_is_pristine(pipe.unet)


def test_deep_cache_starts_afresh_for_each_image(pipe):
    """Batch count > 1 with one seed: the second image must not reuse the first one's last features."""
    with speedups.DeepCache(pipe.unet) as cache:
        first = generate(pipe)
        second = generate(pipe)
    np.testing.assert_array_equal(first, second)
    assert cache.full_calls == 4


def test_deep_cache_shallow_path_matches_the_full_unet_on_the_same_input(pipe):
    """The cut-down forward is the UNet's own: with the deep features of the same call, the output is the same."""
    unet = pipe.unet
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 77, 32, generator=generator)
    timestep = torch.tensor(500)
    with torch.no_grad():
        expected = unet(sample, timestep, context).sample
    for depth in (1, 2, 3):
        cache = speedups.DeepCache(unet, interval=100, depth=depth).apply()
        try:
            with torch.no_grad():
                full = unet(sample, timestep, context).sample
                shallow = cache._shallow_forward(sample, timestep, context).sample
        finally:
            cache.remove()
        torch.testing.assert_close(full, expected, rtol=0, atol=0)
        torch.testing.assert_close(shallow, expected, rtol=1e-5, atol=1e-5)


def test_deep_cache_rejects_bad_settings(pipe):
    with pytest.raises(ValueError, match="interval"):
        speedups.DeepCache(pipe.unet, interval=0)
    with pytest.raises(ValueError, match="depth"):
        speedups.DeepCache(pipe.unet, depth=9)


def test_unsupported_model_runs_without_the_speedups_and_says_so():
    fake = SimpleNamespace(unet=torch.nn.Linear(2, 2))
    with speedups.applied_speedups(fake, request(True, 0.5)) as notes:
        assert "forward" not in fake.unet.__dict__
    assert [str(note) for note in notes] == [
        "DeepCache: off (not supported by this model)", "Token merging: off (not supported by this model)"]


def test_token_merging_merges_the_requested_share_and_unmerges_to_full_size():
    tokens = torch.randn(2, 16 * 16, 8, generator=torch.Generator().manual_seed(0))
    merge, unmerge = speedups.bipartite_merge_2d(tokens, 16, 16, r=128, generator=torch.Generator().manual_seed(1))
    merged = merge(tokens)
    assert merged.shape == (2, 128, 8)
    restored = unmerge(merged)
    assert restored.shape == tokens.shape
    # The 256 - 128 merged - 64 destination tokens that were left alone come back unchanged.
    exact = (restored == tokens).all(dim=-1).float().mean()
    assert float(exact) >= (256 - 128 - 64) / 256


def test_token_merging_of_identical_tokens_is_lossless():
    tokens = torch.ones(2, 64, 4) * torch.arange(4.0)
    merge, unmerge = speedups.bipartite_merge_2d(tokens, 8, 8, r=32, generator=None)
    torch.testing.assert_close(unmerge(merge(tokens)), tokens)


def test_token_merging_is_reproducible(pipe):
    with speedups.applied_speedups(pipe, request(False, 0.5)):
        first = generate(pipe)
    with speedups.applied_speedups(pipe, request(False, 0.5)):
        second = generate(pipe)
    np.testing.assert_array_equal(first, second)


# --- --fast -----------------------------------------------------------------------------------------------------
def test_fast_on_cpu_keeps_the_pixels_and_says_what_it_did(pipe, default_image):
    try:
        notes = fast.enable_fast(pipe, "cpu")
        assert fast.is_fast(pipe)
        assert any("--fast on CPU" in n for n in notes)
        assert fast.enable_fast(pipe, "cpu") == notes  # idempotent
        np.testing.assert_allclose(generate(pipe), default_image, atol=1e-4)
    finally:
        fast.disable_fast(pipe)
    assert not fast.is_fast(pipe)


@pytest.mark.parametrize("device,words", [("cpu", "needs an NVIDIA GPU"), ("mps", "needs an NVIDIA GPU")])
def test_fast_cuda_path_explains_why_it_cannot_run(device, words):
    assert words in fast.cuda_fast_path_blocker(torch.device(device))


def test_fast_on_mps_falls_back_with_a_message():
    dummy = SimpleNamespace()
    notes = fast.enable_fast(dummy, "mps")
    assert notes and "default mode" in notes[0]
    fast.disable_fast(dummy)
