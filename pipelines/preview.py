"""Cheap live previews: a linear 4x3 map from SD latents to RGB (A1111's "Approx cheap", InvokeAI's previews).

Costs a matrix product on a 64x64 tensor, so it can run every few steps without slowing generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# SD 1.x/2.x latent channel -> RGB weights (A1111 sd_samplers_common "cheap approximation").
SD15_LATENT_RGB_FACTORS: tuple[tuple[float, float, float], ...] = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
SD15_LATENT_RGB_BIAS: tuple[float, float, float] = (0.0, 0.0, 0.0)
MAX_PREVIEW_SIDE = 256


def latents_to_rgb(
    latents: Any,
    factors: Sequence[Sequence[float]] | None = None,
    bias: Sequence[float] | None = None,
    size: tuple[int, int] | None = None,
):
    """Turn one latent (``[C,H,W]`` or ``[B,C,H,W]``, first item used) into a small PIL preview image.

    ``factors`` is the family's ``C x 3`` matrix; ``size`` (width, height) scales the preview up to the
    requested image shape, capped at ``MAX_PREVIEW_SIDE`` so that events stay small.
    """
    import torch
    from PIL import Image

    lat = latents.detach()
    if lat.ndim == 4:
        lat = lat[0]
    lat = lat.float().cpu()
    weights = torch.tensor(factors or SD15_LATENT_RGB_FACTORS, dtype=torch.float32)
    if weights.shape[0] != lat.shape[0]:  # e.g. the x4 upscaler's 4 latents + image channels: use the first C
        lat = lat[: weights.shape[0]]
    rgb = torch.einsum("chw,cr->hwr", lat, weights)
    rgb = rgb + torch.tensor(bias or SD15_LATENT_RGB_BIAS, dtype=torch.float32)
    rgb = ((rgb + 1.0) * 127.5).clamp(0, 255).nan_to_num(0).to(torch.uint8).numpy()
    image = Image.fromarray(rgb)
    if size:
        w, h = size
        scale = min(1.0, MAX_PREVIEW_SIDE / max(w, h))
        image = image.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.Resampling.BILINEAR)
    return image
