"""Tiles: planning overlapping tiles over a picture and blending their outputs back without seams, at any scale.

The one tiling room of the engine: upscaler models (``upscaler_models.upscale``), the SD x4 upscaler
(``upscale.upscale_tiled``) and A1111's SD upscale script (``tasks/sd_upscale.py``) plan and blend here.

Blend weights are a partition of unity: inside an overlap one tile's weight falls linearly while its neighbour's
rises, so a constant-colour picture stays exactly constant. ``edge_margin`` is the share of each overlap, on each
side, that gets weight 0: a convolution network's output is wrong near a tile's edge (zero padding stands in for the
missing neighbours), so its tiles drop the outer ``EDGE_MARGIN`` (3/8, measured in ``upscaler_models``' docstring);
tiles whose content differs (diffusion tiles) blend with a linear ramp over the whole overlap (``edge_margin`` 0),
which spreads the change over the most pixels. Leaf module: torch is imported where tensors are made.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

OnTile = Callable[[int, int], None]  # (tiles done, tiles in all); may raise (e.g. Cancelled) to stop the run

# Share of each overlap, on each side, whose output is discarded (weight 0) as too close to a tile's edge.
EDGE_MARGIN = 0.375


@dataclass(frozen=True)
class Tile:
    """One tile's box in input pixels: ``(left, top, right, bottom)``."""

    left: int
    top: int
    right: int
    bottom: int


