"""PixelDiT text-to-image (pixel space): joint [text; image] patch blocks, then pixel blocks (one token a patch)."""

from __future__ import annotations

import comfy.ldm.pixeldit.model

from .base import IMAGE_LAST, CallSite, DiTFamily, unexpected_call


class PixelDiTFamily(DiTFamily):
    """PixelDiT (``PixDiT_T2I``, pixels in, no VAE): each patch block attends over [text; image patch tokens]
    (the text cut to ``txt_max_length``), each pixel block over one compressed token per patch (image only).
    Every call is self-attention with the image tokens last; no block index is set: the order says which."""

    name = "PixelDiT"
    configs = ("PixelDiTT2I",)
    model_classes = (comfy.ldm.pixeldit.model.PixDiT_T2I,)
    naming = "`patch 0`.. (joint text+image over the patch tokens), `pixel 0`.. (image only, one token a patch)"
    calls: tuple[str, ...] = ()

    def plan(self, diffusion_model) -> None:
        self.calls = tuple(self.block_labels(diffusion_model))

    def block_labels(self, diffusion_model) -> list[str]:
        return [f"patch {i}" for i in range(len(diffusion_model.patch_blocks))] + [
            f"pixel {i}" for i in range(len(diffusion_model.pixel_blocks))
        ]

    def call_site(self, key, ordinal, call) -> CallSite:
        if key == (None, None) and ordinal < len(self.calls):
            return CallSite(self.calls[ordinal], True, image_layout=IMAGE_LAST)
        return unexpected_call(key, ordinal)
