"""MageFlow (``comfy.supported_models.MageFlow``): Qwen-Image transformer blocks at patch size 1, Flux 2 latents.

``comfy.ldm.mage_flow.model.MageFlowTransformer2DModel`` runs ``QwenImageTransformerBlock`` s (one joint
[text; image] attention each, ``block_type`` "double", ``block_index`` i) on 128-channel latents, one token per
latent pixel; reference latents are appended after the image tokens (they stay part of the row).
"""

from __future__ import annotations

import comfy.ldm.mage_flow.model

from .qwen_image import QwenImageFamily


class MageFlowFamily(QwenImageFamily):
    name = "MageFlow"
    configs = ("MageFlow",)
    model_classes = (comfy.ldm.mage_flow.model.MageFlowTransformer2DModel,)
