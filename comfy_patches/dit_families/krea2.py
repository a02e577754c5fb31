"""Krea 2 (``SingleStreamDiT``): a text-fusion adapter, then single-stream blocks over [text; image]."""

from __future__ import annotations

import comfy.ldm.krea2.model

from .base import NO_IMAGE, TEXT_THEN_IMAGE, CallSite, DiTFamily, unexpected_call


class Krea2Family(DiTFamily):
    """Krea 2. Per forward, in order:

    - the text-fusion adapter (``txtfusion``), before the model sets ``block_type`` / ``block_index``, told apart
      by order: its ``layerwise_blocks`` attend, for each text token, across the text encoder's layers (B x text
      tokens rows of ``txtlayers`` (12) tokens each): not a self-attention of one image's sequence, they run plain
      (the reference rows of such a batch are not images' rows); then its
      ``refiner_blocks``: self-attention over the text tokens (guided, no image tokens);
    - ``blocks`` (``block_type`` "single", ``block_index`` i): one attention over [text; image; reference
      images], the image tokens right after the text (the conditioning's tokens), padded to whole 2x2 patches.
    """

    name = "Krea 2"
    configs = ("Krea2",)
    model_classes = (comfy.ldm.krea2.model.SingleStreamDiT,)
    naming = "`text refiner 0`.. (text-fusion refiner: text self-attention), `block 0`.. (joint text+image)"
    layerwise_blocks = 0
    refiner_blocks = 0

    def plan(self, diffusion_model) -> None:
        self.layerwise_blocks = len(diffusion_model.txtfusion.layerwise_blocks)
        self.refiner_blocks = len(diffusion_model.txtfusion.refiner_blocks)

    def patch_of(self, diffusion_model) -> tuple[int, int, int]:
        return (1, int(diffusion_model.patch), int(diffusion_model.patch))

    def block_labels(self, diffusion_model) -> list[str]:
        return [f"text refiner {i}" for i in range(len(diffusion_model.txtfusion.refiner_blocks))] + [
            f"block {i}" for i in range(len(diffusion_model.blocks))
        ]

    def call_site(self, key, ordinal, call) -> CallSite:
        block_type, index = key
        if key == (None, None):
            if ordinal < self.layerwise_blocks:
                return CallSite(f"text fusion layerwise {ordinal}", False)  # across encoder layers: plain
            if ordinal < self.layerwise_blocks + self.refiner_blocks:
                return CallSite(f"text refiner {ordinal - self.layerwise_blocks}", True, image_layout=NO_IMAGE)
        if block_type == "single" and index is not None and ordinal == 0:
            return CallSite(f"block {index}", True, image_layout=TEXT_THEN_IMAGE)
        return unexpected_call(key, ordinal)
