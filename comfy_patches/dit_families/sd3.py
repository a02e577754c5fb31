"""SD3 / SD3.5 (MMDiT): joint [context; image] attention, ordered by position in the forward."""

from __future__ import annotations

import comfy.ldm.modules.diffusionmodules.mmdit

from .base import IMAGE_LAST, CallSite, DiTFamily, unexpected_call


class SD3Family(DiTFamily):
    """SD3 / SD3.5 (MMDiT): one joint [context; x] attention per joint block; SD3.5 Medium's x-only second
    self-attention (``x_block_self_attn`` blocks) follows it. No block index is set: order in the forward."""

    name = "SD3 / SD3.5"
    configs = ("SD3",)
    model_classes = (comfy.ldm.modules.diffusionmodules.mmdit.OpenAISignatureMMDITWrapper,)
    naming = "`joint 0`..; joint context+image self-attention (+ SD3.5 Medium's image-only self-attention)"
    calls: tuple[str, ...] = ()

    def plan(self, diffusion_model) -> None:
        calls = []
        for i, block in enumerate(diffusion_model.joint_blocks):
            calls.append(f"joint {i}")
            if block.x_block.x_block_self_attn:
                calls.append(f"joint {i}")
        self.calls = tuple(calls)

    def block_labels(self, diffusion_model) -> list[str]:
        return [f"joint {i}" for i in range(len(diffusion_model.joint_blocks))]

    def call_site(self, key, ordinal, call) -> CallSite:
        if key == (None, None) and ordinal < len(self.calls):
            return CallSite(self.calls[ordinal], True, image_layout=IMAGE_LAST)
        return unexpected_call(key, ordinal)
