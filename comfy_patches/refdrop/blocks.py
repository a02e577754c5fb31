"""Which blocks a RefDrop patch leaves untouched: ``exclude_blocks`` and ``skip_up1``, checked in one place."""

from __future__ import annotations

from ..model_families import ModelFamily
from ..unet_blocks import TransformerBlock
from .settings import parse_block_names


def excluded_blocks(family: ModelFamily, node_name: str, exclude_blocks: str, skip_up1: bool = False) -> frozenset[str]:
    """The block names to leave untouched: ``exclude_blocks`` (unknown names refused with the valid list) plus
    the first up-sampling block (paper's Up1) with ``skip_up1`` (UNets only)."""
    excluded = set(parse_block_names(exclude_blocks or ""))
    unknown = sorted(excluded - set(family.block_names))
    if unknown:
        raise ValueError(
            f"{node_name}: exclude_blocks: {', '.join(repr(n) for n in unknown)} is not a block of this "
            f"{family.name} model. Valid names: {', '.join(family.block_names)}."
        )
    if skip_up1:
        up1 = next((block.label for block in family.unet_blocks if block.block_name == "output"), None)
        if up1 is None:
            raise ValueError(
                f"{node_name}: skip_up1 names a UNet block (the first up-sampling block); {family.name} is a "
                f"diffusion transformer without one. Turn skip_up1 off and list the blocks to leave unguided in "
                f"exclude_blocks (this model's blocks: {', '.join(family.block_names[:3])}, ...)."
            )
        excluded.add(up1)
    return frozenset(excluded)


def guided_unet_blocks(family: ModelFamily, excluded: frozenset[str]) -> list[TransformerBlock]:
    """The UNet transformer blocks to patch: every one whose name is not excluded."""
    return [block for block in family.unet_blocks if block.label not in excluded]
