"""Step windows of the patches: sampling-schedule percents as sigmas, and whether a call falls inside."""

from __future__ import annotations


def sigma_window(model, start_percent: float, end_percent: float) -> tuple[float, float]:
    """(sigma_start, sigma_end) of a start/end percent pair, with the model's own noise schedule."""
    sampling = model.get_model_object("model_sampling")
    return float(sampling.percent_to_sigma(start_percent)), float(sampling.percent_to_sigma(end_percent))


def sigma_range(model, start_percent: float, end_percent: float) -> tuple[float, float] | None:
    """:func:`sigma_window`, or None for the whole schedule (0 to 1: every call runs, no schedule lookup)."""
    if start_percent <= 0.0 and end_percent >= 1.0:
        return None
    return sigma_window(model, start_percent, end_percent)


def in_sigma_window(extra_options: dict, sigma_start: float, sigma_end: float) -> bool:
    """True when this call's sigma lies in [sigma_end, sigma_start] (calls without sigmas always run)."""
    sigmas = extra_options.get("sigmas")
    if sigmas is None:
        return True
    sigma = float(sigmas.detach().flatten()[0])
    return sigma_start >= sigma >= sigma_end
