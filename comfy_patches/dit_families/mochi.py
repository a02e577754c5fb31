"""Mochi (Genmo's AsymmDiTJoint): one asymmetric joint [video; text] self-attention per block."""

from __future__ import annotations

import comfy.ldm.genmo.joint_model.asymm_models_joint

from .base import IMAGE_ONLY, CallSite, DiTFamily, unexpected_call


class MochiFamily(DiTFamily):
    """Mochi 1 preview: per block ONE joint self-attention over [video; text] (video first: its own, wider
    projections; the text is the prompt's valid tokens, cropped to the attention mask's count). The model sets no
    ``block_type`` / ``block_index``: block i = call i. Video tokens: (T, H, W) patches of 1x2x2 latent pixels."""

    name = "Mochi"
    video = True
    configs = ("GenmoMochi",)
    model_classes = (comfy.ldm.genmo.joint_model.asymm_models_joint.AsymmDiTJoint,)
    naming = "`block 0`..; joint [video; text] self-attention"
    blocks = 0

    def plan(self, diffusion_model) -> None:
        self.blocks = len(diffusion_model.blocks)

    def patch_of(self, diffusion_model) -> tuple[int, int, int]:
        size = int(diffusion_model.patch_size)
        return (1, size, size)

    def block_labels(self, diffusion_model) -> list[str]:
        return [f"block {i}" for i in range(len(diffusion_model.blocks))]

    def call_site(self, key, ordinal, call) -> CallSite:
        if key == (None, None) and ordinal < self.blocks:
            return CallSite(f"block {ordinal}", True, image_layout=IMAGE_ONLY)
        return unexpected_call(key, ordinal)
