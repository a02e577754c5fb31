"""Widget checks shared by the nodes' validate_inputs.

A node whose validate_inputs takes an input by name (or takes ``**kwargs``) switches off ComfyUI's own checks of
that input (min/max, combo lists), so those nodes call :func:`widget_ranges` to keep them: a value outside the
schema's range, or a float that is not finite (JSON ``NaN`` / ``Infinity`` from an API client), is refused when
the prompt is queued.
"""

from __future__ import annotations

import math

from comfy_api.latest import io

from ..comfy_patches.step_window import window_problem

REFDROP_CATEGORY = "RefDrop"  # every RefDrop node
EASYREF_CATEGORY = "EasyRef"  # every EasyRef node

START_TOOLTIP = "Start guiding at this fraction of the sampling schedule (0 = from the first step, as in the paper)."
END_TOOLTIP = "Stop guiding after this fraction of the sampling schedule (1 = to the last step, as in the paper)."


def window_inputs(start_tooltip: str = START_TOOLTIP, end_tooltip: str = END_TOOLTIP) -> list:
    """The optional step-window inputs every guidance node shares: `start_percent` / `end_percent` (as ComfyUI core
    names them), secondary (``advanced``), turned into a ``comfy_patches.step_window.StepWindow`` by the glue."""
    return [
        io.Float.Input(
            "start_percent",
            default=0.0,
            min=0.0,
            max=1.0,
            step=0.001,
            optional=True,
            advanced=True,
            tooltip=start_tooltip,
        ),
        io.Float.Input(
            "end_percent", default=1.0, min=0.0, max=1.0, step=0.001, optional=True, advanced=True, tooltip=end_tooltip
        ),
    ]


def check_window(start_percent, end_percent) -> None:
    """:func:`window_problem` as a ValueError (for execute)."""
    problem = window_problem(start_percent, end_percent)
    if problem:
        raise ValueError(problem)


def _between(low, high) -> str:
    if low is not None and high is not None:
        return f" from {low} to {high}"
    if low is not None:
        return f" of at least {low}"
    return f" of at most {high}" if high is not None else ""


def widget_ranges(node_cls, values: dict) -> str | None:
    """The first number in ``values`` outside the range the node's schema declares (or not finite), as a message
    that names the input and the range; None when every number fits."""
    for spec in node_cls.define_schema().inputs:
        value = values.get(spec.id)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        low, high = getattr(spec, "min", None), getattr(spec, "max", None)
        if isinstance(value, float) and not math.isfinite(value):
            return f"{spec.id} is {value}: set it to a finite number{_between(low, high)}."
        if (low is not None and value < low) or (high is not None and value > high):
            return f"{spec.id} is {value}: set it to a number{_between(low, high)}."
    return None
