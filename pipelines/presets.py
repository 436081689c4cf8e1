"""Speed presets for Text/Image to Image (``txt2img-preset``, ``img2img-preset``), as data, and the automatic choice
of one from the models a request uses.

Few-step models are distilled for one sampler, schedule, step count and CFG: LCM (and LCM-LoRA) for the LCM sampler
at 4 steps, SD-Turbo/SDXL-Turbo for one step on trailing timesteps, SDXL-Lightning and Hyper-SD for 1-8 steps on
trailing timesteps ("SGM Uniform"), TCD LoRAs for the TCD sampler. Every one of them runs without classifier-free
guidance (CFG 1: one UNet pass per step, the negative prompt unused). A preset sets those four controls; the user
may change any of them afterwards.

``detect_preset`` reads what names and safetensors metadata say (a checkpoint called ``sd_turbo``, a LoRA called
``Hyper-SD15-8steps-lora``, a LoRA whose ``modelspec.title`` says LCM). A LoRA named in the prompt wins over the
checkpoint: it is what the request adds for speed. A number of steps in the name (``4step``, ``8steps``) sets the
preset's steps. Imports nothing heavy (the UI reads this module).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .samplers import SGM_UNIFORM

STANDARD = "Standard"
LCM = "LCM (4 steps)"
TURBO = "Turbo (1 step)"
LIGHTNING = "Lightning / Hyper (4–8 steps)"
TCD = "TCD (4 steps)"
MAX_FEW_STEPS = 8  # a step count read from a name is used when it is at most this
STANDARD_CFG = 7.0


@dataclass(frozen=True)
class Preset:
    """What one preset sets: sampler (A1111 label), schedule type, steps and CFG scale."""

    name: str
    sampler: str
    schedule: str
    steps: int
    cfg_scale: float
    note: str = ""  # one line for the UI: what the preset is for

    @property
    def guided(self) -> bool:
        """Classifier-free guidance on (CFG above 1): two UNet passes per step, the negative prompt used."""
        return self.cfg_scale > 1


PRESETS: dict[str, Preset] = {
    # The Settings' default sampler and steps replace these two at run time (``standard_preset``)
    STANDARD: Preset(STANDARD, "Euler a", "Automatic", 20, STANDARD_CFG,
                     "Full quality: the usual sampler, steps and CFG."),
    LCM: Preset(LCM, "LCM", "Automatic", 4, 1.0, "LCM checkpoints and LCM-LoRA: 4 steps, no CFG."),
    TURBO: Preset(TURBO, "Euler a", SGM_UNIFORM, 1, 1.0,
                  "SD-Turbo / SDXL-Turbo: 1 step on trailing timesteps, no CFG."),
    LIGHTNING: Preset(LIGHTNING, "Euler", SGM_UNIFORM, 4, 1.0,
                      "SDXL-Lightning and Hyper-SD: their step count (4 by default) on trailing timesteps, no CFG."),
    TCD: Preset(TCD, "TCD", "Automatic", 4, 1.0, "TCD LoRAs: the TCD sampler, 4 steps, no CFG."),
}
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)

# What a model's name or metadata says, as whole words (camelCase split: "dreamshaperXL_lightningDPMSDE"), first
# match wins (checked in this order on each text). "hyper" alone is not enough ("HyperRealism" checkpoints):
# Hyper-SD's files say "Hyper-SD"/"HyperSD".
_KEYWORDS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?<![a-z])lcm(?![a-z])"), LCM),
    (re.compile(r"(?<![a-z])tcd(?![a-z])"), TCD),
    (re.compile(r"(?<![a-z])turbo(?![a-z])"), TURBO),
    (re.compile(r"(?<![a-z])lightning(?![a-z])"), LIGHTNING),
    (re.compile(r"(?<![a-z])hyper[-_ ]?sd(?![a-z])"), LIGHTNING),
)
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
_STEPS = re.compile(r"(?<![0-9])(\d{1,2})[-_ ]?steps?(?![a-z])")
# safetensors metadata keys that name or describe the model (not training data: kohya's tag counts may say "turbo")
METADATA_KEYS = ("modelspec.title", "modelspec.description", "modelspec.tags", "modelspec.architecture",
                 "ss_output_name", "ss_training_comment", "title", "name", "description")


@dataclass(frozen=True)
class PresetChoice:
    """A preset chosen from what a model says: the preset (its steps possibly from the name) and why."""

    preset: Preset
    source: str  # "the checkpoint sd_turbo", "the LoRA lcm-lora-sdv1-5"
    reason: str  # "its name says Turbo", "its metadata says LCM"

    @property
    def key(self) -> str:
        """Identifies this choice (the UI re-applies a preset only when the choice changes)."""
        return f"{self.preset.name}|{self.preset.steps}|{self.source}"

    @property
    def message(self) -> str:
        """The short note the UI shows."""
        return f"{self.preset.name} chosen: {self.reason} ({self.source}). Pick another preset to override."


def standard_preset(default_sampler: str | None = None, default_steps: int | None = None) -> Preset:
    """``Standard`` with the Settings' default sampler and steps."""
    preset = PRESETS[STANDARD]
    return replace(preset, sampler=default_sampler or preset.sampler, steps=int(default_steps or preset.steps))


