"""``/sdapi/v1/options`` as A1111 clients use it: every option Atelier implements under A1111's name (Atelier's own
name where A1111 has none) with its current value, and a POST that takes any dict, the whole GET result included.

Open WebUI reads the options, changes ``sd_model_checkpoint`` and POSTs the whole dict back; A1111's own API test
flips ``send_seed``. So a POST:

* applies the options Atelier implements, each read leniently (``0``/``1`` booleans, numbers sent as text) and checked
  as the Settings tab checks it (``manager.apply_settings``); a bad value is a 422 naming the key, and then nothing
  is applied;
* accepts an option Atelier has but cannot change (``samples_format``, ``return_grid``...) when it keeps its value,
  and refuses another value with a 422 that says why; a value that only reports something (``sd_checkpoint_hash``)
  is never taken from the client;
* keeps the keys Atelier does not know and returns them with the next GET, so a client's round trip sees what it
  wrote; each is logged once as not used.

A changed ``sd_model_checkpoint`` starts loading the new checkpoint at once (A1111 loads it in the POST): a client
then polls ``/progress`` until ``job_count`` is 0, as SillyTavern does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.errors import AtelierError, InvalidRequest, ModelNotFound
from pipelines.settings import MEMORY_MODES

from .convert import PROMPT_OPTIONS, SPEEDUP_OVERRIDES, json_safe
from .lenient import as_bool, as_number, as_text

log = logging.getLogger("atelier.api")

MAX_KEPT_KEYS = 2000  # unknown keys kept for the round trip (A1111 has ~400 options); more are dropped, logged

# Settings fields a POST may set, by option key (A1111's name; Atelier's own where A1111 has none)
SETTING_OPTIONS: dict[str, str] = {
    **PROMPT_OPTIONS,
    **SPEEDUP_OVERRIDES,  # token merging, DeepCache, fast_decode: also override_settings keys
    "memory_mode": "memory_mode",
    "send_seed": "send_seed",
    "send_size": "send_size",
    "threads": "threads",  # Atelier's own: CPU threads for torch and OpenVINO (0: all physical cores)
}
SETTING_CHOICES: dict[str, tuple[str, ...]] = {"memory_mode": MEMORY_MODES}  # text options with a fixed set of values


@dataclass(frozen=True)
class FixedOption:
    """An A1111 option whose value is how Atelier works: a POST of that value is accepted, another one is a 422."""

    value: Callable[[Any], Any]  # settings → the value
    why: str  # what Atelier does instead, said in the 422
    also: tuple[Any, ...] = ()  # other values that mean the same (A1111's "" for "the default folder")


def _outputs(task: str = "") -> Callable[[Any], str]:
    return lambda settings: str(Path(settings.outputs_dir) / task) if task else str(settings.outputs_dir)


FOLDER_NOTE = "images are saved in the outputs folder, set with --outputs-dir"
FIXED_OPTIONS: dict[str, FixedOption] = {
    "samples_format": FixedOption(lambda s: "png", "Atelier saves PNG files (with A1111's parameters text)"),
    "samples_save": FixedOption(lambda s: True, "Atelier saves every image it makes"),
    "save_images": FixedOption(lambda s: True, "Atelier saves every image it makes"),
    "enable_pnginfo": FixedOption(lambda s: True, "Atelier always writes the parameters into its PNG files"),
    "return_grid": FixedOption(lambda s: False, "Atelier returns the images themselves, never a grid"),
    "eta_noise_seed_delta": FixedOption(lambda s: 0, "Atelier has no noise seed delta (ENSD)"),
    "img2img_color_correction": FixedOption(lambda s: False, "Atelier has no img2img color correction"),
    "img2img_fix_steps": FixedOption(
        lambda s: False, "Atelier's img2img runs steps x denoising strength, as A1111 does by default"),
    "inpainting_mask_weight": FixedOption(
        lambda s: 1.0, "inpainting checkpoints get the whole mask (A1111's conditioning mask strength 1)"),
    "live_previews_enable": FixedOption(lambda s: True, "Atelier always makes live previews"),
    "outdir_samples": FixedOption(_outputs(), FOLDER_NOTE, also=("",)),
    "outdir_txt2img_samples": FixedOption(_outputs("txt2img"), FOLDER_NOTE, also=("",)),
    "outdir_img2img_samples": FixedOption(_outputs("img2img"), FOLDER_NOTE, also=("",)),
    "outdir_extras_samples": FixedOption(_outputs("upscale"), FOLDER_NOTE, also=("",)),
}
# Options that report a fact: read, never written (a client POSTs back the value it read, maybe a stale one)
REPORTED_OPTIONS = ("sd_checkpoint_hash",)
MODEL_OPTIONS = ("sd_model_checkpoint", "sd_vae")
KNOWN_OPTIONS = (*MODEL_OPTIONS, *REPORTED_OPTIONS, *SETTING_OPTIONS, *FIXED_OPTIONS)


class OptionsStore:
    """The options of one server: read from the manager and its Settings, written through them, plus the keys no
    one at Atelier reads (kept for the next GET)."""

    def __init__(self, manager: Any, settings: Any):
        self.manager = manager
        self.settings = settings
        self._kept: dict[str, Any] = {}
        self._logged: set[str] = set()
        self._lock = threading.Lock()

    # --- GET ----------------------------------------------------------------------------------------------------
    def current(self) -> dict[str, Any]:
        """Every option Atelier implements with its value, then the keys clients left here."""
        default = self.manager.default_checkpoint()
        values: dict[str, Any] = {
            "sd_model_checkpoint": default.title if default is not None else None,
            "sd_checkpoint_hash": (self.manager.sha256(default) or "") if default is not None else "",
            "sd_vae": self.settings.vae or "Automatic",  # the manager keeps the default VAE in the shared settings
        }
        values.update({key: getattr(self.settings, field) for key, field in SETTING_OPTIONS.items()})
        values.update({key: option.value(self.settings) for key, option in FIXED_OPTIONS.items()})
        with self._lock:
            values.update(self._kept)
        return json_safe(values)

    # --- POST ---------------------------------------------------------------------------------------------------
    def apply(self, body: dict[str, Any]) -> None:
        """Check every key the body names, then apply them all (or nothing, on a 422 naming the key)."""
        checkpoint = self._checkpoint(body.get("sd_model_checkpoint"))
        vae = self._vae(body.get("sd_vae"))
        changes: dict[str, Any] = {}
        for key, field in SETTING_OPTIONS.items():
            value = body.get(key)
            if value is not None:
                changes[field] = self._setting_value(key, field, value)
        for key, option in FIXED_OPTIONS.items():
            if body.get(key) is not None:
                _check_fixed(key, option, body[key], self.settings)
        unknown = {key: value for key, value in body.items() if key not in KNOWN_OPTIONS}
        changes = {field: value for field, value in changes.items() if getattr(self.settings, field) != value}
        if changes:
            _with_option_names(lambda: self.manager.apply_settings(changes))
        if vae is not None:
            self.manager.set_default_vae(vae)
        if checkpoint is not None:
            self._switch(checkpoint)
        self._keep(unknown)

    def _checkpoint(self, value: Any) -> str | None:
        if value is None:
            return None
        name = _model_name(value, "sd_model_checkpoint")
        try:
            return self.manager.registry.find_checkpoint(name).name
        except ModelNotFound as exc:
            titles = [info.title for info in self.manager.checkpoints()]
            raise with_choices(exc, "sd_model_checkpoint", titles) from None

    def _vae(self, value: Any) -> str | None:
        if value is None:
            return None
        name = _model_name(value, "sd_vae")
        name = "Automatic" if name == "None" else name  # A1111's "None": the checkpoint's own VAE
        try:
            self.manager.registry.find_vae(name)
        except ModelNotFound as exc:
            names = ["Automatic", "None", *(info.name for info in self.manager.vaes())]
            raise with_choices(exc, "sd_vae", names) from None
        return name

    def _setting_value(self, key: str, field: str, value: Any) -> Any:
        """``value`` read as the Settings field's type (its range is checked by ``apply_settings``)."""
        current = getattr(self.settings, field)
        if isinstance(current, bool):
            return as_bool(value, key)
        if isinstance(current, int):
            return as_number(value, key, integer=True)
        if isinstance(current, float):
            return as_number(value, key)
        return as_text(value, key, SETTING_CHOICES.get(key))

    def _switch(self, name: str) -> None:
        """Make ``name`` the default checkpoint; a new one starts loading now (its load counts in ``/progress``)."""
        before = self.manager.default_checkpoint()
        self.manager.set_default_checkpoint(name)
        if before is not None and before.name == name:
            return
        try:
            self.manager.preload(name)
        except AtelierError as exc:  # a full queue: the next image loads it instead
            log.info("options: %s is loaded with the next image (%s)", name, exc)

    def _keep(self, unknown: dict[str, Any]) -> None:
        with self._lock:
            for key, value in unknown.items():
                if key not in self._kept and len(self._kept) >= MAX_KEPT_KEYS:
                    if key not in self._logged:
                        self._logged.add(key)
                        log.info("options: %d unknown keys are kept already; %r is dropped", MAX_KEPT_KEYS, key)
                    continue
                self._kept[key] = json_safe(value)
                if key not in self._logged:
                    self._logged.add(key)
                    log.info("options: %r is not an Atelier option; kept for the next GET, not used", key)


