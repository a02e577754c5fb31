"""Qwen-Image (and Qwen-Image-Edit: the same class with reference latents appended). Joint [text; image] attention."""

from __future__ import annotations

import comfy.ldm.qwen_image.model

from .base import TEXT_THEN_IMAGE, CallSite, DiTFamily, unexpected_call


class QwenImageFamily(DiTFamily):
    """Qwen-Image: one joint [txt; img] attention per transformer block (masked for text padding)."""

    name = "Qwen-Image"
    configs = ("QwenImage",)
    model_classes = (comfy.ldm.qwen_image.model.QwenImageTransformer2DModel,)
    naming = "`block 0`..; joint text+image self-attention (text padding mask: the reference row's own)"

    def block_labels(self, diffusion_model) -> list[str]:
        return [f"block {i}" for i in range(len(diffusion_model.transformer_blocks))]

    def call_site(self, key, ordinal, call) -> CallSite:
        block_type, index = key
        if block_type == "double" and index is not None and ordinal == 0:
            return CallSite(f"block {index}", True, image_layout=TEXT_THEN_IMAGE)
        return unexpected_call(key, ordinal)
