"""Kandinsky 5 video (``Kandinsky5``): text blocks (text self-attention, untouched), then visual blocks (video
self-attention over every latent frame, then a cross-attention to the text)."""

from __future__ import annotations

from .base import IMAGE_ONLY, NO_IMAGE, CallSite, unexpected_call
from .kandinsky import Kandinsky5ImageFamily


class Kandinsky5VideoFamily(Kandinsky5ImageFamily):
    """Kandinsky 5 text-to-video / image-to-video: the same class and call order as Kandinsky 5 Image. Per
    forward: ``text_transformer_blocks`` (self-attention over the text only, before the model sets
    ``block_type``; no video tokens, never guided), then ``visual_transformer_blocks`` (``block_type`` "double",
    ``block_index`` i): a self-attention over the video tokens only (frame-major (T, H, W) grid of 1x2x2
    patches), then a cross-attention to the text, never touched."""

    name = "Kandinsky 5 Video"
    video = True
    configs = ("Kandinsky5",)
    naming = "`visual 0`..; video self-attention (the text blocks and the text cross-attention are untouched)"

    def block_labels(self, diffusion_model) -> list[str]:
        return [f"visual {i}" for i in range(len(diffusion_model.visual_transformer_blocks))]

    def call_site(self, key, ordinal, call) -> CallSite:
        block_type, index = key
        if key == (None, None) and ordinal < self.text_blocks:
            return CallSite(f"text {ordinal}", False)  # the text tokens only: no video, untouched
        if block_type == "double" and index is not None and ordinal in (0, 1):
            return CallSite(f"visual {index}", ordinal == 0, image_layout=IMAGE_ONLY if ordinal == 0 else NO_IMAGE)
        return unexpected_call(key, ordinal)
