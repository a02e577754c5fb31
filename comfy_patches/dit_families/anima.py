"""Anima (``comfy.supported_models.Anima``): Cosmos Predict2's MiniTrainDIT with an LLM text adapter in front.

``comfy.ldm.anima.model.Anima`` subclasses ``MiniTrainDIT`` and only adds ``llm_adapter`` (its attention calls
``torch.nn.functional.scaled_dot_product_attention`` directly, on the text, before the DiT runs), so the
attention calls ComfyUI's override sees are Cosmos Predict2's: per block an image self-attention, then a text
cross-attention (never touched).
"""

from __future__ import annotations

import comfy.ldm.anima.model

from .cosmos import CosmosPredict2Family


class AnimaFamily(CosmosPredict2Family):
    name = "Anima"
    configs = ("Anima",)
    model_classes = (comfy.ldm.anima.model.Anima,)
