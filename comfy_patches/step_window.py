"""The step window of every guidance node: the part of the sampling schedule where a patch acts.

One type, :class:`StepWindow`, for every node (Apply RefDrop, Apply RefDrop (Reference Image), SVD Temporal
RefDrop, Temporal RefDrop, Apply EasyRef). Nodes take it as ``start_percent`` / ``end_percent`` (Apply EasyRef:
``start_at`` / ``end_at``), fractions of the schedule as ComfyUI core's nodes take them; the model's own noise
schedule turns them into sigmas once, when the node runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class StepWindow:
    """Calls whose sigma lies in [sigma_end, sigma_start] are inside (calls without sigmas always are)."""

    sigma_start: float = math.inf
    sigma_end: float = 0.0

    @classmethod
    def from_percents(cls, model, start_percent: float, end_percent: float) -> StepWindow:
        """The window of a start/end percent pair on ``model``'s schedule; 0 to 1 is every step (no lookup).

        Raises ValueError (:func:`window_problem`) for a window that ends before it starts.
        """
        problem = window_problem(start_percent, end_percent)
        if problem:
            raise ValueError(problem)
        if start_percent <= 0.0 and end_percent >= 1.0:
            return EVERY_STEP
        sampling = model.get_model_object("model_sampling")
        return cls(float(sampling.percent_to_sigma(start_percent)), float(sampling.percent_to_sigma(end_percent)))

    @property
    def every_step(self) -> bool:
        return self.sigma_start == math.inf and self.sigma_end <= 0.0

    def contains(self, transformer_options: dict) -> bool:
        """True when this call's sigma (``transformer_options["sigmas"]``) lies inside the window."""
        if self.every_step:
            return True
        sigmas = transformer_options.get("sigmas")
        if sigmas is None:
            return True
        sigma = float(sigmas.detach().flatten()[0])
        return self.sigma_start >= sigma >= self.sigma_end


EVERY_STEP = StepWindow()


def window_problem(start_percent, end_percent) -> str | None:
    """The message for a window that ends before it starts, else None (the nodes' validate_inputs use it)."""
    if (
        isinstance(start_percent, (int, float))
        and isinstance(end_percent, (int, float))
        and start_percent > end_percent
    ):
        return f"start_percent ({start_percent}) is after end_percent ({end_percent}): swap them."
    return None
