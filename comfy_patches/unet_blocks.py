"""Find the transformer blocks of a ComfyUI UNet and name them the way ComfyUI's patch keys do."""

from __future__ import annotations

from dataclasses import dataclass

import comfy.model_base
from comfy.ldm.modules.attention import SpatialTransformer, SpatialVideoTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel


@dataclass(frozen=True)
class TransformerBlock:
    """One SpatialTransformer: ComfyUI's (block_name, block_id) and how many BasicTransformerBlocks it has."""

    block_name: str
    block_id: int
    depth: int

    @property
    def label(self) -> str:
        """The user-facing name, e.g. "output 0" (what `exclude_blocks` accepts)."""
        return f"{self.block_name} {self.block_id}"

    def keys(self) -> list[tuple[str, int, int]]:
        """The 3-tuple patch keys (block_name, block_id, block_index), one per BasicTransformerBlock."""
        return [(self.block_name, self.block_id, index) for index in range(self.depth)]


def is_video_model(model_patcher) -> bool:
    """True for UNets with temporal layers (Stable Video Diffusion and relatives)."""
    model = model_patcher.model
    if isinstance(model, comfy.model_base.SVD_img2vid):
        return True
    unet = getattr(model, "diffusion_model", None)
    if not isinstance(unet, UNetModel):
        return False
    if getattr(unet, "use_temporal_resblocks", False):
        return True
    return any(isinstance(module, SpatialVideoTransformer) for module in unet.modules())


def transformer_blocks(model_patcher) -> list[TransformerBlock]:
    """Every SpatialTransformer of a ComfyUI UNet in execution order; [] for models that are not UNets."""
    unet = getattr(model_patcher.model, "diffusion_model", None)
    if not isinstance(unet, UNetModel):
        return []
    found = []
    groups = [("input", unet.input_blocks), ("middle", [unet.middle_block]), ("output", unet.output_blocks)]
    for block_name, blocks in groups:
        for block_id, block in enumerate(blocks):
            for layer in block:
                if isinstance(layer, SpatialTransformer):
                    found.append(TransformerBlock(block_name, block_id, len(layer.transformer_blocks)))
    return found


def existing_replace(model_patcher, attention: str, key: tuple[str, int, int]):
    """The replace patch ComfyUI would run for ``key`` today (3-tuple entry first, then the 2-tuple one)."""
    replaces = model_patcher.model_options.get("transformer_options", {}).get("patches_replace", {}).get(attention, {})
    return replaces.get(key, replaces.get(key[:2]))
