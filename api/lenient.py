"""Reading what A1111 clients send as A1111 reads it: ``0``/``1`` and ``"true"`` for booleans, numbers sent as text,
and unknown fields ignored but named back (``info.warnings``).

The request bodies themselves are pydantic models in lax mode (``api/models.py``): ``"-1"`` is a seed, ``"1.0"`` a
scale, ``0``/``1`` a boolean, ``""`` or ``null`` no image, as pydantic reads them. What has no model to do it (the
values of ``/sdapi/v1/options``, a free-form dict) goes through the readers here, which raise ``InvalidRequest``
naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from pipelines.errors import InvalidRequest

TRUE_TEXTS = ("true", "yes", "on", "1")
FALSE_TEXTS = ("false", "no", "off", "0")


# A1111's schedule types (modules/sd_schedulers.py) that Atelier does not draw. A1111 falls back to the sampler's
# own schedule for a name it has no function for; a client sending one (SillyTavern's default is "normal") gets
# Atelier's "Automatic" and a warning naming it, not a 422.
A1111_ONLY_SCHEDULES = ("polyexponential", "kl_optimal", "align_your_steps", "simple", "normal", "ddim")
SCHEDULE_FIELDS = ("scheduler", "hr_scheduler")


def drawn_schedule(value: str | None) -> str | None:
    """``value``, or ``"Automatic"`` for an A1111 schedule type that Atelier does not draw."""
    return "Automatic" if _a1111_only(value) else value


def unknown_field_warnings(body: Any) -> list[str]:
    """One ``info.warnings`` line per field of ``body`` that no A1111 or Atelier field has (A1111 ignores them), and
    per schedule type drawn as "Automatic" instead."""
    extra = getattr(body, "model_extra", None) or {}
    ignored = [f"Unknown field ignored: {name}" for name in sorted(extra)]
    replaced = [f"{key} '{getattr(body, key)}' is not available: drawn with 'Automatic'"
                for key in SCHEDULE_FIELDS if _a1111_only(getattr(body, key, None))]
    return ignored + replaced


def _a1111_only(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower().replace(" ", "_") in A1111_ONLY_SCHEDULES


def as_bool(value: Any, key: str) -> bool:
    """``true``/``false``, ``1``/``0`` or their texts (``"true"``, ``"0"``, ``"on"``) as a boolean."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE_TEXTS + FALSE_TEXTS:
        return value.strip().lower() in TRUE_TEXTS
    raise InvalidRequest(f"{key} must be true or false (or 1 or 0); got {_shown(value)}.", key)


def as_number(value: Any, key: str, integer: bool = False) -> int | float:
    """A JSON number or a number sent as text (``"2"``, ``"0.5"``); ``integer``: a whole number (``2.0`` is 2)."""
    number: float | int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, (int, float)):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        kind = "a whole number" if integer else "a number"
        raise InvalidRequest(f"{key} must be {kind}; got {_shown(value)}.", key)
    if integer:
        if number != int(number):
            raise InvalidRequest(f"{key} must be a whole number; got {_shown(value)}.", key)
        return int(number)
    return float(number)


def as_text(value: Any, key: str, choices: Sequence[str] | None = None) -> str:
    """Text (numbers are not names); with ``choices``, one of them in any case, returned as listed."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{key} must be text; got {_shown(value)}.", key)
    if choices is None:
        return value
    match = next((choice for choice in choices if choice.lower() == value.strip().lower()), None)
    if match is None:
        raise InvalidRequest(f"{key} must be one of {_listed(choices)}; got {_shown(value)}.", key)
    return match


def _listed(choices: Iterable[str]) -> str:
    return ", ".join(repr(choice) for choice in choices)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
