"""Inpainting's geometry in pixels, A1111's way (``modules/processing.py`` ``StableDiffusionProcessingImg2Img.init``,
``modules/masking.py``, ``modules/images.py``): masks read, inverted and blurred, the "only masked" crop region, the
masked area filled from its surroundings, the outpaint canvas, and the final composite over the original.

PIL and numpy only (scipy for the blur, imported when used): ``request.py`` reads masks with it at validation time,
``tasks/inpaint.py`` builds a run's plan with it. No torch here.

A mask is a PIL ``L`` image, white (255) = repaint. A1111's rules, kept:

* reading (``create_binary_mask``): an RGBA mask that is not fully opaque (a brush layer) is its alpha channel,
  thresholded at 128; anything else is its grey level;
* ``inpainting_mask_invert`` inverts it; the blur is a Gaussian along x, then along y (σ = the blur, kernel
  ``2·int(2.5σ + 0.5) + 1`` taps, mirrored borders: OpenCV's ``GaussianBlur`` that A1111 calls), so a pixel farther
  than ``int(2.5σ + 0.5)`` px from the painted area keeps a mask value of exactly 0;
* "whole picture": the composite uses the blurred mask doubled (``clip(2m)``), "only masked" the blurred mask itself;
  the latent mask is the blurred mask shrunk to latent size and rounded;
* a mask is empty when no pixel reaches 128 (nothing would be repainted).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter, ImageOps

MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")  # A1111's inpainting_fill 0-3, its names
FILL, ORIGINAL, LATENT_NOISE, LATENT_NOTHING = range(4)
MASK_THRESHOLD = 128  # a mask value that repaints (A1111 rounds the latent mask; diffusers binarizes at 0.5)
OUTPAINT_OVERLAP = 16  # px of the old picture the outpaint mask covers, so that the seam is redrawn too
OUTPAINT_NOISE = 24.0  # σ (0-255 levels) of the noise over the edge colours of an outpainted strip
# A1111's masking.fill: (blur radius, composite repeats), widest first
_FILL_LAYERS = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))
RESIZE_MODES = ("just resize", "crop and resize", "resize and fill")
SIDES = ("left", "right", "up", "down")

Box = tuple[int, int, int, int]  # (x1, y1, x2, y2), x2/y2 exclusive


def read_mask(image: Image.Image) -> Image.Image:
    """A1111's ``create_binary_mask``: an RGBA mask with any transparency is its alpha channel rounded at 128 (a
    brush layer over nothing); any other mask is its grey level (white = repaint)."""
    if image.mode in ("P", "PA", "LA") and (image.mode != "P" or "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode == "RGBA" and image.getextrema()[-1] != (255, 255):
        return image.getchannel("A").point(lambda v: 255 if v > 128 else 0)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256)
    return image.convert("L")


def invert(mask: Image.Image) -> Image.Image:
    """``inpainting_mask_invert``: repaint what was not painted."""
    return ImageOps.invert(mask.convert("L"))


def is_empty(mask: Image.Image) -> bool:
    """No pixel reaches ``MASK_THRESHOLD``: nothing would be repainted."""
    return mask.convert("L").getextrema()[1] < MASK_THRESHOLD


def blur_radius(sigma: float) -> int:
    """How far (px) A1111's blur of ``sigma`` reaches: half its kernel (OpenCV's ``2·int(2.5σ + 0.5) + 1`` taps)."""
    return int(2.5 * sigma + 0.5) if sigma > 0 else 0


def blur(mask: Image.Image, sigma_x: float, sigma_y: float) -> Image.Image:
    """A1111's mask blur: a Gaussian along x, then along y, each as OpenCV's ``GaussianBlur`` with a 1-D kernel
    (reflect-101 borders), rounded back to 0-255 after each pass as OpenCV rounds its ``uint8`` output."""
    array = np.asarray(mask.convert("L"), dtype=np.float64)
    for axis, sigma in ((1, sigma_x), (0, sigma_y)):
        if sigma > 0:
            from scipy.ndimage import correlate1d

            radius = blur_radius(sigma)
            taps = np.exp(-((np.arange(-radius, radius + 1)) ** 2) / (2.0 * sigma * sigma))
            array = np.clip(np.rint(correlate1d(array, taps / taps.sum(), axis=axis, mode="mirror")), 0, 255)
    return Image.fromarray(array.astype(np.uint8), "L")


def doubled(mask: Image.Image) -> Image.Image:
    """The "whole picture" overlay mask: the blurred mask doubled and clipped (A1111: repainted pixels that the
    blur left above half strength are the new picture's alone; the fade lies outside the painted area)."""
    return mask.point(lambda v: min(255, 2 * v))


def crop_region(mask: Image.Image, padding: int) -> Box | None:
    """A1111's ``get_crop_region_v2``: the box around every non-zero mask pixel grown by ``padding`` px (within the
    picture); None for an all-black mask."""
    box = mask.getbbox()
    if not box:
        return None
    x1, y1, x2, y2 = box
    return max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, mask.width), min(y2 + padding, mask.height)


