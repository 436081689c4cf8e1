"""The checkpoint cache's own rules (pipelines/cache.py), on stand-in checkpoints of two small layers each:
a hit never reloads, the least recently used entry goes first, an entry in use is never evicted, a failed load
leaves the cache as it was, and whoever set an entry up for a device is asked to undo that before the entry moves,
changes VAE or goes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from pipelines.cache import CheckpointCache
from pipelines.devices import DeviceChoice
from pipelines.errors import ModelLoadError

CPU = DeviceChoice(torch.device("cpu"), torch.float32)
FAKE_GPU = DeviceChoice(torch.device("meta"), torch.float32)  # not the CPU: the cache keeps a VRAM tier


@dataclass
class Info:
    name: str
    kind: str = "checkpoint"

    @property
    def path(self) -> Path:
        return Path("/models") / f"{self.name}.safetensors"


@dataclass
class Loaded:
    info: Info
    components: dict[str, Any]
    family: str = "sd15"
    nbytes: int = 0


@dataclass
class Loader:
    loads: list[str] = field(default_factory=list)
    fail: set[str] = field(default_factory=set)

    def __call__(self, info: Info, dtype: Any) -> Loaded:
        if info.name in self.fail:
            raise ModelLoadError(f"{info.name} is cut short.")
        self.loads.append(info.name)
        return Loaded(info, {"unet": torch.nn.Linear(2, 2), "vae": torch.nn.Linear(2, 2)})


@dataclass
class Keeper:
    """Records the entries the cache asks to reset (placement.Placement's part)."""

    resets: list[str] = field(default_factory=list)

    def reset(self, entry: Any) -> None:
        self.resets.append(entry.name)
        entry.applied = None


def make_cache(ram_slots: int = 2, vram_slots: int = 1, choice: DeviceChoice = CPU, **kwargs: Any):
    loader, keeper = Loader(), Keeper()
    vae_loader = kwargs.pop("vae_loader", lambda info, dtype, loaded: torch.nn.Linear(2, 2))
    cache = CheckpointCache(loader, choice, vram_slots, ram_slots, vae_loader=vae_loader, keeper=keeper)
    return cache, loader, keeper


def use(cache: CheckpointCache, name: str, vae: Any = None) -> Any:
    with cache.checkout(Info(name), vae) as entry:
        return entry


def test_a_hit_never_reloads_and_names_are_most_recent_first():
    cache, loader, _ = make_cache()
    a = use(cache, "a")
    use(cache, "b")
    assert use(cache, "a") is a
    assert loader.loads == ["a", "b"] and cache.loads == 2
    assert cache.names() == ["a", "b"]
    assert cache.current().name == "a"


def test_the_least_recently_used_entry_goes_first_and_its_set_up_is_undone():
    cache, loader, keeper = make_cache(ram_slots=2)
    use(cache, "a")
    use(cache, "b")
    use(cache, "a")
    use(cache, "c")  # capacity 2: b is the least recently used
    assert cache.names() == ["c", "a"]
    assert keeper.resets == ["b"]
    use(cache, "b")
    assert loader.loads == ["a", "b", "c", "b"]  # b was really gone


def test_an_entry_in_use_is_never_evicted():
    cache, _loader, keeper = make_cache(ram_slots=1)
    with cache.checkout(Info("a")):
        use(cache, "b")  # over capacity, but a is pinned: b stays too until a is free
        assert set(cache.names()) == {"a", "b"}
        assert "a" not in keeper.resets
    use(cache, "c")
    assert cache.names() == ["c"]


def test_a_failed_load_leaves_the_cache_as_it_was():
    cache, loader, keeper = make_cache(ram_slots=1)
    use(cache, "a")
    loader.fail.add("broken")
    with pytest.raises(ModelLoadError):
        use(cache, "broken")
    assert cache.names() == ["a"] and keeper.resets == [] and cache.loads == 1


def test_resize_evicts_at_once():
    cache, _loader, keeper = make_cache(ram_slots=3)
    for name in "abc":
        use(cache, name)
    cache.resize(ram_slots=1)
    assert cache.names() == ["c"] and keeper.resets == ["a", "b"]


def test_an_external_vae_replaces_the_own_one_and_back_with_the_set_up_undone_each_time():
    made = []

    def vae_loader(info: Any, dtype: Any, loaded: Any) -> torch.nn.Module:
        made.append(info.name)
        return torch.nn.Linear(2, 2)

    cache, _loader, keeper = make_cache(vae_loader=vae_loader)
    own = use(cache, "a").components["vae"]
    entry = use(cache, "a", Info("vae-x", kind="vae"))
    assert entry.components["vae"] is not own and entry.vae_key is not None
    entry.pipelines["txt2img"] = object()  # a pipeline built over the external VAE
    use(cache, "a", Info("vae-x", kind="vae"))  # the same VAE again: nothing to do
    assert keeper.resets == ["a"] and "txt2img" in entry.pipelines
    use(cache, "a")  # back to the checkpoint's own VAE
    assert entry.components["vae"] is own and entry.vae_key is None and entry.pipelines == {}
    assert keeper.resets == ["a", "a"] and made == ["vae-x"]  # the VAE file was read once


def test_with_one_gpu_slot_the_previous_entry_moves_to_ram_before_the_next_one_runs():
    cache, _loader, keeper = make_cache(ram_slots=2, vram_slots=1, choice=FAKE_GPU)
    a = use(cache, "a")
    a.location = "meta"  # placement put a on the (stand-in) GPU for its run
    use(cache, "b")
    assert a.location == "cpu" and keeper.resets == ["a"]
    assert set(cache.names()) == {"a", "b"}  # still cached, in RAM
