"""Z-Image pixel space (``comfy.supported_models.ZImagePixelSpace``): Z-Image's NextDiT on RGB pixel patches.

``comfy.ldm.lumina.model.NextDiTPixelSpace`` keeps NextDiT's forward (caption refiner, noise refiner, main
layers; all self-attention, the same call order as Lumina 2 / Z-Image) and replaces only the output head with a
per-patch MLP decoder (no attention). Its "VAE" is ComfyUI's pixel-space passthrough (VAE Loader
``pixel_space``): a token covers ``patch_size`` x ``patch_size`` image pixels.
"""

from __future__ import annotations

import comfy.ldm.lumina.model

from .lumina import LuminaFamily


class ZImagePixelSpaceFamily(LuminaFamily):
    name = "Z-Image pixel space"
    configs = ("ZImagePixelSpace",)
    model_classes = (comfy.ldm.lumina.model.NextDiTPixelSpace,)