def expand_crop_region(box: Box, width: int, height: int, image_width: int, image_height: int) -> Box:
    """A1111's ``expand_crop_region``: grow ``box`` to the aspect of ``width`` x ``height`` (the size it is drawn
    at), around its centre, kept inside the picture."""
    x1, y1, x2, y2 = box
    ratio_crop = (x2 - x1) / (y2 - y1)
    ratio_processing = width / height
    if ratio_crop > ratio_processing:
        desired_height = (x2 - x1) / ratio_processing
        diff = int(desired_height - (y2 - y1))
        y1 -= diff // 2
        y2 += diff - diff // 2
        if y2 >= image_height:
            shift = y2 - image_height
            y2 -= shift
            y1 -= shift
        if y1 < 0:
            y2 -= y1
            y1 = 0
        if y2 >= image_height:
            y2 = image_height
    else:
        desired_width = (y2 - y1) * ratio_processing
        diff = int(desired_width - (x2 - x1))
        x1 -= diff // 2
        x2 += diff - diff // 2
        if x2 >= image_width:
            shift = x2 - image_width
            x2 -= shift
            x1 -= shift
        if x1 < 0:
            x2 -= x1
            x1 = 0
        if x2 >= image_width:
            x2 = image_width
    return x1, y1, x2, y2


