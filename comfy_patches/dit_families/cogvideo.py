"""CogVideoX 1.0 / 1.5 (CogVideoXTransformer3DModel): one joint [text; video] self-attention per block."""

from __future__ import annotations

import comfy.ldm.cogvideo.model

from .base import IMAGE_LAST, CallSite, DiTFamily, unexpected_call


class CogVideoXFamily(DiTFamily):
    """CogVideoX text-to-video, image-to-video and the Fun inpainting models (1.0 and 1.5): per block ONE joint
    self-attention over [text; video] (the image / inpainting inputs are extra latent channels, not tokens). The
    model sets no ``block_type`` / ``block_index``: the calls are told apart by their order (block i = call i).
    The video tokens are last: (T, H, W) patches of 1x2x2 latent pixels (1.0) or 2x2x2 (1.5: two latent frames
    per token frame; the latent is padded up to whole patches)."""

    name = "CogVideoX"
    video = True
    configs = ("CogVideoX_T2V", "CogVideoX_I2V", "CogVideoX_Inpaint")
    model_classes = (comfy.ldm.cogvideo.model.CogVideoXTransformer3DModel,)
    naming = "`block 0`..; joint [text; video] self-attention"
    blocks = 0

    def plan(self, diffusion_model) -> None:
        self.blocks = len(diffusion_model.blocks)

    def patch_of(self, diffusion_model) -> tuple[int, int, int]:
        size = int(diffusion_model.patch_size)
        return (int(diffusion_model.patch_size_t or 1), size, size)

    def block_labels(self, diffusion_model) -> list[str]:
        return [f"block {i}" for i in range(len(diffusion_model.blocks))]

    def call_site(self, key, ordinal, call) -> CallSite:
        if key == (None, None) and ordinal < self.blocks:
            return CallSite(f"block {ordinal}", True, image_layout=IMAGE_LAST)
        return unexpected_call(key, ordinal)
