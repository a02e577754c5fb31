"""Regions (our extension): which part of the generated image each reference guides, checked once per node run."""

from __future__ import annotations

import logging

import torch

from ...attention_patches.tokens import TokenMasks

logger = logging.getLogger(__name__)


def region_masks(regions: torch.Tensor | None, references: int, node_name: str) -> TokenMasks | None:
    """The ``regions`` MASK input as one mask per reference (white = this reference guides here), or None.

    One mask for all references or exactly one per reference (in reference order); any size (placed on every
    layer's tokens with the latent's centre crop). A reference whose region is all black guides nowhere.
    """
    if regions is None:
        return None
    if regions.ndim == 2:
        regions = regions.unsqueeze(0)
    if regions.ndim != 3:
        raise ValueError(
            f"{node_name}: `regions` has shape {tuple(regions.shape)}; connect a MASK (one per reference)."
        )
    if regions.shape[0] not in (1, references):
        raise ValueError(
            f"{node_name}: {regions.shape[0]} region masks for {references} reference(s). Give one region for all "
            f"references or exactly one per reference, in reference order (e.g. join masks with a mask batch node)."
        )
    if regions.shape[-2] < 2 or regions.shape[-1] < 2:
        raise ValueError(
            f"{node_name}: `regions` is {regions.shape[-1]}x{regions.shape[-2]} pixels; draw the regions on a mask of "
            "the generated image's size (any size works: it is resized to the latent's aspect)."
        )
    regions = regions.float().clamp(0.0, 1.0).cpu()
    for index, region in enumerate(regions):
        if float(region.max()) < 0.5:
            logger.warning("%s: the region of reference %d is all black, so it guides nowhere.", node_name, index + 1)
    return TokenMasks(regions)
