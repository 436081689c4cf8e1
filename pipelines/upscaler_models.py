"""Upscaler models of the ESRGAN family (ESRGAN, RealESRGAN, 4x-UltraSharp, SwinIR, DAT, HAT, …) loaded by
spandrel, and PIL's ``Lanczos`` and ``Nearest``, behind one call: ``upscale(upscaler, image, device, dtype)``.

Loading. spandrel reads the file (``.pth``/``.pt``/``.ckpt`` through its own restricted unpickler, which refuses
anything but tensors and dicts; ``.safetensors``), detects the architecture from the weight names and reads every
hyper-parameter, the scale included, from the weight shapes: a file's name never decides anything. A file it cannot
read is a ``ModelLoadError`` naming the file and the reason (not a model, an architecture spandrel does not know,
truncated, unsafe pickle), never a crash.

Listing. ``probe_upscaler`` reads names and shapes only (a safetensors header; a pickle unpickled onto the ``meta``
device, which reads no tensor data) and builds the model on ``meta``: a 67 MB ESRGAN (23 blocks) is probed in
~0.5 s against ~3 s for a real load, a tiny one in ~20 ms. Architectures that compute values while they are built
(SwinIR, HAT, DAT: their drop-path schedules call ``.item()``) cannot be built on ``meta``; those files are loaded
for real, on the CPU (SwinIR-M: 2–9 s on this busy 2-core machine), so a caller that lists often should cache the
result by path, size and mtime.

Tiling. The image is cut into overlapping tiles, each tile runs through the model, and the outputs are blended back
with weights that are a partition of unity: inside an overlap one tile's weight falls linearly while its
neighbour's rises, so a constant-colour picture stays exactly constant. A convolution network's output is wrong near
a tile's edge (zero padding stands in for the missing neighbours), so the outer ``EDGE_MARGIN`` (3/8) of every
overlap, on each side, gets weight 0 and the ramp runs over the middle quarter. Measured, tiled against spandrel's
untiled call (random-weight RRDBNet 16 features, 1 and 3 blocks, 64² noise image, 32 px tiles, 8 px overlap, 4x;
difference in 0–255 levels):

==================================  =============  ==============
outer share of the overlap dropped  max (1 / 3 b)  mean (1 / 3 b)
==================================  =============  ==============
0 (linear ramp over all, as SD x4)  24 / 27        0.93 / 1.08
1/4                                 5 / 5          0.07 / 0.08
3/8 (``EDGE_MARGIN``)               1 / 1          0.005 / 0.008
==================================  =============  ==============

(b: RRDB blocks.) The planning and blending live in ``tiles.py`` (shared with the SD x4 upscaler and the SD upscale
script, which blend diffusion tiles with the full linear ramp); this module passes ``EDGE_MARGIN``. Tiles are
planned evenly (``plan_spans``): a 1024² image with 512 px tiles and 32 px overlap is
3 x 3 tiles of 363 px (13 % more pixels to run than untiled), not 3 x 3 tiles of 512 px with the last one flush
with the end (125 % more). The image is first padded as spandrel's own call pads it (reflect, right and bottom, up
to ``size_requirements``); tile sides and starts are then multiples of ``size_requirements.multiple_of`` (a
pixel-unshuffle model, Real-ESRGAN x2plus, gives the untiled result only for tiles on whole unshuffle blocks), and
the padding is cropped off the output.

Measured (bench/upscaler_tiling.py, 2-core CPU, RRDBNet 23 blocks x 64 features, random weights, 4x of 128²,
fastest of 3 alternating runs): spandrel's untiled call 5.72 s; ``upscale`` with the default 512 px tiles (one
tile) 5.83 s (1.02x: same work, within the runs' spread of 5.7–6.5 s); forced 96 px tiles (2 x 2 tiles of 76 px,
41 % more pixels) 7.88 s (1.38x): the cost of tiling is the overlap's extra pixels, nothing else. A 512² input runs
as one 512 px tile by default.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from . import devices
from .errors import ModelLoadError, ModelNotFound, OutOfMemoryEverywhere
from .tiles import EDGE_MARGIN, Tile, blend_spans, blend_tiles, plan_spans, plan_tiles_even

logger = logging.getLogger(__name__)

# A1111's folder names beside ours; all are read, in this order.
UPSCALER_FOLDERS = ("upscale_models", "ESRGAN", "RealESRGAN", "SwinIR", "DAT", "HAT")
UPSCALER_SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt")

# In input pixels. 512/32 as ComfyUI's ImageUpscaleWithModel; on an OOM the tile halves down to MIN_TILE.
DEFAULT_TILE = 512
DEFAULT_OVERLAP = 32
MIN_TILE = 64
# A pickle that cannot be read cheaply (onto ``meta``) is loaded for real to find out why, unless it is this big:
# ESRGAN-family files are well under it, a 4 GB SD checkpoint dropped into ESRGAN/ is not worth reading.
_FULL_LOAD_LIMIT = 1 << 30

OnTile = Callable[[int, int], None]  # (tiles done, tiles in all); may raise (e.g. Cancelled) to stop the run


# --- what an upscaler is ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UpscalerInfo:
    """What a model file holds, read from its weights: enough to list it and to plan its tiles."""

    name: str  # path below its folder without the extension ("4x-UltraSharp"), as A1111 names it
    path: Path
    architecture: str  # spandrel's architecture name: "ESRGAN", "RealESRGAN Compact", "SwinIR", "DAT", "HAT", …
    scale: int  # 1 for restoration models (denoise, de-JPEG)
    input_channels: int
    output_channels: int
    supports_half: bool  # spandrel's ``supports_half`` (fp16)
    supports_bfloat16: bool
    size_multiple: int = 1  # spandrel's ``size_requirements``: input sides a multiple of this …
    size_minimum: int = 0  # … and at least this
    square: bool = False
    tiling: str = "supported"  # spandrel's ``ModelTiling``: supported | discouraged | internal (never tile it)
    purpose: str = "SR"  # "SR" or "Restoration"
    tags: tuple[str, ...] = ()


@dataclass
class UpscalerModel:
    """A loaded model file: its ``info`` and spandrel's ``ImageModelDescriptor`` (``descriptor.model`` is the
    ``torch.nn.Module``). ``upscale()`` moves it to the device and dtype it runs on and leaves it there."""

    info: UpscalerInfo
    descriptor: Any

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def scale(self) -> int:
        return self.info.scale


@dataclass(frozen=True)
class PilUpscaler:
    """A PIL resampling filter as an upscaler: resizes by ``scale``; runs on the CPU, needs no model file."""

    name: str
    resample: Image.Resampling
    scale: float = 4  # A1111 lists Lanczos and Nearest with scale 4; ``builtin_upscaler(name, scale)`` picks another


BUILTIN_UPSCALERS: dict[str, PilUpscaler] = {
    "Lanczos": PilUpscaler("Lanczos", Image.Resampling.LANCZOS),
    "Nearest": PilUpscaler("Nearest", Image.Resampling.NEAREST),
}

Upscaler = UpscalerModel | PilUpscaler


def builtin_upscaler(name: str, scale: float = 4) -> PilUpscaler:
    """``Lanczos`` or ``Nearest`` resizing by ``scale``; another name is ``ModelNotFound``."""
    if name not in BUILTIN_UPSCALERS:
        raise ModelNotFound(f"No built-in upscaler named {name!r}; there are {', '.join(BUILTIN_UPSCALERS)}.",
                            field="upscaler")
    if not scale > 0:
        raise ModelNotFound(f"The {name} upscaler needs a scale above 0, not {scale}.", field="upscaler")
    return PilUpscaler(name, BUILTIN_UPSCALERS[name].resample, scale)


@dataclass(frozen=True)
class RejectedFile:
    """A file in an upscaler folder that is not listed, and why (the reason is also logged)."""

    path: Path
    reason: str


@dataclass
class UpscalerScan:
    """The result of scanning upscaler folders: the usable model files and the ones left out."""

    found: list[UpscalerInfo] = field(default_factory=list)
    rejected: list[RejectedFile] = field(default_factory=list)


# --- loading ---------------------------------------------------------------------------------------------------
def _spandrel():
    """spandrel, imported on first use (it imports torchvision: ~2 s, and it fails on a torch without a matching
    torchvision, see DESIGN's traps)."""
    try:
        import spandrel
    except Exception as exc:  # ImportError, or torchvision's "operator torchvision::nms does not exist"
        raise ModelLoadError(
            f"Upscaler model files need the spandrel package and a torchvision matching torch ({exc}). "
            "Run ./launch.sh (launch.bat on Windows) again to install them."
        ) from exc
    return spandrel


def load_upscaler(path: str | Path) -> UpscalerModel:
    """Load an upscaler model file through spandrel onto the CPU, in fp32.

    Raises ``ModelLoadError`` naming the file and the reason when spandrel cannot read it or it is not an
    upscaler (face restoration and inpainting models are refused).
    """
    path = Path(path)
    _check_suffix(path)
    spandrel = _spandrel()
    try:
        descriptor = spandrel.ModelLoader(torch.device("cpu")).load_from_file(path)
    except spandrel.UnsupportedModelError:
        raise ModelLoadError(_unsupported_message(path, spandrel)) from None
    except Exception as exc:  # a damaged or foreign file must never take the app down
        raise ModelLoadError(_unreadable_message(path, exc)) from exc
    info = _describe(descriptor, path, spandrel)
    return UpscalerModel(info, descriptor.eval())


def probe_upscaler(path: str | Path) -> UpscalerInfo:
    """What ``load_upscaler(path)`` would give, without reading the weights where that is possible.

    Raises ``ModelLoadError`` (with the reason) for a file ``load_upscaler`` would refuse.
    """
    path = Path(path)
    _check_suffix(path)
    spandrel = _spandrel()
    try:
        state = _read_meta_state_dict(path)
    except ModelLoadError:
        raise
    except Exception as exc:
        # TorchScript .pt files, pickles using globals torch's weights-only loader does not know: spandrel's own
        # loader decides, reading the file.
        if path.stat().st_size > _FULL_LOAD_LIMIT:
            raise ModelLoadError(_unreadable_message(path, exc)) from exc
        return load_upscaler(path).info
    try:
        state = spandrel.canonicalize_state_dict(state)
        known = any(support.detect(state) for support in spandrel.MAIN_REGISTRY.architectures("detection"))
    except Exception:
        return load_upscaler(path).info
    if not known:
        raise ModelLoadError(_unsupported_message(path, spandrel))
    try:
        with _meta_device():
            descriptor = spandrel.MAIN_REGISTRY.load(state)
    except Exception:
        return load_upscaler(path).info
    return _describe(descriptor, path, spandrel)


def _meta_device() -> Any:
    """``torch.device("meta")`` as a context, with torch's cached list of tensor constructors it redirects made
    afresh: that list (``torch.utils._device._device_constructors``, cached on first use) holds whatever
    ``torch.linspace`` was at that moment, and a library that had it patched then (seen after loading the SD
    checkpoints) leaves ``torch.linspace`` building on the CPU inside the context, so a SwinIR would "build on meta"
    with real tensors."""
    from torch.utils import _device

    clear = getattr(getattr(_device, "_device_constructors", None), "cache_clear", None)
    if clear is not None:
        clear()
    return torch.device("meta")


def spandrel_missing() -> str | None:
    """Why upscaler model files cannot be used here (spandrel or a matching torchvision missing), or None."""
    try:
        _spandrel()
    except ModelLoadError as exc:
        return exc.message
    return None


def upscaler_folders(models_dir: str | Path) -> list[Path]:
    """The upscaler folders (``UPSCALER_FOLDERS``) that exist in ``models_dir``."""
    root = Path(models_dir)
    return [root / name for name in UPSCALER_FOLDERS if (root / name).is_dir()]


def scan_upscaler_folders(folders: Iterable[str | Path]) -> UpscalerScan:
    """Every upscaler model file under ``folders`` (recursively, symlinks followed), probed with
    ``probe_upscaler``. Files spandrel rejects are logged with their reason and returned in ``rejected``; diffusers
    folders (the SD x4 upscaler, which also lives in ``upscale_models/``) and other file types are passed over."""
    scan = UpscalerScan()
    try:
        _spandrel()
        missing = None
    except ModelLoadError as exc:
        missing = exc.message
    seen: set[str] = set()
    for folder in folders:
        for path in _model_files(Path(folder)):
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            name = path.relative_to(folder).with_suffix("").as_posix()
            if missing:  # every file would say the same: log it once
                if not scan.rejected:
                    logger.warning("upscaler model files are left out: %s", missing)
                scan.rejected.append(RejectedFile(path, missing))
                continue
            try:
                info = probe_upscaler(path)
            except ModelLoadError as exc:
                logger.warning("upscaler %s left out: %s", path, exc.message)
                scan.rejected.append(RejectedFile(path, exc.message))
                continue
            except OSError as exc:
                reason = f"{path.name} could not be read ({exc.strerror or exc})."
                logger.warning("upscaler %s left out: %s", path, reason)
                scan.rejected.append(RejectedFile(path, reason))
                continue
            scan.found.append(replace(info, name=name))
    return scan


def _model_files(folder: Path) -> Iterable[Path]:
    if not folder.is_dir():
        return
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited or ("model_index.json" in filenames and Path(dirpath) != folder):
            dirnames[:] = []  # a symlink loop, or a diffusers folder
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            if filename.lower().endswith(UPSCALER_SUFFIXES) and not filename.startswith("."):
                yield Path(dirpath) / filename


def _check_suffix(path: Path) -> None:
    if path.suffix.lower() not in UPSCALER_SUFFIXES:
        raise ModelLoadError(f"{path.name} is not an upscaler model file: upscalers are "
                             f"{', '.join(UPSCALER_SUFFIXES)} files.")


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _read_meta_state_dict(path: Path) -> dict[str, Any]:
    """The file's state dict with every tensor on the ``meta`` device (names, shapes, dtypes; no data read)."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                state = {}
                for key in handle.keys():  # noqa: SIM118 - safe_open handles are not mappings
                    part = handle.get_slice(key)
                    dtype = _SAFETENSORS_DTYPES.get(part.get_dtype(), torch.float32)
                    state[key] = torch.empty(part.get_shape(), dtype=dtype, device="meta")
        except SafetensorError as exc:  # a bad header is a bad file: no other reader would do better
            raise ModelLoadError(_unreadable_message(path, exc)) from exc
        return state
    state = torch.load(path, map_location="meta", weights_only=True)
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path.name} holds a {type(state).__name__}, not a model's weights.")
    return state


def _describe(descriptor: Any, path: Path, spandrel: Any) -> UpscalerInfo:
    """``UpscalerInfo`` from a spandrel descriptor; ``ModelLoadError`` for models that are not upscalers."""
    architecture = descriptor.architecture.name
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.purpose not in ("SR", "Restoration"):
        kinds = {"FaceSR": "a face restoration", "Inpainting": "an inpainting"}
        kind = kinds.get(descriptor.purpose, "another kind of")
        raise ModelLoadError(f"{path.name} is {kind} model ({architecture}), not an upscaler; upscaler folders "
                             "take super-resolution and restoration models only.")
    req = descriptor.size_requirements
    return UpscalerInfo(
        name=path.stem,
        path=path,
        architecture=architecture,
        scale=int(descriptor.scale),
        input_channels=int(descriptor.input_channels),
        output_channels=int(descriptor.output_channels),
        supports_half=bool(descriptor.supports_half),
        supports_bfloat16=bool(descriptor.supports_bfloat16),
        size_multiple=int(req.multiple_of),
        size_minimum=int(req.minimum),
        square=bool(req.square),
        tiling=descriptor.tiling.name.lower(),
        purpose=str(descriptor.purpose),
        tags=tuple(descriptor.tags),
    )


def _unsupported_message(path: Path, spandrel: Any) -> str:
    names = sorted({support.architecture.name for support in spandrel.MAIN_REGISTRY.architectures()})
    return (f"{path.name} is not a model of an architecture spandrel {spandrel.__version__} knows (its weight names "
            f"match none of {len(names)}: {', '.join(names[:12])}, …). If it is an upscaler, a newer spandrel may "
            "read it; otherwise move it out of the upscaler folder.")


def _unreadable_message(path: Path, exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    lowered = text.lower()
    if isinstance(exc, pickle.UnpicklingError) and ("forbidden" in lowered or "weights only" in lowered):
        why = (f"it holds Python objects besides the weights ({text[:160]}), which are not unpickled, for "
               "safety. Use a .safetensors version of the model")
    elif isinstance(exc, EOFError) or any(hint in lowered for hint in (
            "central directory", "incomplete metadata", "not fully covered", "unexpected eof", "truncated")):
        why = f"the file is cut short or damaged ({text[:160]}). Download it again"
    elif isinstance(exc, OSError):
        why = f"it cannot be read ({exc.strerror or text[:160]})"
    else:
        why = f"it is not a model file spandrel can read ({type(exc).__name__}: {text[:160]})"
    return f"{path.name} could not be loaded as an upscaler: {why}."


# --- running ---------------------------------------------------------------------------------------------------
def resolve_dtype(info: UpscalerInfo, device: str | torch.device, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype a model runs in: half precision only on CUDA and only where spandrel says the architecture
    supports it (fp16 asked for and not supported: bf16 when both the model and the GPU support it); fp32 else."""
    device = torch.device(device)
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return torch.float32
    half_ok = {torch.float16: info.supports_half, torch.bfloat16: info.supports_bfloat16}
    other = torch.bfloat16 if dtype == torch.float16 else torch.float16
    for candidate in (dtype, other):
        if half_ok[candidate] and (candidate != torch.bfloat16
                                   or devices.pick_dtype(device, "bf16") == torch.bfloat16):
            return candidate
    return torch.float32


def upscale(
    upscaler: Upscaler,
    image: Image.Image,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    on_tile: OnTile | None = None,
) -> Image.Image:
    """``image`` enlarged ``upscaler.scale`` times.

    A model runs tiled (``tile``/``overlap`` in input pixels, tiles blended without seams) on ``device`` in the
    dtype ``resolve_dtype`` picks for ``dtype``, and stays there; an alpha channel the model does not take is
    enlarged beside it with Lanczos. An out-of-memory error frees memory and starts again with tiles half as large,
    down to ``MIN_TILE``, then raises ``OutOfMemoryEverywhere``. ``on_tile(done, total)`` is called before the first
    tile and after each; whatever it raises (``Cancelled``) stops the run. After an OOM restart the count starts
    again with the new total. A ``PilUpscaler`` resizes with its filter on the CPU.
    """
    if isinstance(upscaler, PilUpscaler):
        return _pil_upscale(upscaler, image, on_tile)
    info = upscaler.info
    device = torch.device(device)
    run_dtype = resolve_dtype(info, device, dtype)
    upscaler.descriptor.to(device=device, dtype=run_dtype)
    pixels = _to_tensor(image, info.input_channels)
    alpha = image.getchannel("A") if "A" in image.getbands() and info.input_channels != 4 else None
    _, _, height, width = pixels.shape
    # Pad as spandrel's own call does (reflect, right and bottom) so that tiles start on whole unshuffle blocks.
    pixels = _pad_to_requirements(pixels, info)
    _, _, padded_height, padded_width = pixels.shape
    if info.tiling == "internal":  # the model tiles (or needs the whole picture) itself
        tile = max(padded_width, padded_height)
    tile = _aligned_tile(tile, info)
    smallest = _aligned_tile(MIN_TILE, info)

    def run_tile(box: Tile) -> torch.Tensor:
        part = pixels[:, :, box.top:box.bottom, box.left:box.right].to(device=device, dtype=run_dtype).contiguous()
        out = upscaler.descriptor(part)
        expected = ((box.bottom - box.top) * info.scale, (box.right - box.left) * info.scale)
        if tuple(out.shape[-2:]) != expected:
            raise ModelLoadError(f"{info.name} returned {out.shape[-1]}x{out.shape[-2]} pixels for a "
                                 f"{box.right - box.left}x{box.bottom - box.top} tile, not {info.scale}x as its "
                                 "weights say; this model cannot be used.")
        return out[0].to(device="cpu", dtype=torch.float32)

    while True:
        try:
            result = blend_tiles(run_tile, padded_width, padded_height, info.scale, channels=info.output_channels,
                                 tile=tile, overlap=overlap, align=max(1, info.size_multiple),
                                 minimum=info.size_minimum, on_tile=on_tile, edge_margin=EDGE_MARGIN)
            break
        except Exception as exc:
            if not devices.is_oom(exc):
                raise
        # Out of memory: freed here, outside the except block, whose traceback still holds the tile's tensors.
        devices.free_memory(device)
        if tile <= smallest:
            advice = "close other programs" if device.type == "cpu" else "close other programs or run it on the CPU"
            raise OutOfMemoryEverywhere(f"Out of memory upscaling with {info.name} on {device.type} even with "
                                        f"{tile} px tiles. Use a smaller image, {advice}.")
        smaller = max(smallest, _aligned_tile(tile // 2, info))
        logger.warning("out of memory upscaling with %s at %d px tiles; retrying with %d px tiles",
                       info.name, tile, smaller)
        tile = smaller
    out = _to_image(result[:, : height * info.scale, : width * info.scale])
    if alpha is not None and out.mode in ("RGB", "L"):  # the model sees no alpha: enlarge it with Lanczos
        out.putalpha(alpha.resize(out.size, Image.Resampling.LANCZOS))
    return out


def upscale_to_size(
    upscaler: Upscaler,
    image: Image.Image,
    width: int,
    height: int,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    on_tile: OnTile | None = None,
    max_passes: int = 3,
) -> Image.Image:
    """``image`` at exactly ``width`` x ``height``, as A1111's upscalers do it: a model runs (up to ``max_passes``
    times) until the image is at least that large, then Lanczos resizes to the exact size; a PIL upscaler resizes
    once with its own filter."""
    if isinstance(upscaler, PilUpscaler):
        return _pil_ready(image).resize((width, height), upscaler.resample)
    current = image
    for _ in range(max_passes):
        if current.width >= width and current.height >= height:
            break
        before = current.size
        current = upscale(upscaler, current, device, dtype, tile=tile, overlap=overlap, on_tile=on_tile)
        if current.size == before:  # a 1x (restoration) model
            break
    if current.size != (width, height):
        current = _pil_ready(current).resize((width, height), Image.Resampling.LANCZOS)
    return current


def _pil_upscale(upscaler: PilUpscaler, image: Image.Image, on_tile: OnTile | None) -> Image.Image:
    if on_tile:
        on_tile(0, 1)
    size = (max(1, round(image.width * upscaler.scale)), max(1, round(image.height * upscaler.scale)))
    out = _pil_ready(image).resize(size, upscaler.resample)
    if on_tile:
        on_tile(1, 1)
    return out


def _pil_ready(image: Image.Image) -> Image.Image:
    """Palette and bilevel images resize badly with smoothing filters: give them real colours first."""
    if image.mode in ("RGB", "RGBA", "L", "LA", "I", "F", "I;16"):
        return image
    return image.convert("RGBA" if "transparency" in image.info or image.mode in ("PA",) else "RGB")


def _pad_to_requirements(pixels: torch.Tensor, info: UpscalerInfo) -> torch.Tensor:
    """Right/bottom padding up to the size requirements: reflected as far as the image allows, then the edge
    repeated (what spandrel's ``pad_tensor`` does before its own call)."""
    _, _, height, width = pixels.shape
    multiple = max(1, info.size_multiple)
    pad_w = math.ceil(max(width, info.size_minimum) / multiple) * multiple - width
    pad_h = math.ceil(max(height, info.size_minimum) / multiple) * multiple - height
    if info.square:
        side = max(width + pad_w, height + pad_h)
        pad_w, pad_h = side - width, side - height
    if not pad_w and not pad_h:
        return pixels
    reflect_w, reflect_h = min(pad_w, width - 1), min(pad_h, height - 1)
    pixels = torch.nn.functional.pad(pixels, (0, reflect_w, 0, reflect_h), mode="reflect")
    if pad_w > reflect_w or pad_h > reflect_h:
        pixels = torch.nn.functional.pad(pixels, (0, pad_w - reflect_w, 0, pad_h - reflect_h), mode="replicate")
    return pixels


def _aligned_tile(tile: int, info: UpscalerInfo) -> int:
    multiple = max(1, info.size_multiple)
    tile = max(int(tile), info.size_minimum, multiple, 1)
    return tile // multiple * multiple


_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def _to_tensor(image: Image.Image, channels: int) -> torch.Tensor:
    """(1, C, H, W) float32 in [0, 1] on the CPU, in the model's channel count (an RGB model sees no alpha)."""
    import numpy as np

    mode = _MODES.get(channels)
    if mode is None:
        raise ModelLoadError(f"Upscaler models with {channels} input channels are not supported (1, 3 or 4).")
    array = np.asarray(image.convert(mode), dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def _to_image(pixels: torch.Tensor) -> Image.Image:
    """(C, H, W) floats in [0, 1] → a PIL image (L, RGB or RGBA)."""
    array = (pixels.clamp(0.0, 1.0) * 255.0).round_().to(torch.uint8).permute(1, 2, 0).numpy()
    channels = array.shape[2]
    if channels not in _MODES:
        raise ModelLoadError(f"Upscaler models with {channels} output channels are not supported (1, 3 or 4).")
    if channels == 1:
        array = array[:, :, 0]
    return Image.fromarray(array, _MODES[channels])


__all__ = [
    "BUILTIN_UPSCALERS", "DEFAULT_OVERLAP", "DEFAULT_TILE", "EDGE_MARGIN", "MIN_TILE", "UPSCALER_FOLDERS",
    "UPSCALER_SUFFIXES", "PilUpscaler", "RejectedFile", "Tile", "Upscaler", "UpscalerInfo", "UpscalerModel",
    "UpscalerScan", "blend_spans", "blend_tiles", "builtin_upscaler", "load_upscaler", "plan_spans",
    "plan_tiles_even", "probe_upscaler", "resolve_dtype", "scan_upscaler_folders", "spandrel_missing", "upscale",
    "upscale_to_size", "upscaler_folders",
]
