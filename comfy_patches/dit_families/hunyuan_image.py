"""HunyuanImage 2.1 (ComfyUI's HunyuanVideo class with 2-D patches): token refiner, then [text; image] blocks."""

from __future__ import annotations

import comfy.ldm.hunyuan_video.model

from .base import IMAGE_LAST, NO_IMAGE, CallSite, DiTFamily, numbered, unexpected_call


class HunyuanImageFamily(DiTFamily):
    """HunyuanImage 2.1: the token refiner's self-attention over the text (before the blocks, no block index),
    then double-stream blocks (joint [text; image] attention) and single-stream blocks (one [text; image]
    sequence). The text part is the refined prompt, then the ByT5 glyph tokens when given; the image tokens are
    always last (one token per latent pixel: 1x1 patches of its 64-channel, 32x down-sampled latent).

    Only the HunyuanImage 2.1 configuration: HunyuanVideo's video configurations use the same class (the video
    nodes handle them), and the HunyuanImage 2.1 refiner is refused (``coverage.REFUSED``).
    """

    name = "HunyuanImage 2.1"
    configs = ("HunyuanImage21",)
    model_classes = (comfy.ldm.hunyuan_video.model.HunyuanVideo,)
    naming = (
        "`token refiner 0`.. (the prompt's tokens), `double 0`.. (double-stream), `single 0`.. (single-stream); "
        "joint text+image self-attention"
    )
    token_refiners = 0

    def plan(self, diffusion_model) -> None:
        self.token_refiners = len(diffusion_model.txt_in.individual_token_refiner.blocks)

    def block_labels(self, diffusion_model) -> list[str]:
        return (
            numbered("token refiner", diffusion_model.txt_in.individual_token_refiner.blocks)
            + numbered("double", diffusion_model.double_blocks)
            + numbered("single", diffusion_model.single_blocks)
        )

    def call_site(self, key, ordinal, call) -> CallSite:
        block_type, index = key
        if block_type in ("double", "single") and index is not None and ordinal == 0:
            return CallSite(f"{block_type} {index}", True, image_layout=IMAGE_LAST)
        if key == (None, None) and ordinal < self.token_refiners:
            return CallSite(f"token refiner {ordinal}", True, image_layout=NO_IMAGE)
        return unexpected_call(key, ordinal)
