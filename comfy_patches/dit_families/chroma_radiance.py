"""Chroma Radiance (``comfy.supported_models.ChromaRadiance``): Chroma's transformer on pixels.

``comfy.ldm.chroma_radiance.model.ChromaRadiance`` patchifies the RGB image itself (a strided convolution,
``patch_size`` pixels, 16 in the released model), runs Chroma's double-stream and single-stream blocks (joint
[text; image] attention, the only attention calls of a forward) and decodes each patch with a small per-pixel
MLP (no attention). Its "VAE" is ComfyUI's pixel-space passthrough (VAE Loader ``pixel_space``): one latent
pixel per image pixel, so a token covers ``patch_size`` x ``patch_size`` image pixels.
"""

from __future__ import annotations

import comfy.ldm.chroma_radiance.model

from .flux import ChromaFamily


class ChromaRadianceFamily(ChromaFamily):
    name = "Chroma Radiance"
    configs = ("ChromaRadiance",)
    model_classes = (comfy.ldm.chroma_radiance.model.ChromaRadiance,)
