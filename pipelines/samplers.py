"""A1111 sampler names mapped to diffusers schedulers, as data.

``make_scheduler(label, schedule, pristine_config)`` builds a fresh scheduler for each request: diffusers
schedulers keep state and are not thread-safe. Unknown names are an error, never a silent fallback.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidRequest


@dataclass(frozen=True)
class SamplerSpec:
    """One A1111 sampler label: the diffusers class name and the config overrides it needs."""

    scheduler_class: str
    overrides: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    needs: str | None = None  # optional Python package the scheduler imports at run time
    call_kwargs: dict[str, Any] = field(default_factory=dict)  # what the pipeline call passes to ``step``


_DPMPP = {"algorithm_type": "dpmsolver++", "solver_order": 2}

SAMPLERS: dict[str, SamplerSpec] = {
    "Euler a": SamplerSpec("EulerAncestralDiscreteScheduler", {}, ("euler_ancestral", "k_euler_a")),
    "Euler": SamplerSpec("EulerDiscreteScheduler", {}, ("euler", "k_euler")),
    "LMS": SamplerSpec("LMSDiscreteScheduler", {}, ("lms", "k_lms"), needs="scipy"),
    "Heun": SamplerSpec("HeunDiscreteScheduler", {}, ("heun", "k_heun")),
    "DPM2": SamplerSpec("KDPM2DiscreteScheduler", {}, ("dpm2", "k_dpm_2")),
    "DPM2 a": SamplerSpec("KDPM2AncestralDiscreteScheduler", {}, ("dpm2_a", "k_dpm_2_a")),
    "DPM++ 2M": SamplerSpec("DPMSolverMultistepScheduler", dict(_DPMPP), ("dpmpp_2m", "k_dpmpp_2m")),
    "DPM++ 2M Karras": SamplerSpec(
        "DPMSolverMultistepScheduler", {**_DPMPP, "use_karras_sigmas": True}, ("dpmpp_2m_karras",)
    ),
    "DPM++ SDE Karras": SamplerSpec(
        "DPMSolverSDEScheduler", {"use_karras_sigmas": True}, ("dpmpp_sde_karras",), needs="torchsde"
    ),
    "DPM++ 2M SDE Karras": SamplerSpec(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        ("dpmpp_2m_sde_karras",),
    ),
    "DPM++ 2M SDE": SamplerSpec(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
        ("dpmpp_2m_sde",),
    ),
    "DDIM": SamplerSpec("DDIMScheduler", {}, ("ddim",)),
    "PLMS": SamplerSpec("PNDMScheduler", {"skip_prk_steps": True}, ("plms", "pndm")),
    "UniPC": SamplerSpec("UniPCMultistepScheduler", {}, ("unipc",)),
    "LCM": SamplerSpec("LCMScheduler", {}, ("lcm",)),
    # Trajectory Consistency Distillation (TCD LoRAs, Hyper-SD): gamma (diffusers' ``eta``) 0.3 as diffusers' TCD
    # docs and Forge's TCD sampler default; the SD pipelines pass their own ``eta=0`` unless the call says otherwise.
    "TCD": SamplerSpec("TCDScheduler", {}, ("tcd",), call_kwargs={"eta": 0.3}),
}

SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)

# A1111 >= 1.9 writes the schedule separately ("Schedule type: Karras"). Values are config overrides.
SGM_UNIFORM = "SGM Uniform"
SCHEDULES: dict[str, dict[str, Any]] = {
    "Automatic": {},
    "Uniform": {},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "Beta": {"use_beta_sigmas": True},
    # A1111's ``sgm_uniform`` (sd_schedulers.py): timesteps evenly spaced from the last training step down, the
    # final one left out, which is diffusers' "trailing" spacing; what Turbo, Lightning and Hyper models are made for.
    SGM_UNIFORM: {"timestep_spacing": "trailing"},
}
SCHEDULE_NAMES: tuple[str, ...] = tuple(SCHEDULES)
# A1111's internal names (``/sdapi/v1/schedulers``' ``name``) and aliases; the labels are the keys above
SCHEDULE_IDS: dict[str, str] = {label: label.lower().replace(" ", "_") for label in SCHEDULES}
SCHEDULE_ALIASES: dict[str, str] = {"sgmuniform": SGM_UNIFORM}

_SCHEDULE_CAPABLE = {
    "EulerDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSDEScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "LMSDiscreteScheduler",
    "UniPCMultistepScheduler",
}
# Schedulers whose ``set_timesteps`` honours ``timestep_spacing="trailing"`` (LCM and TCD space their own steps)
_TRAILING_CAPABLE = _SCHEDULE_CAPABLE | {
    "EulerAncestralDiscreteScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
}


def _key(name: str) -> str:
    return " ".join(name.strip().lower().replace("_", " ").split())


_LOOKUP: dict[str, str] = {}
for _label, _spec in SAMPLERS.items():
    _LOOKUP[_key(_label)] = _label
    for _alias in _spec.aliases:
        _LOOKUP[_key(_alias)] = _label


def resolve_sampler(name: str, schedule: str | None = None) -> tuple[str, str]:
    """Return the canonical ``(sampler label, schedule name)`` for what a person or an A1111 client sent.

    Accepts A1111 labels case-insensitively, k-diffusion aliases, and the split form
    ("DPM++ 2M" + schedule "Karras") which maps onto the combined label when one exists.
    Raises ``InvalidRequest`` naming the allowed values.
    """
    label = _LOOKUP.get(_key(name or ""))
    if label is None and _key(schedule or "automatic") == "automatic":  # old names carry it: "DPM2 a Karras"
        label, schedule = _split_old_name(name or "")
    if label is None:
        raise InvalidRequest(
            f"Unknown sampler '{name}'. Choose one of: {', '.join(SAMPLER_NAMES)}.", field="sampler_name"
        )
    sched = resolve_schedule(schedule) if schedule else "Automatic"
    if sched == "Karras" and f"{label} Karras" in SAMPLERS:
        return f"{label} Karras", "Automatic"
    capable = _TRAILING_CAPABLE if sched == SGM_UNIFORM else _SCHEDULE_CAPABLE
    if sched not in ("Automatic", "Uniform") and SAMPLERS[label].scheduler_class not in capable:
        raise InvalidRequest(f"Sampler '{label}' does not support the '{sched}' schedule.", field="scheduler")
    return label, sched


def _split_old_name(name: str) -> tuple[str | None, str | None]:
    """An old A1111 name with its schedule at the end ("DPM++ 2M SDE Exponential") as (label, schedule); (None,
    None) when the name does not end with a schedule type after a known sampler."""
    key = _key(name)
    for schedule in SCHEDULE_NAMES:
        suffix = " " + _key(schedule)
        if key.endswith(suffix) and (label := _LOOKUP.get(key[: -len(suffix)])) is not None:
            return label, schedule
    return None, None


def resolve_schedule(schedule: str) -> str:
    """The schedule type's label for an A1111 label or name in any case ("SGM Uniform", "sgm_uniform",
    "SGMUniform"); raises ``InvalidRequest`` naming the allowed labels."""
    key = _key(schedule)
    for label in SCHEDULE_NAMES:
        if key in (_key(label), _key(SCHEDULE_IDS[label])):
            return label
    alias = SCHEDULE_ALIASES.get(key.replace(" ", ""))
    if alias is None:
        raise InvalidRequest(
            f"Unknown schedule type '{schedule}'. Choose one of: {', '.join(SCHEDULE_NAMES)}.", field="scheduler"
        )
    return alias


def sampler_call_arguments(label: str) -> dict[str, Any]:
    """Keyword arguments the diffusers pipeline call needs for sampler ``label`` (TCD's gamma as ``eta``)."""
    spec = SAMPLERS.get(label)
    return dict(spec.call_kwargs) if spec is not None else {}


def make_scheduler(label: str, schedule: str, pristine_config: dict[str, Any], seed: int | None = None):
    """Build a new diffusers scheduler for ``label`` from the checkpoint's own (pristine) scheduler config.

    The pristine config carries ``prediction_type`` (v-prediction for SD 2.x 768-v) and the timestep spacing.
    Every spec states ``use_karras_sigmas`` explicitly so that overrides never accumulate.
    """
    import diffusers

    label, schedule = resolve_sampler(label, schedule)
    spec = SAMPLERS[label]
    if spec.needs:
        try:
            __import__(spec.needs)
        except ImportError as exc:  # pragma: no cover - both are in requirements.txt
            raise InvalidRequest(
                f"Sampler '{label}' needs the Python package '{spec.needs}'. Run ./launch.sh again to install it.",
                field="sampler_name",
            ) from exc
    cls = getattr(diffusers, spec.scheduler_class)
    config = {k: v for k, v in dict(pristine_config).items() if not k.startswith("_")}
    overrides: dict[str, Any] = {}
    if spec.scheduler_class in _SCHEDULE_CAPABLE:
        overrides.update(use_karras_sigmas=False)
        if "use_exponential_sigmas" in cls.__init__.__code__.co_varnames:
            overrides.update(use_exponential_sigmas=False, use_beta_sigmas=False)
    overrides.update(spec.overrides)
    overrides.update(SCHEDULES[schedule])
    if spec.scheduler_class == "DPMSolverSDEScheduler" and seed is not None:
        overrides["noise_sampler_seed"] = seed
    if spec.scheduler_class == "DPMSolverMultistepScheduler" and config.get("prediction_type") == "v_prediction":
        overrides.setdefault("final_sigmas_type", "zero")
    return cls.from_config(config, **overrides)


class SchedulerTemplates:
    """Fresh schedulers for each request (they keep state), deep-copied from a per-config template.

    Building some schedulers is slow (KDPM2 maps all 1,000 training sigmas in Python: ~1 s on a CPU core), so the
    first build per (sampler, schedule, config) is kept and each request gets a deep copy of it. The last 32
    templates are kept. Used from the manager's one worker thread only.
    """

    def __init__(self, keep: int = 32):
        self.keep = keep
        self._templates: dict[tuple[str, str, str], Any] = {}

    def fresh(self, label: str, schedule: str, pristine_config: dict[str, Any], seed: int) -> Any:
        """A new scheduler for sampler ``label`` and ``schedule`` over the checkpoint's pristine config."""
        key = (label, schedule, json.dumps(pristine_config, sort_keys=True, default=str))
        template = self._templates.get(key)
        if template is None:
            template = make_scheduler(label, schedule, pristine_config, seed)
            self._templates[key] = template
            while len(self._templates) > self.keep:
                self._templates.pop(next(iter(self._templates)))
        scheduler = copy.deepcopy(template)
        if hasattr(scheduler, "noise_sampler_seed"):  # DPM++ SDE: its Brownian noise follows the request's seed
            scheduler.noise_sampler_seed = seed
            scheduler.noise_sampler = None
        return scheduler
