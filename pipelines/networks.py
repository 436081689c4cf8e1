"""LoRAs named in a prompt (``<lora:name:te:unet>``), applied to a checkpoint with diffusers' own LoRA loading.

A LoRA is loaded once per checkpoint (``pipe.load_lora_weights``, which converts kohya/A1111 key names, SDXL's
``lora_te1_``/``lora_te2_`` and diffusers/peft files, and LyCORIS kinds diffusers knows), as a named adapter that
stays in the checkpoint's modules; each request then switches adapters on with its own weights
(``set_adapters``) or off (``disable_lora``). peft's layers add nothing while switched off or at weight 0, so a
request without a LoRA draws exactly what it drew before any LoRA was used (fusing would not: fuse-then-unfuse is
not bit-exact). At most ``KEEP_ADAPTERS`` adapters stay loaded per checkpoint; the least recently used goes first.

The adapters live on the cache entry's modules (``entry.loras``: adapter → the file version it holds); this room is
the only one that changes them.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint_files import first_line, read_state_dict
from .errors import AtelierError, InvalidRequest
from .infotext import Note
from .prompt_parser import ExtraNetworkTag
from .registry import FAMILY_GROUP, NETWORK_GROUP_LABELS

log = logging.getLogger(__name__)

KEEP_ADAPTERS = 8


@dataclass(frozen=True)
class LoraUse:
    """One LoRA a request asks for: the file (a registry entry), the name the prompt used, and its weights."""

    info: Any  # ModelInfo (kind "lora")
    mentioned: str
    te: float = 1.0
    unet: float = 1.0


def requested_loras(tags: list[ExtraNetworkTag], find: Any) -> tuple[list[LoraUse], list[str]]:
    """The LoRAs of a prompt's ``<lora:...>`` tags found by ``find(name)`` (the registry's ``find_lora``), and a
    warning for each name not found (the image is made without it, as A1111 does). Other tag kinds
    (``hypernet``, ...) are warned about and left out."""
    uses: list[LoraUse] = []
    warnings: list[str] = []
    for tag in tags:
        if tag.network != "lora":
            warnings.append(f"Extra network not supported: <{tag.kind}:...> ({tag.text})")
            continue
        multipliers = tag.lora_multipliers()  # PromptSyntaxError (422) for weights that are not numbers
        info = find(tag.name) if tag.name else None
        if info is None:
            warnings.append(f"LoRA not found: {tag.name}")
            continue
        uses.append(LoraUse(info, tag.name, multipliers.te, multipliers.unet))
    return uses, warnings


def check_family(uses: list[LoraUse], family: str) -> None:
    """A LoRA made for another model group (an SDXL LoRA on SD 1.5), or one the registry could not read:
    ``InvalidRequest`` (422) naming the file."""
    group = FAMILY_GROUP.get(family)
    for use in uses:
        problem = getattr(use.info, "problem", None)
        if problem:
            raise InvalidRequest(f"The LoRA {use.info.path.name} cannot be used: {problem}", field="prompt")
        made_for = getattr(use.info, "family", None)
        if group and made_for and made_for != group:
            raise InvalidRequest(
                f"The LoRA {use.info.path.name} is made for {NETWORK_GROUP_LABELS.get(made_for, made_for)} "
                f"checkpoints; this checkpoint is {NETWORK_GROUP_LABELS.get(group, group)}.", field="prompt")


def adapter_name(info: Any) -> str:
    """A peft adapter name for a LoRA file (peft names may not hold dots)."""
    return "lora_" + re.sub(r"\W", "_", str(info.name))


def apply_loras(entry: Any, pipe: Any, uses: list[LoraUse]) -> None:
    """Switch the request's LoRAs on (loading any not yet loaded) or every adapter off. A LoRA that fails to load
    leaves nothing of it behind, and the checkpoint stays usable."""
    loaded: OrderedDict[str, str] = entry.loras
    if not uses:
        if loaded:
            pipe.disable_lora()
        return
    names: list[str] = []
    weights: list[dict[str, float]] = []
    for use in uses:
        name = adapter_name(use.info)
        _ensure_loaded(loaded, pipe, name, use.info)
        names.append(name)
        weights.append(_component_weights(pipe, use))
    _forget_old(loaded, pipe, keep=set(names))
    pipe.enable_lora()
    pipe.set_adapters(names, weights)


def lora_hashes(uses: list[LoraUse], hash_of: Any) -> Note | None:
    """A1111's ``Lora hashes: "name: hash12, ..."`` (names as the prompt wrote them, without ``:`` and ``,``)."""
    pairs = []
    for use in uses:
        digest = hash_of(use.info)
        if digest:
            pairs.append(f"{use.mentioned.replace(':', '').replace(',', '')}: {digest}")
    return Note.param("Lora hashes", ", ".join(pairs)) if pairs else None


def _ensure_loaded(loaded: OrderedDict[str, str], pipe: Any, name: str, info: Any) -> None:
    version = _file_version(Path(info.path))
    if loaded.get(name) == version:
        loaded.move_to_end(name)
        return
    if name in loaded:  # the file changed on disk: load it again
        pipe.delete_adapters(name)
        del loaded[name]
    try:
        state_dict = read_state_dict(Path(info.path))
    except AtelierError as exc:
        raise InvalidRequest(f"The LoRA {exc}", field="prompt") from None
    try:
        pipe.load_lora_weights(state_dict, adapter_name=name)
    except Exception as exc:
        _remove_partial(pipe, name)
        raise InvalidRequest(f"The LoRA {Path(info.path).name} does not fit this checkpoint "
                             f"({first_line(exc)}).", field="prompt") from exc
    loaded[name] = version
    log.info("loaded LoRA %s as adapter %s", info.path, name)


def _remove_partial(pipe: Any, name: str) -> None:
    """After a failed load: drop whatever part of adapter ``name`` reached the UNet or a text encoder."""
    try:
        if name in pipe.get_list_adapters().get("unet", []) or any(
                name in adapters for adapters in pipe.get_list_adapters().values()):
            pipe.delete_adapters(name)
    except Exception:  # nothing was injected: nothing to remove
        log.debug("no partial adapter %s to remove", name, exc_info=True)


def _component_weights(pipe: Any, use: LoraUse) -> dict[str, float]:
    """A1111's two multipliers as diffusers' per-component weights: ``te`` for the text encoder(s)."""
    weights = {"unet": use.unet}
    for component in ("text_encoder", "text_encoder_2"):
        if getattr(pipe, component, None) is not None:
            weights[component] = use.te
    return weights


def _forget_old(loaded: OrderedDict[str, str], pipe: Any, keep: set[str]) -> None:
    while len(loaded) > KEEP_ADAPTERS:
        oldest = next((name for name in loaded if name not in keep), None)
        if oldest is None:
            return
        pipe.delete_adapters(oldest)
        del loaded[oldest]


def _file_version(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"
