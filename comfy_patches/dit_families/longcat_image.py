"""LongCat-Image (``comfy.supported_models.LongCatImage``): ComfyUI's Flux class with LongCat's parameters.

The very same diffusion-model class and call order as Flux (double-stream, then single-stream blocks, joint
[text; image] attention); its configuration class is not a Flux subclass, so it is listed here by name.
``model_base.LongCatImage`` only shifts the rotary positions and drops guidance and the pooled vector.
"""

from __future__ import annotations

from .flux import FluxFamily


class LongCatImageFamily(FluxFamily):
    name = "LongCat-Image"
    configs = ("LongCatImage",)
