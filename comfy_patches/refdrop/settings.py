"""What a RefDrop node asks for, parsed once: node names, strengths, block names, and the frozen settings.

The nodes' ``validate_inputs`` and the glue use the same parsers, so a value is refused with one wording.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ...attention_patches.tokens import TokenMasks
from ..step_window import EVERY_STEP, StepWindow

APPLY_REFDROP = "Apply RefDrop"
REFERENCE_IMAGE = "Apply RefDrop (Reference Image)"
SVD_TEMPORAL = "SVD Temporal RefDrop"
TEMPORAL = "Temporal RefDrop"


@dataclass(frozen=True)
class RefDropSettings:
    """One RefDrop patch: c_j for each reference row of every guidance chunk (Eq. 5 / Eq. 6), and its window.

    ``reference_rows`` index the rows of a chunk that are references (in-batch: the first N images; SVD: the
    reference frame of each clip; reference images: the extra rows in front of each chunk).
    """

    reference_rows: tuple[int, ...]
    coefficients: tuple[float, ...]
    node_name: str = APPLY_REFDROP
    window: StepWindow = EVERY_STEP
    # regions (our extension): one mask per reference in the generated image's frame, or None (everywhere)
    regions: TokenMasks | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ReferenceFrameSettings:
    """Temporal RefDrop on a video diffusion transformer: c, the reference latent frame, the window."""

    strength: float
    reference_frame: int
    window: StepWindow = EVERY_STEP
    node_name: str = TEMPORAL


def parse_strengths(text: str) -> list[float]:
    """'0.3, 0.2' -> [0.3, 0.2]; commas, semicolons or whitespace separate values."""
    values = []
    for part in (p.strip() for p in text.replace(";", ",").replace("\n", ",").split(",")):
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"reference_strengths: {part!r} is not a number (expected e.g. '0.3, 0.2')") from None
        if not math.isfinite(value):
            raise ValueError(f"reference_strengths: {part!r} is not a finite number (expected e.g. '0.3, 0.2')")
        values.append(value)
    return values


def parse_block_names(text: str) -> list[str]:
    """'output 0, input 8' -> ['output 0', 'input 8'] (normalised spacing and case)."""
    names = []
    for part in text.replace(";", ",").replace("\n", ",").split(","):
        words = part.strip().lower().replace("_", " ").split()
        if words:
            names.append(" ".join(words))
    return names


def coefficients_for(
    strength: float, reference_count: int, reference_strengths: str, counted: str | None = None
) -> list[float]:
    """One c_j per reference: the per-reference list when given (Eq. 6), else `strength` for each (Eq. 5).

    ``counted`` says where the reference count comes from in the error (default: the reference_count input).
    """
    if reference_strengths and reference_strengths.strip():
        values = parse_strengths(reference_strengths)
        if len(values) != reference_count:
            raise ValueError(
                f"reference_strengths has {len(values)} value(s) but "
                f"{counted or f'reference_count is {reference_count}'}: give one strength per reference (e.g. "
                f"'{', '.join(['0.3'] * reference_count)}') or clear the field to use `strength` for every reference."
            )
        return values
    return [strength] * reference_count