def _check_fixed(key: str, option: FixedOption, value: Any, settings: Any) -> None:
    current = option.value(settings)
    if value in option.also:
        return
    if isinstance(current, bool):
        same = as_bool(value, key) == current
    elif isinstance(current, (int, float)):
        same = as_number(value, key) == current
    else:
        same = isinstance(value, str) and value.strip().lower() == str(current).lower()
    if not same:
        raise InvalidRequest(f"{key} cannot be changed: {option.why}; it stays {current!r} (got {value!r}).", key)


def _model_name(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{key} must be a model name (text); got {value!r}.", key)
    if not value.strip():
        raise InvalidRequest(f"{key} must be a model name; got an empty text.", key)
    return value.strip()


def _with_option_names(apply: Callable[[], Any]) -> Any:
    """Run ``apply``; an ``InvalidRequest`` names the option key the client sent, not the Settings field."""
    try:
        return apply()
    except InvalidRequest as exc:
        names = {field: key for key, field in SETTING_OPTIONS.items()}
        if exc.field in names:
            raise InvalidRequest(exc.message.replace(exc.field, names[exc.field], 1), names[exc.field]) from None
        raise


def with_choices(exc: ModelNotFound, field: str, choices: list[str]) -> ModelNotFound:
    """``exc`` for ``field`` with the valid names listed (those the message does not name already)."""
    message = exc.message
    missing = [choice for choice in choices if choice.split(" [", 1)[0] not in message]
    if choices and missing:
        message = f"{message.rstrip('.')}. Valid names: {', '.join(choices)}."
    elif not choices:
        message = f"{message.rstrip('.')}. No models are installed."
    return ModelNotFound(message, field)