def plan_spans(length: int, tile: int, overlap: int, align: int = 1, minimum: int = 0) -> list[tuple[int, int]]:
    """``(start, end)`` spans covering ``0..length`` with tiles of one size, a multiple of ``align``, at least
    ``minimum`` and at most ``tile`` (itself rounded to ``align`` and raised to ``minimum``), neighbours overlapping
    by at least ``overlap`` (capped at a quarter tile). The tiles are spread evenly, so the work beyond an untiled
    run is only the overlaps. Starts are multiples of ``align`` too when ``length`` is (pad the image first): a
    pixel-unshuffle model only gives the same output for a shift by whole unshuffle blocks."""
    align = max(1, align)
    units = math.ceil(length / align)
    tile_units = max(1, tile // align, math.ceil(max(0, minimum) / align))
    if units <= tile_units:
        return [(0, length)]
    overlap_units = max(0, min(math.ceil(overlap / align), tile_units // 4))
    count = math.ceil((units - overlap_units) / (tile_units - overlap_units))
    size_units = math.ceil((units + (count - 1) * overlap_units) / count)
    size_units = min(tile_units, max(math.ceil(max(0, minimum) / align), size_units))
    size = size_units * align
    starts = [(i * (units - size_units)) // (count - 1) * align for i in range(count)]
    starts[-1] = length - size  # the same as above when length is a multiple of align
    return [(start, start + size) for start in starts]


def plan_tiles_even(width: int, height: int, tile: int, overlap: int, align: int = 1, minimum: int = 0) -> list[Tile]:
    """The tiles ``blend_tiles`` runs, row by row (the evenly spread generalisation of ``upscale.plan_tiles``)."""
    return [Tile(x0, y0, x1, y1) for y0, y1 in plan_spans(height, tile, overlap, align, minimum)
            for x0, x1 in plan_spans(width, tile, overlap, align, minimum)]


def _ramp(positions: Tensor, start: int, end: int, edge_margin: float = EDGE_MARGIN) -> Tensor:
    """0 → 1 across the overlap ``start..end`` (output pixels), 0 on its first ``edge_margin`` and 1 on its last."""
    margin = int((end - start) * edge_margin)
    width = max(1, end - start - 2 * margin)
    return ((positions - (start + margin)) / width).clamp(0.0, 1.0)


def _axis_weights(spans: Sequence[tuple[int, int]], scale: int, edge_margin: float = EDGE_MARGIN) -> list[Tensor]:
    """Per span, its blend weight for each output pixel along one axis; across neighbours they sum to 1."""
    import torch

    weights = []
    for i, (start, end) in enumerate(spans):
        positions = torch.arange(start * scale, end * scale, dtype=torch.float64) + 0.5
        weight = torch.ones_like(positions)
        if i > 0:
            weight *= _ramp(positions, start * scale, spans[i - 1][1] * scale, edge_margin)
        if i + 1 < len(spans):
            weight *= 1.0 - _ramp(positions, spans[i + 1][0] * scale, end * scale, edge_margin)
        weights.append(weight.to(torch.float32))
    return weights


def blend_tiles(
    run_tile: Callable[[Tile], Tensor],
    width: int,
    height: int,
    scale: int,
    *,
    channels: int = 3,
    tile: int = 512,
    overlap: int = 32,
    align: int = 1,
    minimum: int = 0,
    on_tile: OnTile | None = None,
    tile_height: int | None = None,
    edge_margin: float = EDGE_MARGIN,
) -> Tensor:
    """Run a ``width`` x ``height`` image through ``run_tile(box) -> (C, h*scale, w*scale)`` float tensor (CPU)
    tile by tile (``plan_spans``; tiles ``tile`` wide and ``tile_height`` (default ``tile``) high) and blend the
    outputs into one ``(C, height*scale, width*scale)`` tensor.

    Whole-image runs (the image fits one tile) return ``run_tile``'s output as it is. This is ``upscale.upscale_tiled``
    for any scale and alignment, blending on tensors.
    """
    xs = plan_spans(width, tile, overlap, align, minimum)
    ys = plan_spans(height, tile if tile_height is None else tile_height, overlap, align, minimum)
    return blend_spans(run_tile, xs, ys, scale, channels=channels, on_tile=on_tile, edge_margin=edge_margin)


def blend_spans(
    run_tile: Callable[[Tile], Tensor],
    xs: Sequence[tuple[int, int]],
    ys: Sequence[tuple[int, int]],
    scale: int,
    *,
    channels: int = 3,
    on_tile: OnTile | None = None,
    edge_margin: float = EDGE_MARGIN,
) -> Tensor:
    """``blend_tiles`` over tiles already planned: columns ``xs`` and rows ``ys`` of ``(start, end)`` spans (any
    planner's, neighbours overlapping). ``edge_margin`` is the share of each overlap, on each side, given weight 0:
    ``EDGE_MARGIN`` for a convolution network's tiles (their edges are wrong), 0 for a linear ramp over the whole
    overlap, for tiles that differ in content (diffusion tiles, where a long ramp hides the change best)."""
    width, height = xs[-1][1], ys[-1][1]
    total = len(xs) * len(ys)
    if on_tile:
        on_tile(0, total)
    if total == 1:
        out = run_tile(Tile(xs[0][0], ys[0][0], width, height))
        if on_tile:
            on_tile(1, 1)
        return out
    import torch

    x_weights, y_weights = _axis_weights(xs, scale, edge_margin), _axis_weights(ys, scale, edge_margin)
    canvas = torch.zeros(channels, height * scale, width * scale, dtype=torch.float32)
    weight_sum = torch.zeros(1, height * scale, width * scale, dtype=torch.float32)
    done = 0
    for (y0, y1), wy in zip(ys, y_weights, strict=True):
        for (x0, x1), wx in zip(xs, x_weights, strict=True):
            part = run_tile(Tile(x0, y0, x1, y1))
            weight = wy[:, None] * wx[None, :]
            region = (slice(None), slice(y0 * scale, y1 * scale), slice(x0 * scale, x1 * scale))
            canvas[region].add_(part * weight)
            weight_sum[region].add_(weight)
            done += 1
            if on_tile:
                on_tile(done, total)
    return canvas.div_(weight_sum)


def plan_full_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """``(start, end)`` spans of exactly ``tile`` px (A1111's ``split_grid`` for the SD upscale script: the model
    draws at the size it was asked for), at least ``overlap`` px apart, spread evenly so the last ends flush; starts
    are multiples of 8 when ``length`` and ``tile`` are. One span when the tile covers ``length``."""
    tile = min(tile, length)
    if length <= tile:
        return [(0, length)]
    overlap = min(overlap, tile // 2)
    step = tile - overlap
    count = math.ceil((length - overlap) / step)
    count = max(2, count)
    starts = [round(i * (length - tile) / (count - 1) / 8) * 8 for i in range(count)]
    starts[-1] = length - tile
    return [(start, start + tile) for start in starts]


def plan_full_tiles(width: int, height: int, tile_width: int, tile_height: int, overlap: int) -> list[Tile]:
    """The SD upscale script's tiles (``plan_full_spans`` on each axis), row by row."""
    return [Tile(x0, y0, x1, y1) for y0, y1 in plan_full_spans(height, tile_height, overlap)
            for x0, x1 in plan_full_spans(width, tile_width, overlap)]
