"""Lens (Microsoft, ``LensTransformer2DModel``): one joint [image; text] attention per dual-stream block."""

from __future__ import annotations

import comfy.ldm.lens.model

from .base import IMAGE_ONLY, CallSite, DiTFamily, unexpected_call


class LensFamily(DiTFamily):
    """Lens: per ``transformer_blocks`` block (``block_type`` "double", ``block_index`` i) one joint attention over
    [image; text]: the image tokens come FIRST (start 0), the text after them, with the text padding as an
    additive key mask (the reference row's own mask on the extra attention).

    One token per latent pixel: the 128-channel latent is already Flux 2's VAE latent patchified 2x2, so the
    model's ``patch_size`` 2 is in the VAE's pixels and the token grid is the latent's own (no padding).
    """

    name = "Lens"
    configs = ("Lens",)
    model_classes = (comfy.ldm.lens.model.LensTransformer2DModel,)
    naming = "`block 0`..; joint image+text self-attention (image tokens first)"
    block_type = "double"

    def patch_of(self, diffusion_model) -> tuple[int, int, int]:
        return (1, 1, 1)

    def block_labels(self, diffusion_model) -> list[str]:
        return [f"block {i}" for i in range(len(diffusion_model.transformer_blocks))]

    def call_site(self, key, ordinal, call) -> CallSite:
        block_type, index = key
        if block_type == self.block_type and index is not None and ordinal == 0:
            return CallSite(f"block {index}", True, image_layout=IMAGE_ONLY)
        return unexpected_call(key, ordinal)
