"""Sliders and number fields whose range errors name the control.

Gradio checks a Slider's or Number's range itself, in ``preprocess`` (``gradio/components/number.py``
``Number.raise_if_out_of_bounds``), before any handler of ours runs, and its toast reads "Value 4096 is greater
than maximum value 2048." without saying which of the form's numbers that is. A value out of range only gets
there from a script (the Gradio client) or an edited request, never from dragging the slider, so that script's
author is who reads the toast: "Height must be between 64 and 2048 (got 4096)." names the field they sent.

``labelled_slider`` / ``labelled_number`` build the stock components, so the browser draws them as usual.
"""

from __future__ import annotations

import html
import math
from typing import Any

import gradio as gr

TOAST_TITLE = "Please check the settings"  # the title ui.jobs.user_error gives an InvalidRequest


def _toast(message: str) -> gr.Error:
    return gr.Error(html.escape(message, quote=False), title=TOAST_TITLE, print_exception=False)


def _number(value: float) -> str:
    """``2048`` rather than ``2048.0``, ``4294967295`` rather than ``4.29497e+09``; other floats as ``%g``."""
    if isinstance(value, int) or (math.isfinite(value) and float(value).is_integer() and abs(value) < 2**53):
        return str(int(value))
    return format(value, "g")


def check_range(label: str | None, value: Any, minimum: float | None, maximum: float | None) -> None:
    """Raise a ``gr.Error`` toast naming ``label`` when ``value`` is not a finite number within the bounds."""
    name = label or "This value"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        raise _toast(f"{name} must be a finite number (got {shown}).")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if minimum is not None and maximum is not None:
            bounds = f"between {_number(minimum)} and {_number(maximum)}"
        elif minimum is not None:
            bounds = f"at least {_number(minimum)}"
        else:
            bounds = f"at most {_number(maximum)}"
        raise _toast(f"{name} must be {bounds} (got {_number(value)}).")


def name_range_errors(component: Any) -> Any:
    """Make a ``gr.Slider`` or ``gr.Number`` check its value with ``check_range`` (naming its label) before
    Gradio's own preprocessing; returns the component.

    The component stays a stock one: a subclass would make Gradio write a ``.pyi`` stub beside this file at every
    import (``gradio/component_meta.py``), so the check wraps this instance's ``preprocess`` instead.
    """
    gradio_preprocess = component.preprocess
    empty_allowed = not isinstance(component, gr.Slider)  # an empty Number field is None, as in Gradio

    def preprocess(payload: Any) -> Any:
        if payload is not None or not empty_allowed:
            check_range(component.label, payload, component.minimum, component.maximum)
        return gradio_preprocess(payload)

    component.preprocess = preprocess
    return component


def labelled_slider(*args: Any, **kwargs: Any) -> gr.Slider:
    """``gr.Slider(...)`` whose out-of-range and non-finite values give a toast naming the slider."""
    return name_range_errors(gr.Slider(*args, **kwargs))


def labelled_number(*args: Any, **kwargs: Any) -> gr.Number:
    """``gr.Number(...)`` whose out-of-range and non-finite values give a toast naming the field."""
    return name_range_errors(gr.Number(*args, **kwargs))
