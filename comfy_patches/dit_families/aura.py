"""AuraFlow (MMDiT): joint [registers + text; image] blocks, then single blocks over the same one sequence."""

from __future__ import annotations

import comfy.ldm.aura.mmdit

from .base import IMAGE_LAST, CallSite, DiTFamily, numbered, unexpected_call


class AuraFlowFamily(DiTFamily):
    """AuraFlow: each double layer attends over [8 register tokens, text; image] (separate projections per
    stream, one softmax), each single layer over the concatenated [registers, text, image] sequence. Every call
    is self-attention with the image tokens last. No block index is set: the order in the forward says which."""

    name = "AuraFlow"
    configs = ("AuraFlow",)
    model_classes = (comfy.ldm.aura.mmdit.MMDiT,)
    naming = "`double 0`.. (joint text+image), `single 0`.. (one text+image sequence); all self-attention"
    calls: tuple[str, ...] = ()

    def plan(self, diffusion_model) -> None:
        self.calls = tuple(self.block_labels(diffusion_model))

    def block_labels(self, diffusion_model) -> list[str]:
        return numbered("double", diffusion_model.double_layers) + numbered("single", diffusion_model.single_layers)

    def call_site(self, key, ordinal, call) -> CallSite:
        if key == (None, None) and ordinal < len(self.calls):
            return CallSite(self.calls[ordinal], True, image_layout=IMAGE_LAST)
        return unexpected_call(key, ordinal)