def preset_for(name: str, default_sampler: str | None = None, default_steps: int | None = None) -> Preset:
    """The preset called ``name`` (``Standard`` with the Settings' defaults); an unknown name is ``Standard``."""
    if name not in PRESETS or name == STANDARD:
        return standard_preset(default_sampler, default_steps)
    return PRESETS[name]


def preset_from_text(text: str) -> Preset | None:
    """The preset a name or description asks for (``None`` when it names no few-step kind), with the step count
    the text gives (``8steps``) when it is one a few-step model runs."""
    lowered = _CAMEL.sub("_", text or "").lower()
    for pattern, name in _KEYWORDS:
        if pattern.search(lowered):
            preset = PRESETS[name]
            steps = _STEPS.search(lowered)
            if steps and 1 <= int(steps.group(1)) <= MAX_FEW_STEPS and name != TURBO:
                preset = replace(preset, steps=int(steps.group(1)))
            return preset
    return None


def _kind_word(preset: Preset) -> str:
    return preset.name.split(" (")[0]


def detect_model(label: str, name: str, metadata: Mapping[str, Any] | None = None) -> PresetChoice | None:
    """The preset one model file asks for: by its ``name``, else by its safetensors ``metadata``."""
    preset = preset_from_text(name)
    if preset is not None:
        return PresetChoice(preset, f"{label} {name}", f"its name says {_kind_word(preset)}")
    for key in METADATA_KEYS:
        value = (metadata or {}).get(key)
        if isinstance(value, str) and (preset := preset_from_text(value)) is not None:
            return PresetChoice(preset, f"{label} {name}", f"its metadata ({key}) says {_kind_word(preset)}")
    return None


def detect_preset(checkpoint: tuple[str, Mapping[str, Any]] | None,
                  loras: Iterable[tuple[str, Mapping[str, Any]]] = ()) -> PresetChoice | None:
    """The preset for a request's models: the first prompt LoRA that names a few-step kind, else the checkpoint;
    ``None`` when none does. Each model is ``(name, safetensors metadata)``."""
    for name, metadata in loras:
        if (choice := detect_model("the LoRA", name, metadata)) is not None:
            return choice
    if checkpoint is not None:
        return detect_model("the checkpoint", checkpoint[0], checkpoint[1])
    return None


def suggest_preset(registry: Any, checkpoint: Any, prompt: str,
                   metadata: Callable[[Any], Mapping[str, Any]] | None = None) -> PresetChoice | None:
    """``detect_preset`` over installed files: ``checkpoint`` a registry entry (or None), the LoRAs of ``prompt``'s
    ``<lora:...>`` tags found by ``registry.find_lora``, metadata read by ``metadata(info)`` (default: the
    registry's). Unreadable files and unknown LoRAs count as saying nothing."""
    from .prompt_parser import parse_extra_networks, strip_comments

    read = metadata or registry.metadata

    def safe_metadata(info: Any) -> Mapping[str, Any]:
        try:
            return read(info) or {}
        except Exception:  # a vanished or unreadable file says nothing
            return {}

    loras = []
    for tag in parse_extra_networks(strip_comments(prompt or ""))[1]:
        if tag.network != "lora" or not tag.name:
            continue
        info = registry.find_lora(tag.name)
        if info is not None:
            loras.append((str(info.name), safe_metadata(info)))
    model = (str(checkpoint.name), safe_metadata(checkpoint)) if checkpoint is not None else None
    return detect_preset(model, loras)
