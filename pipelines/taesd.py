"""TAESD, the tiny autoencoder (madebyollin/taesd): live previews every step, and an opt-in final decode.

Files are found where the other UIs keep them: ``taesd_decoder`` (SD 1.x and 2.x) and ``taesdxl_decoder`` (SDXL) as
``.pth`` or ``.safetensors`` in ``models/VAE-approx/`` (A1111's folder, which downloads them there),
``models/vae-approx/`` or ComfyUI's ``models/vae_approx/``, or a diffusers ``AutoencoderTiny`` folder there (``xl`` in
its name for SDXL). They load into diffusers' ``AutoencoderTiny``.

The ``.pth``/``.safetensors`` files of the taesd repository are decoder-only state dicts of its ``nn.Sequential``
(``Clamp, conv, ReLU, Block..., Upsample, conv, ...``): layer ``i`` there is ``decoder.layers.(i - 1)`` in
``AutoencoderTiny`` (diffusers' ``DecoderTiny`` does the clamp in ``forward``), as diffusers'
``scripts/convert_tiny_autoencoder_to_diffusers.py`` maps them. The decoder's widths and block counts are read from
the file, so any TAESD-shaped decoder loads.

TAESD decodes the diffusion latents directly (its config's ``scaling_factor`` is 1) into [-1, 1] pictures; with
four-channel SD latents a 512x512 picture costs about a tenth of the full VAE's decode. The pictures differ a little
from the full VAE's (softer detail): the final decode uses it only when asked (Settings "Fast decode (TAESD)", a
request's ``fast_decode``), and the infotext then says ``VAE: taesd``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TAESD_FOLDERS = ("VAE-approx", "vae-approx", "vae_approx")  # A1111, Atelier, ComfyUI
TAESD_SUFFIXES = (".safetensors", ".pth", ".pt")
DECODER_STEMS = {"sd1": "taesd_decoder", "sd2": "taesd_decoder", "sdxl": "taesdxl_decoder"}
TAESD_VAE_NAME = "taesd"  # the infotext's ``VAE:`` value when TAESD made the final picture
PREVIEW_SIDE = 256  # the longest side of a TAESD preview (latents are shrunk to it before decoding)


@dataclass(frozen=True)
class TinyDecoderFile:
    """One installed TAESD decoder: its file or diffusers folder, and the model group it decodes for."""

    path: Path
    group: str  # "sd1" (also SD 2.x's latents) or "sdxl"
    format: str  # "safetensors", "pth" or "diffusers"

    @property
    def version(self) -> str:
        """Changes when the file does (size and mtime of the file, or of a folder's weights)."""
        target = self.path
        if self.format == "diffusers":
            weights = sorted(self.path.glob("diffusion_pytorch_model.*"))
            target = weights[0] if weights else self.path / "config.json"
        try:
            stat = target.stat()
        except OSError:
            return ""
        return f"{stat.st_size}:{stat.st_mtime_ns}"


def group_of(family: str | None) -> str | None:
    """The TAESD kind a checkpoint family needs: ``sd1`` for SD 1.x and 2.x (same latent space), ``sdxl``; None
    for families without SD latents (the x4 upscaler)."""
    from .registry import FAMILY_GROUP

    group = FAMILY_GROUP.get(family or "")
    if group is None:
        return None
    return "sdxl" if group == "sdxl" else "sd1"


def find_tiny_decoders(models_dir: Path | str) -> list[TinyDecoderFile]:
    """Every TAESD decoder under ``models_dir``'s VAE-approx folders (any of their spellings), by name."""
    root = Path(models_dir)
    found: list[TinyDecoderFile] = []
    try:
        folders = [p for p in root.iterdir() if p.is_dir() and p.name.lower() in {f.lower() for f in TAESD_FOLDERS}]
    except OSError:
        return []
    for folder in sorted(folders):
        for path in sorted(folder.iterdir()):
            stem = path.name.lower()
            if path.is_file() and path.suffix.lower() in TAESD_SUFFIXES:
                base = stem[: -len(path.suffix)]
                group = next((g for g in ("sdxl", "sd1") if base == DECODER_STEMS[g]), None)
                if group is not None:
                    found.append(TinyDecoderFile(path, group, "safetensors" if path.suffix == ".safetensors"
                                                 else "pth"))
            elif path.is_dir() and _is_tiny_autoencoder_folder(path):
                group = "sdxl" if re.search(r"xl", stem) else "sd1"
                found.append(TinyDecoderFile(path, group, "diffusers"))
    return found


def tiny_decoder_for(models_dir: Path | str, family: str | None) -> TinyDecoderFile | None:
    """The TAESD decoder for checkpoints of ``family`` (a file named for it first, then a diffusers folder)."""
    group = group_of(family)
    if group is None:
        return None
    candidates = [found for found in find_tiny_decoders(models_dir) if found.group == group]
    candidates.sort(key=lambda f: (f.format == "diffusers", f.format != "safetensors"))
    return candidates[0] if candidates else None


def _is_tiny_autoencoder_folder(path: Path) -> bool:
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("_class_name") == "AutoencoderTiny"


# --- loading ----------------------------------------------------------------------------------------------------
_NATIVE_KEY = re.compile(r"^(?:decoder\.)?(\d+)\.(.+)$")  # taesd's own layout ("1.weight", "3.conv.0.bias")
_DIFFUSERS_KEY = re.compile(r"^(?:decoder\.)?layers\.(\d+)\.(.+)$")  # AutoencoderTiny's ("decoder.layers.0.weight")


def decoder_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """A TAESD decoder's tensors keyed as ``AutoencoderTiny.decoder`` names them (``layers.<i>...``): taesd's
    layer ``i`` is ``layers.(i - 1)``; a file already in diffusers' layout keeps its indices. Encoder keys (an
    ``AutoencoderTiny`` saved whole) are left out. Raises ``ValueError`` when nothing looks like a decoder."""
    mapped: dict[str, Any] = {}
    for key, tensor in state.items():
        if key.startswith("encoder."):
            continue
        if match := _DIFFUSERS_KEY.match(key):
            mapped[f"layers.{match[1]}.{match[2]}"] = tensor
        elif match := _NATIVE_KEY.match(key):
            mapped[f"layers.{int(match[1]) - 1}.{match[2]}"] = tensor
    if not mapped:
        raise ValueError("no TAESD decoder weights in it")
    return mapped


def decoder_config(state: dict[str, Any]) -> dict[str, Any]:
    """``AutoencoderTiny`` config arguments for a decoder state dict in diffusers' layout (``decoder_state_dict``):
    latent channels, each stage's width and number of blocks, read from the layers themselves.

    ``DecoderTiny`` is ``conv, act, [blocks..., upsample, conv (no bias)] per stage, blocks..., conv (bias)``: a
    plain conv without a bias closes a stage, the one with a bias is the last layer."""
    layers: dict[int, dict[str, Any]] = {}
    for key, tensor in state.items():
        index, _, rest = key.removeprefix("layers.").partition(".")
        layers.setdefault(int(index), {})[rest] = tensor
    order = sorted(layers)
    first = layers[order[0]].get("weight")
    if first is None or first.dim() != 4:
        raise ValueError("its first layer is not a convolution")
    widths: list[int] = []
    blocks: list[int] = []
    count = 0
    for index in order[1:]:
        params = layers[index]
        if "conv.0.weight" in params:  # an AutoencoderTinyBlock
            count += 1
        elif "weight" in params and params["weight"].dim() == 4:  # a plain conv: the end of a stage
            widths.append(int(params["weight"].shape[1]))
            blocks.append(count)
            count = 0
            if "bias" in params:  # the output conv
                break
        else:
            raise ValueError(f"layer {index} is neither a block nor a convolution")
    if not widths or "bias" not in layers[order[-1]]:
        raise ValueError("its layers do not end in an output convolution")
    return {"latent_channels": int(first.shape[1]), "out_channels": int(layers[order[-1]]["weight"].shape[0]),
            "decoder_block_out_channels": tuple(widths), "num_decoder_blocks": tuple(blocks),
            # the encoder is never used (the files hold no weights for it): the smallest one that builds
            "encoder_block_out_channels": (1,), "num_encoder_blocks": (0,)}


def load_tiny_autoencoder(found: TinyDecoderFile) -> Any:
    """An fp32 ``AutoencoderTiny`` on the CPU with the decoder of ``found`` (``ModelLoadError`` when unreadable or
    not a TAESD decoder); its encoder is a placeholder, never run."""
    import torch
    from diffusers import AutoencoderTiny

    from .checkpoint_files import read_state_dict
    from .errors import ModelLoadError

    if found.format == "diffusers":
        try:
            model = AutoencoderTiny.from_pretrained(str(found.path), local_files_only=True,
                                                    torch_dtype=torch.float32)
        except Exception as exc:
            raise ModelLoadError(f"{found.path.name} cannot be read as a TAESD folder ({exc}).") from None
        return model.eval().requires_grad_(False)
    state = read_state_dict(found.path)
    try:
        mapped = decoder_state_dict(state)
        model = AutoencoderTiny(**decoder_config(mapped))
        model.decoder.load_state_dict(mapped, strict=True)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(f"{found.path.name} is not a TAESD decoder ({str(exc).splitlines()[0][:200]}).") from None
    return model.eval().requires_grad_(False)  # built in fp32


class TinyDecoders:
    """The TAESD decoders in use: loaded once per file version, kept on the device and dtype they last ran in.

    A few MB each; one per model group at most. Safe to call from the worker thread and the UI's threads."""

    def __init__(self) -> None:
        self._loaded: dict[str, tuple[str, Any]] = {}  # group -> (file version key, model)
        self._failed: dict[str, str] = {}  # file version key -> why it could not load (logged once)
        self._lock = threading.Lock()

    def get(self, models_dir: Path | str, family: str | None, device: Any = None, dtype: Any = None) -> Any | None:
        """The ``AutoencoderTiny`` for checkpoints of ``family`` on ``device`` in ``dtype``, or None when no TAESD
        file is installed for it (or it cannot be read: logged once)."""
        import torch

        found = tiny_decoder_for(models_dir, family)
        if found is None:
            return None
        key = f"{found.path}|{found.version}"
        with self._lock:
            held = self._loaded.get(found.group)
            if held is None or held[0] != key:
                if key in self._failed:
                    return None
                try:
                    model = load_tiny_autoencoder(found)
                except Exception as exc:  # a broken file must not fail the image: previews fall back, decode too
                    self._failed[key] = str(exc)
                    log.warning("TAESD %s not used: %s", found.path, exc)
                    return None
                log.info("TAESD loaded from %s", found.path)
                held = (key, model)
                self._loaded[found.group] = held
            model = held[1]
            param = next(model.parameters())
            if (device is not None and param.device != torch.device(device)) or (
                    dtype is not None and param.dtype != dtype):
                model.to(device=device, dtype=dtype)
            return model


# --- running ----------------------------------------------------------------------------------------------------
def decode(tiny: Any, latents: Any) -> Any:
    """Diffusion latents (the UNet's, not divided by the VAE's scaling factor) → pictures in [-1, 1], as
    ``vae.decode(...).sample`` gives them; in ``tiny``'s device and dtype."""
    import torch

    param = next(tiny.decoder.parameters())
    with torch.no_grad():
        return tiny.decode(latents.to(device=param.device, dtype=param.dtype), return_dict=False)[0]


def preview(tiny: Any, latents: Any, size: tuple[int, int] | None = None, side: int = PREVIEW_SIDE) -> Any:
    """A live preview of one latent (the first of a batch) through TAESD, as a PIL image whose longest side is at
    most ``side``: the latents are shrunk first (area average), so a preview costs the same at any picture size."""
    import torch
    from PIL import Image

    lat = latents.detach()
    lat = lat[:1] if lat.ndim == 4 else lat.unsqueeze(0)
    lat = lat[:, : tiny.config.latent_channels].float()
    longest = max(lat.shape[-2:]) * 8
    if longest > side:
        scale = side / longest
        target = (max(1, round(lat.shape[-2] * scale)), max(1, round(lat.shape[-1] * scale)))
        lat = torch.nn.functional.interpolate(lat, size=target, mode="area")
    pixels = decode(tiny, lat)[0].float().clamp(-1, 1)
    array = ((pixels + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    image = Image.fromarray(array)
    if size:
        w, h = size
        scale = min(1.0, side / max(w, h))
        wanted = (max(1, int(w * scale)), max(1, int(h * scale)))
        if image.size != wanted:
            image = image.resize(wanted, Image.Resampling.BILINEAR)
    return image
