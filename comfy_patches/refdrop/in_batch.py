"""Apply RefDrop's glue: in-batch references on an SD UNet or a diffusion transformer, one call per node run."""

from __future__ import annotations

from .. import model_families
from ..dit_override import patch_dit
from ..step_window import StepWindow
from .blocks import excluded_blocks, guided_unet_blocks
from .dit import InBatchReferences
from .regions import region_masks
from .settings import APPLY_REFDROP, RefDropSettings, coefficients_for
from .unet import patch_self_attention

IMAGE_KINDS = (model_families.IMAGE_UNET, model_families.IMAGE_DIT)


def apply_refdrop(
    model,
    strength: float,
    reference_count: int,
    skip_up1: bool = False,
    reference_strengths: str = "",
    exclude_blocks: str = "",
    start_percent: float = 0.0,
    end_percent: float = 1.0,
    regions=None,
):
    """A clone of ``model`` where the first ``reference_count`` images of each guidance chunk guide the others,
    each within its region of the generated images when ``regions`` (MASK, one per reference) is given.

    Every input is checked here (family, strengths, block names, regions); all-zero strengths return a clone.
    """
    family = model_families.require_family(model, APPLY_REFDROP, IMAGE_KINDS)
    coefficients = coefficients_for(strength, reference_count, reference_strengths or "")
    excluded = excluded_blocks(family, APPLY_REFDROP, exclude_blocks, skip_up1)
    placed = region_masks(regions, reference_count, APPLY_REFDROP)
    if all(c == 0.0 for c in coefficients):
        return model.clone()
    window = StepWindow.from_percents(model, start_percent, end_percent)
    settings = RefDropSettings(tuple(range(reference_count)), tuple(coefficients), APPLY_REFDROP, window, placed)
    if family.is_dit:
        return patch_dit(model, family.dit, InBatchReferences(settings), excluded)
    return patch_self_attention(model, settings, guided_unet_blocks(family, excluded))
