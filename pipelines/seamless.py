"""Seamless tiling (A1111's ``tiling``): the UNet's and the VAE's convolutions pad circularly for one run, so the
picture wraps around at its edges and tiles without a seam.

A1111 flips ``padding_mode`` on every ``Conv2d`` of the model (``sd_hijack.apply_circular``) and leaves it there until
the next request says otherwise. Here it is one run's: ``circular_padding`` switches exactly the layers that were
not circular already and puts each back as it was when the run ends, by an error or a Stop too, so a request without
``tiling`` never draws with a wrapped model. A LoRA's layers (peft wraps a ``Conv2d`` and adds ``Conv2d``s) are
switched with the rest. Compiled or converted copies (``--fast``) would not see the switch: the manager runs tiling
requests without them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

TILED_COMPONENTS = ("unet", "vae")


def tiled_modules(pipe: Any) -> list[Any]:
    """The modules whose convolutions tiling changes: the pipeline's UNet and VAE (those it has)."""
    return [module for name in TILED_COMPONENTS if (module := getattr(pipe, name, None)) is not None]


@contextmanager
def circular_padding(modules: Iterable[Any], enabled: bool = True) -> Iterator[int]:
    """Every ``Conv2d`` inside ``modules`` pads circularly while the block runs (``enabled``); yields how many
    layers were switched. Restored on the way out, however the block ends."""
    if not enabled:
        yield 0
        return
    import torch

    switched: list[tuple[Any, str]] = []
    seen: set[int] = set()
    try:
        for module in modules:
            for layer in module.modules():
                if isinstance(layer, torch.nn.Conv2d) and id(layer) not in seen:
                    seen.add(id(layer))
                    if layer.padding_mode != "circular":
                        switched.append((layer, layer.padding_mode))
                        layer.padding_mode = "circular"
        yield len(switched)
    finally:
        for layer, mode in switched:
            layer.padding_mode = mode
