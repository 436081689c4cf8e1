"""Reading model files without running them: safetensors headers, ``.ckpt`` safe unpickling, state dicts.

A leaf of the engine (it imports nothing of pipelines/ but ``errors``): the registry reads names and shapes through
it to detect families, the loaders read tensors through it. Nothing here knows what a checkpoint family is.
"""

from __future__ import annotations

import _codecs
import json
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

from .errors import ModelLoadError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors refuses larger headers too


# ---------------------------------------------------------------------------------------------------------------
# Reading names and shapes without reading tensors


def read_safetensors_header(path: Path) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Tensor name -> shape and the ``__metadata__`` dict, from the JSON header only.

    Raises ``ModelLoadError`` for a file that is not safetensors or is cut short (its header points past the end).
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelLoadError(f"{path.name} is empty or cut short ({size} bytes): download it again.")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or n + 8 > size:
            raise ModelLoadError(f"{path.name} is not a valid .safetensors file (corrupt or cut short): "
                                 "download it again.")
        raw = f.read(n)
    try:
        header = json.loads(raw)
        metadata = header.pop("__metadata__", None) or {}
        end = max((int(t["data_offsets"][1]) for t in header.values() if isinstance(t, dict)), default=0)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):  # not JSON, or not safetensors' shape
        raise ModelLoadError(f"{path.name} has a corrupt .safetensors header: download it again.") from None
    if 8 + n + end > size:
        raise ModelLoadError(
            f"{path.name} is cut short ({size} of {8 + n + end} bytes): the download did not finish. "
            "Download it again."
        )
    return {k: list(v.get("shape", [])) for k, v in header.items() if isinstance(v, dict)}, metadata


def read_ckpt_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape of a ``.ckpt``/``.pt`` through safe, memory-mapped unpickling (see ``safe_torch_load``)."""
    sd = unwrap_state_dict(safe_torch_load(path, mmap=True))
    return {k: list(getattr(v, "shape", [])) for k, v in sd.items()}


# ---------------------------------------------------------------------------------------------------------------
# Safe unpickling of .ckpt / .pt


class ModelCheckpoint:
    """Stand-in for Lightning's ``ModelCheckpoint`` callback class, which real SD 1.x ``.ckpt`` files reference
    (as a key of their ``callbacks`` dict). Lightning is not installed; the class is never instantiated with state
    that matters. ComfyUI registers the same stand-in."""


def _allowed_ckpt_globals() -> list[Any]:
    """Exactly what real SD checkpoints carry beside tensors: Lightning's callback class, numpy scalars and dtypes
    (``global_step``, ``best_model_score``), and ``_codecs.encode`` (how protocol-2 pickles store bytes)."""
    import numpy as np

    try:
        scalar = np._core.multiarray.scalar
    except AttributeError:  # numpy 1.x
        scalar = np.core.multiarray.scalar
    allowed: list[Any] = [
        (ModelCheckpoint, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
        (ModelCheckpoint, "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint"),
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
        (_codecs.encode, "_codecs.encode"),
    ]
    allowed += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return allowed


def safe_torch_load(path: Path, mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` with the small allow-list above; anything else is refused, never run.

    ``mmap=True`` maps tensor storages instead of reading them (cheap key/shape inspection for the registry).
    """
    import torch

    path = Path(path)
    use_mmap = mmap and zipfile.is_zipfile(path)  # legacy (pre-1.6) pickles cannot be mapped
    try:
        with torch.serialization.safe_globals(_allowed_ckpt_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if not found:  # random bytes or a cut-short file fail the same way: do not call a broken download malicious
            raise ModelLoadError(
                f"{path.name} was refused: it is damaged or not a plain model checkpoint. "
                "Nothing from it was run. Download it again, or use a .safetensors version of this model."
            ) from None
        raise ModelLoadError(
            f"{path.name} was refused: its pickle contains objects or code that a plain model file does not "
            f"need (it asks for {found[1]}). Nothing from it was run. Use a .safetensors version of this model."
        ) from None
    except PermissionError:
        raise permission_error(path) from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ModelLoadError(
            f"{path.name} cannot be read: the file is damaged or cut short ({first_line(exc)}). Download it again."
        ) from None


def unwrap_state_dict(obj: Any) -> dict[str, Any]:
    """The tensor dict inside a loaded checkpoint (``{"state_dict": {...}}`` nesting as Lightning writes it)."""
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelLoadError("This file does not hold a state dict of named tensors; it is not a model checkpoint.")
    import torch

    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


def read_state_dict(path: Path) -> dict[str, Any]:
    """All tensors of a single-file model; ``ModelLoadError`` for damaged, refused or unreadable files."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return unwrap_state_dict(safe_torch_load(path))
    try:
        read_safetensors_header(path)  # cheap check for a cut-short download before mapping the file
        return _read_safetensors(path)
    except ModelLoadError:
        raise
    except PermissionError:
        raise permission_error(path) from None
    except Exception as exc:  # safetensors raises its own error types
        raise ModelLoadError(f"{path.name} cannot be read: the file is damaged ({first_line(exc)}). "
                             "Download it again.") from None


def permission_error(path: Path) -> ModelLoadError:
    return ModelLoadError(f"{path.name}: permission denied. Make the file readable for the user running Atelier "
                          f"({path}).")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
