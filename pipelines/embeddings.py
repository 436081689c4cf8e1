"""Textual-inversion embeddings as A1111 reads them (``modules/textual_inversion/textual_inversion.py``
``EmbeddingDatabase.load_from_file``), without running pickled code.

File layouts read:

* A1111 ``.pt``: ``{"string_to_param": {"*": tensor[n, width]}, "name", "step", "sd_checkpoint", ...}``;
* ``.safetensors`` with ``emb_params`` (A1111 / kohya), or SDXL's ``clip_l`` + ``clip_g``;
* diffusers / concept-library ``.bin``: one ``{token: tensor[width]}`` entry.

An embedding is used by its file name (without extension) anywhere in a prompt. Its vectors replace the name's tokens
in the text encoder's input (pipelines/prompt_encoding.py); whether its width fits the checkpoint's text encoder is
decided there, so the same file list serves SD 1.x (768), SD 2.x (1024) and SDXL (768 + 1280).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint_files import first_line, safe_torch_load
from .errors import ModelLoadError

log = logging.getLogger(__name__)

KEEP_LOADED = 64  # embeddings are small (a few KB each): keep the recently used ones in memory


@dataclass(frozen=True)
class Embedding:
    """One embedding file's vectors and what A1111 reports of it (``/sdapi/v1/embeddings``)."""

    name: str
    path: Path
    vectors: Any  # tensor [n, width], or {"clip_l": tensor, "clip_g": tensor} for SDXL
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None

    @property
    def vector_count(self) -> int:
        first = next(iter(self.vectors.values())) if isinstance(self.vectors, dict) else self.vectors
        return int(first.shape[0])

    @property
    def widths(self) -> tuple[int, ...]:
        """The vector width per text encoder (one for SD 1.x/2.x files, CLIP-L and CLIP-G for SDXL files)."""
        if isinstance(self.vectors, dict):
            return tuple(int(self.vectors[key].shape[-1]) for key in ("clip_l", "clip_g"))
        return (int(self.vectors.shape[-1]),)


def read_embedding(path: Path, name: str | None = None) -> Embedding:
    """Read one embedding file; ``ModelLoadError`` naming the file when it is not one A1111 could read."""
    path = Path(path)
    name = name or path.stem
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(path), device="cpu")
        else:
            data = safe_torch_load(path)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"The embedding {path.name} cannot be read ({first_line(exc)}).", field="prompt") from None
    return Embedding(name, path, _vectors_of(data, path.name), *_training_facts(data))


def _vectors_of(data: Any, filename: str) -> Any:
    import torch

    def rows(tensor: Any) -> torch.Tensor:
        tensor = torch.as_tensor(tensor.detach() if hasattr(tensor, "detach") else tensor).float()
        return tensor.unsqueeze(0) if tensor.dim() == 1 else tensor.reshape(-1, tensor.shape[-1])

    if isinstance(data, dict):
        if isinstance(data.get("string_to_param"), dict) and data["string_to_param"]:
            return rows(next(iter(data["string_to_param"].values())))
        if "emb_params" in data:
            return rows(data["emb_params"])
        if "clip_l" in data and "clip_g" in data:
            return {"clip_l": rows(data["clip_l"]), "clip_g": rows(data["clip_g"])}
        tensors = [value for value in data.values() if isinstance(value, torch.Tensor)]
        if len(data) == 1 and tensors:  # diffusers' {"<token>": tensor}
            return rows(tensors[0])
    raise ModelLoadError(f"{filename} is not a textual-inversion embedding A1111 could read (expected "
                         "string_to_param, emb_params, clip_l/clip_g or one token).", field="prompt")


def _training_facts(data: Any) -> tuple[int | None, str | None, str | None]:
    if not isinstance(data, dict):
        return None, None, None
    step = data.get("step")
    checkpoint, checkpoint_name = data.get("sd_checkpoint"), data.get("sd_checkpoint_name")
    return (int(step) if isinstance(step, int) else None, str(checkpoint) if checkpoint else None,
            str(checkpoint_name) if checkpoint_name else None)


@dataclass
class EmbeddingReport:
    """The installed embeddings as A1111's ``/sdapi/v1/embeddings`` splits them for the current checkpoint."""

    loaded: dict[str, Embedding] = field(default_factory=dict)  # usable with the checkpoint's text encoder(s)
    skipped: dict[str, Embedding] = field(default_factory=dict)  # made for another model's width
    skipped_reasons: dict[str, str] = field(default_factory=dict)  # files that are not readable embeddings


class EmbeddingLibrary:
    """Embeddings read on first use and kept while their files are unchanged (by path, size and mtime)."""

    def __init__(self, keep: int = KEEP_LOADED):
        self.keep = keep
        self._loaded: OrderedDict[tuple[str, int, int], Embedding] = OrderedDict()
        self._lock = threading.Lock()
        self._reported: set[str] = set()

    def get(self, info: Any) -> Embedding:
        """The embedding of registry entry ``info`` (``ModelLoadError`` when the file is not an embedding)."""
        stat = Path(info.path).stat()
        key = (str(info.path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            found = self._loaded.get(key)
            if found is not None:
                self._loaded.move_to_end(key)
                return found
        embedding = read_embedding(Path(info.path))  # A1111 names an embedding by its file name, wherever it is
        with self._lock:
            self._loaded[key] = embedding
            while len(self._loaded) > self.keep:
                self._loaded.popitem(last=False)
        return embedding

    def readable(self, infos: list[Any]) -> tuple[list[Embedding], dict[str, str]]:
        """Every embedding of ``infos`` that reads, and {name: reason} for those that do not (logged once each)."""
        good: list[Embedding] = []
        bad: dict[str, str] = {}
        for info in infos:
            try:
                good.append(self.get(info))
            except (ModelLoadError, OSError) as exc:
                bad[Path(info.path).stem] = str(exc)
                if str(info.path) not in self._reported:
                    self._reported.add(str(info.path))
                    log.warning("Skipping the embedding %s: %s", info.path, exc)
        return good, bad
