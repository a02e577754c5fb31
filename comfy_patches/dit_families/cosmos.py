"""Cosmos Predict2 (MiniTrainDIT): image self-attention, then a text cross-attention, per block."""

from __future__ import annotations

import comfy.ldm.cosmos.predict2

from .base import IMAGE_ONLY, NO_IMAGE, CallSite, DiTFamily, unexpected_call


class CosmosPredict2Family(DiTFamily):
    """Cosmos Predict2 text-to-image (MiniTrainDIT): per block a self-attention over the image tokens, then a
    cross-attention to the text (never touched, whatever the token counts)."""

    name = "Cosmos Predict2"
    configs = ("CosmosT2IPredict2",)
    model_classes = (comfy.ldm.cosmos.predict2.MiniTrainDIT,)
    naming = "`block 0`..; image self-attention (the text cross-attention is untouched)"

    def block_labels(self, diffusion_model) -> list[str]:
        return [f"block {i}" for i in range(len(diffusion_model.blocks))]

    def patch_of(self, diffusion_model) -> tuple[int, int, int]:
        spatial = int(diffusion_model.patch_spatial)
        return (int(diffusion_model.patch_temporal), spatial, spatial)

    def call_site(self, key, ordinal, call) -> CallSite:
        block_type, index = key
        if block_type is None and index is not None and ordinal in (0, 1):
            return CallSite(f"block {index}", ordinal == 0, image_layout=IMAGE_ONLY if ordinal == 0 else NO_IMAGE)
        return unexpected_call(key, ordinal)