def resize_image(image: Image.Image, width: int, height: int, mode: str = "just resize") -> Image.Image:
    """A1111's resize modes (``images.resize_image``): ``just resize``, ``crop and resize`` (cover, centre crop),
    ``resize and fill`` (fit, the margins filled with the picture stretched). Lanczos for pictures; masks (``L``)
    bilinear, whose weights are never negative: Lanczos' ringing would leave faint mask values (a faint repaint)
    pixels away from the painted area."""
    if image.size == (width, height):
        return image
    resample = Image.Resampling.BILINEAR if image.mode == "L" else Image.Resampling.LANCZOS
    if mode == "crop and resize":
        return ImageOps.fit(image, (width, height), resample)
    if mode == "resize and fill":
        scale = min(width / image.width, height / image.height)
        inner = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)
        canvas = image.resize((width, height), resample)  # stretched edges fill the margins
        canvas.paste(inner, ((width - inner.width) // 2, (height - inner.height) // 2))
        return canvas
    return image.resize((width, height), resample)


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's ``masking.fill`` ("Masked content: fill"): the masked area painted over with ever less blurred copies
    of what surrounds it; unmasked pixels are kept."""
    result = Image.new("RGBA", image.size)
    kept = Image.new("RGBa", image.size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    for radius, repeats in _FILL_LAYERS:
        layer = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            result.alpha_composite(layer)
    return result.convert("RGB")


def composite(original: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """``generated`` over ``original`` by ``mask`` (A1111's ``apply_overlay``): where the mask is 0 the original's
    pixels exactly, where it is 255 the generated ones exactly, a linear blend between."""
    alpha = np.asarray(mask.convert("L"), dtype=np.float32)[..., None] / 255.0
    old = np.asarray(original.convert("RGB"), dtype=np.float32)
    new = np.asarray(generated.convert("RGB"), dtype=np.float32)
    blended = np.rint(old + (new - old) * alpha).clip(0, 255).astype(np.uint8)
    return Image.fromarray(blended, "RGB")


def paste_back(canvas: Image.Image, generated: Image.Image, box: Box) -> Image.Image:
    """"Only masked": the generated crop scaled to the box (A1111's "crop and resize") on a copy of ``canvas``."""
    out = canvas.convert("RGB").copy()
    out.paste(resize_image(generated.convert("RGB"), box[2] - box[0], box[3] - box[1], "crop and resize"), box[:2])
    return out


# --- outpainting -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sides:
    """How many px the canvas grows on each side (``GenerationRequest.outpaint``)."""

    left: int = 0
    right: int = 0
    up: int = 0
    down: int = 0

    def __bool__(self) -> bool:
        return any((self.left, self.right, self.up, self.down))

    def grown(self, width: int, height: int) -> tuple[int, int]:
        """The size of a ``width`` x ``height`` picture with these sides added."""
        return width + self.left + self.right, height + self.up + self.down


def outpaint_canvas(picture: Image.Image, sides: Sides, seed: int) -> tuple[Image.Image, Image.Image]:
    """``(canvas, mask)``: ``picture`` on a canvas grown by ``sides``, the new strips filled with the picture's edge
    colours (each new pixel the nearest edge pixel's, smoothed along the edge) plus seeded noise, and a mask of the
    new strips reaching ``OUTPAINT_OVERLAP`` px into the old picture, so that the seam is redrawn too."""
    old = np.asarray(picture.convert("RGB"), dtype=np.float32)
    pad = ((sides.up, sides.down), (sides.left, sides.right), (0, 0))
    edges = np.pad(old, pad, mode="edge")
    height, width = edges.shape[:2]
    new = np.ones((height, width), dtype=bool)
    new[sides.up:sides.up + picture.height, sides.left:sides.left + picture.width] = False
    # smooth the streaks that edge-repeating draws, so that the strip holds the edge's colours, not its details
    smooth = np.asarray(Image.fromarray(edges.clip(0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(max(4, min(width, height) // 32))), dtype=np.float32)
    noise = np.random.default_rng(seed).normal(0.0, OUTPAINT_NOISE, size=edges.shape).astype(np.float32)
    canvas = np.where(new[..., None], (smooth + noise).clip(0, 255), edges)
    mask = np.zeros((height, width), dtype=np.uint8)
    overlap = OUTPAINT_OVERLAP
    if sides.left:
        mask[:, :sides.left + overlap] = 255
    if sides.right:
        mask[:, width - sides.right - overlap:] = 255
    if sides.up:
        mask[:sides.up + overlap, :] = 255
    if sides.down:
        mask[height - sides.down - overlap:, :] = 255
    return Image.fromarray(np.rint(canvas).astype(np.uint8), "RGB"), Image.fromarray(mask, "L")


def place(mask: Image.Image, size: tuple[int, int], offset: tuple[int, int]) -> Image.Image:
    """``mask`` on a black canvas of ``size`` at ``offset`` (a user's mask on an outpaint canvas)."""
    out = Image.new("L", size, 0)
    out.paste(mask.convert("L"), offset)
    return out


def union(first: Image.Image, second: Image.Image) -> Image.Image:
    """The brighter of two masks, pixel by pixel."""
    return Image.fromarray(np.maximum(np.asarray(first.convert("L")), np.asarray(second.convert("L"))), "L")
