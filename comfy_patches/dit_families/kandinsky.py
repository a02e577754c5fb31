"""Kandinsky 5 image (``Kandinsky5Image``): text blocks (self-attention over the text), then visual blocks (image
self-attention, then a cross-attention to the text)."""

from __future__ import annotations

import comfy.ldm.kandinsky5.model

from .base import IMAGE_ONLY, NO_IMAGE, CallSite, DiTFamily, unexpected_call


class Kandinsky5ImageFamily(DiTFamily):
    """Kandinsky 5 text-to-image (``comfy.ldm.kandinsky5.model.Kandinsky5``). Per forward, in order:

    - ``text_transformer_blocks``: one self-attention over the text tokens each, run before the model sets
      ``block_type`` / ``block_index`` (told apart by their order);
    - ``visual_transformer_blocks`` (``block_type`` "double", ``block_index`` i): a self-attention over the image
      tokens only (the (T, H, W) patch grid flattened, padded to whole 1x2x2 patches), then a cross-attention
      from the image to the text, which is never touched, whatever the token counts.
    """

    name = "Kandinsky 5 Image"
    configs = ("Kandinsky5Image",)
    model_classes = (comfy.ldm.kandinsky5.model.Kandinsky5,)
    naming = (
        "`text 0`.. (text blocks: text self-attention), `visual 0`.. (image self-attention; cross-attention untouched)"
    )
    text_blocks = 0

    def plan(self, diffusion_model) -> None:
        self.text_blocks = len(diffusion_model.text_transformer_blocks)

    def block_labels(self, diffusion_model) -> list[str]:
        return [f"text {i}" for i in range(len(diffusion_model.text_transformer_blocks))] + [
            f"visual {i}" for i in range(len(diffusion_model.visual_transformer_blocks))
        ]

    def call_site(self, key, ordinal, call) -> CallSite:
        block_type, index = key
        if key == (None, None) and ordinal < self.text_blocks:
            return CallSite(f"text {ordinal}", True, image_layout=NO_IMAGE)
        if block_type == "double" and index is not None and ordinal in (0, 1):
            return CallSite(f"visual {index}", ordinal == 0, image_layout=IMAGE_ONLY if ordinal == 0 else NO_IMAGE)
        return unexpected_call(key, ordinal)
