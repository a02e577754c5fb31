"""JoyImage (``JoyImageTransformer3DModel``): Lens's call pattern, one joint [image; reference images; text]
attention per block."""

from __future__ import annotations

import comfy.ldm.joyimage.model

from .lens import LensFamily


class JoyImageFamily(LensFamily):
    """JoyImage: per ``double_blocks`` block (``block_type`` "double", ``block_index`` i) one joint attention over
    [target image; edit reference images (``ref_latents``); text], as Lens: the generated image's tokens come
    first (start 0). Latents are 5-D (Wan 2.1 VAE), patchified 1x2x2 by a Conv3d after padding to whole patches;
    the reference images' tokens stay part of the row (keys/values of a reference)."""

    name = "JoyImage"
    configs = ("JoyImage",)
    model_classes = (comfy.ldm.joyimage.model.JoyImageTransformer3DModel,)
    naming = "`block 0`..; joint image+text self-attention (image tokens first, edit references after them)"

    def patch_of(self, diffusion_model) -> tuple[int, int, int]:
        return tuple(int(size) for size in diffusion_model.patch_size)

    def block_labels(self, diffusion_model) -> list[str]:
        return [f"block {i}" for i in range(len(diffusion_model.double_blocks))]
