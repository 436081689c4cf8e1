"""The memory ladder: which rung auto picks, that measurements outrank estimates, and that switches undo cleanly."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0, SlicedAttnProcessor

from pipelines import memory
from pipelines.devices import DeviceChoice, choose, is_oom, pick_dtype
from pipelines.tiny import tiny_sd15_pipeline

GIB = 2**30
SD15 = memory.Shape(width=512, height=512, batch_size=1, dtype_bytes=2, weights=int(2.0 * GIB),
                    largest_module=int(1.7 * GIB))
GPU_LADDER = memory.Ladder(memory.RUNGS)


def test_cpu_machine_runs_fp32_on_the_cpu_rung_only():
    choice = choose("auto", "auto")
    assert choice.device.type == "cpu" and choice.dtype == torch.float32
    assert pick_dtype(torch.device("cpu"), "fp16") == torch.float32  # fp16 on CPU is never used
    ladder = memory.Ladder.for_device(choice)
    assert tuple(ladder.rungs) == ("cpu",)
    for mode in ("auto", "full", "sliced", "offload", "sequential", "cpu"):
        assert ladder.choose(mode, SD15, None)[0] == "cpu"


def test_peak_estimates_fall_down_the_ladder_and_grow_with_size():
    peaks = [memory.estimate_peak(r, SD15) for r in memory.RUNGS]
    assert peaks == sorted(peaks, reverse=True) and peaks[-1] == 0
    big = memory.Shape(1024, 1024, 2, 2, SD15.weights, SD15.largest_module)
    assert memory.estimate_peak("full", big) > memory.estimate_peak("full", SD15)


BIG = memory.Shape(width=1024, height=1024, batch_size=2, dtype_bytes=2, weights=SD15.weights,
                   largest_module=SD15.largest_module)


@pytest.mark.parametrize("shape, free_gib, expected", [
    (SD15, 24, "full"),
    # 512x512, batch 1: VAE slicing/tiling change nothing at this size and attention slicing little, so auto goes
    # straight to offload instead of paying slicing's speed cost for no saving.
    (SD15, 2.8, "offload"),
    (SD15, 2.0, "sequential"),
    (SD15, 0.5, "cpu"),
    (BIG, 24, "full"),
    (BIG, 4.0, "sliced"),  # 1024x1024 x2: tiled, sliced VAE decode is where slicing pays
])
def test_auto_takes_the_fastest_rung_that_fits(shape, free_gib, expected):
    rung, reason = GPU_LADDER.choose("auto", shape, int(free_gib * GIB))
    assert rung == expected, (rung, [memory.estimate_peak(r, shape) / GIB for r in memory.RUNGS])
    assert reason.startswith("auto")


def test_medvram_and_lowvram_set_the_start_rung():
    assert GPU_LADDER.choose("offload", SD15, 80 * GIB)[0] == "offload"  # --medvram
    assert GPU_LADDER.choose("sequential", SD15, 80 * GIB)[0] == "sequential"  # --lowvram


def test_measured_peaks_outrank_estimates():
    ladder = memory.Ladder(memory.RUNGS)
    free = int(4.0 * GIB)
    assert ladder.choose("auto", BIG, free)[0] == "sliced"
    # Measured: slicing saved almost nothing on this card, so auto must not pay its speed cost for it.
    ladder.record("full", BIG, int(4.2 * GIB))
    ladder.record("sliced", BIG, int(4.1 * GIB))
    assert ladder.choose("auto", BIG, free)[0] == "sequential"
    ladder.record("full", BIG, int(3.5 * GIB))
    assert ladder.choose("auto", BIG, free)[0] == "full"


def test_below_steps_one_rung_down():
    assert GPU_LADDER.below("full") == "sliced"
    assert GPU_LADDER.below("sequential") == "cpu"
    assert GPU_LADDER.below("cpu") is None


def test_oom_detection():
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_oom(RuntimeError("MPS backend out of memory"))
    assert not is_oom(RuntimeError("shape mismatch"))


def _processors(pipe):
    return {type(p) for p in pipe.unet.attn_processors.values()}


def test_sliced_rung_uses_diffusers_switches_and_undoes_them():
    pipe = tiny_sd15_pipeline()
    cpu = DeviceChoice(torch.device("cpu"), torch.float32)
    assert _processors(pipe) == {AttnProcessor2_0}
    memory.apply_sliced(pipe, cpu)
    assert _processors(pipe) == {SlicedAttnProcessor}
    assert pipe.vae.use_slicing and pipe.vae.use_tiling
    rebuild = memory.reset(pipe, "sliced", cpu)
    assert not rebuild
    assert _processors(pipe) == {AttnProcessor2_0}
    assert not pipe.vae.use_slicing and not pipe.vae.use_tiling
    assert memory.reset(pipe, "sequential", cpu) is True  # after sequential offload the pipeline is rebuilt


def test_cache_tiers_move_least_recently_used_to_ram_then_drop_it(monkeypatch):
    """The GPU bookkeeping on a CPU machine: moves are recorded instead of done."""
    from manager_fixtures import FakeRegistry, TinyLoader

    from pipelines.cache import CacheEntry, CheckpointCache

    moves = []

    def fake_move(self, device):
        moves.append((self.name, str(device)))
        self.location = str(device)

    monkeypatch.setattr(CacheEntry, "move", fake_move)
    monkeypatch.setattr("pipelines.devices.free_memory", lambda device: None)
    loader = TinyLoader()
    registry = FakeRegistry(checkpoints=("tiny-a", "tiny-b", "tiny-c"))
    a, b, c = registry.checkpoints()
    cache = CheckpointCache(loader, DeviceChoice(torch.device("cuda"), torch.float32), vram_slots=1, ram_slots=1)
    with cache.checkout(a) as entry_a:
        entry_a.location = "cuda"  # what the memory ladder's "full" rung does
    with cache.checkout(b) as entry_b:
        entry_b.location = "cuda"
        assert moves == [("tiny-a", "cpu")]  # a leaves the one VRAM slot for RAM
    with cache.checkout(a) as again:
        assert again is entry_a and loader.loads == ["tiny-a", "tiny-b"]  # from RAM: no reload
        again.location = "cuda"
    with cache.checkout(c), cache.checkout(a):
        # capacity is 2 (1 VRAM + 1 RAM): b, the least recently used and not pinned, is dropped
        assert cache.names() == ["tiny-a", "tiny-c"]
    assert loader.loads == ["tiny-a", "tiny-b", "tiny-c"]


def test_return_freed_memory_gives_freed_cpu_blocks_back_to_the_os(monkeypatch):
    import sys

    from pipelines import memory

    if not sys.platform.startswith("linux") or memory._malloc_trim() is None:
        pytest.skip("malloc_trim is glibc's")

    def rss_mib() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    blocks = [bytearray(64 * 1024) for _ in range(3000)]  # below glibc's mmap threshold: kept in the heap
    keep = blocks[-1]  # pins the top of the heap, so only a trim (not the heap shrinking) can give pages back
    del blocks
    before = rss_mib()
    assert memory.return_freed_memory() is True
    assert before - rss_mib() > 100, (before, rss_mib())
    del keep
    monkeypatch.setattr(memory, "_malloc_trim", lambda: None)  # macOS, Windows, musl
    assert memory.return_freed_memory() is False
