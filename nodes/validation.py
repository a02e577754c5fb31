"""Widget checks shared by the nodes' validate_inputs.

A node whose validate_inputs takes an input by name (or takes ``**kwargs``) switches off ComfyUI's own checks of
that input (min/max, combo lists), so those nodes call :func:`widget_ranges` to keep them: a value outside the
schema's range, or a float that is not finite (JSON ``NaN`` / ``Infinity`` from an API client), is refused when
the prompt is queued.
"""

from __future__ import annotations

import math


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
