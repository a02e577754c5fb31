"""HunyuanVideo 1.0 / 1.5 (ComfyUI's HunyuanVideo class with 3-D patches): token refiner, then [text; video] blocks."""

from __future__ import annotations

import comfy.ldm.hunyuan_video.model

from .base import IMAGE_LAST, CallSite, DiTFamily, numbered, unexpected_call


class HunyuanVideoFamily(DiTFamily):
    """HunyuanVideo (t2v, the two i2v variants, SkyReels i2v) and HunyuanVideo 1.5 (incl. the distilled super-
    resolution model). Per forward, in order:

    - the token refiner (``txt_in``, before the model sets ``block_type``): self-attention over the prompt's
      tokens only. It has no video tokens and is never guided (not a self-attention call of the clip);
    - double-stream blocks (``block_type`` "double"): one joint attention over [text; video];
    - single-stream blocks (``block_type`` "single"): one attention over the same [text; video] sequence.

    The video tokens are always last: the text part is the refined prompt, and for 1.5 the SigLIP image tokens
    and the ByT5 glyph tokens in front of it; HunyuanVideo's "custom" image-to-video puts the reference image's
    tokens (``ref_latent``) between the text and the video. All of those are the row's non-video tokens.
    """

    name = "HunyuanVideo"
    video = True
    configs = ("HunyuanVideo", "HunyuanVideoI2V", "HunyuanVideoSkyreelsI2V", "HunyuanVideo15",
               "HunyuanVideo15_SR_Distilled")  # fmt: skip
    model_classes = (comfy.ldm.hunyuan_video.model.HunyuanVideo,)
    naming = (
        "`double 0`.. (double-stream), `single 0`.. (single-stream); joint [text; video] self-attention (the token "
        "refiner's text-only attention is untouched)"
    )
    token_refiners = 0
    clip_pictures = True  # Temporal RefDrop's `image` on the text-to-video models: see clip_picture_problem

    def clip_picture_problem(self, config: str, diffusion_model) -> str | None:
        """Text-to-video only: HunyuanVideo 1.0 t2v (``HunyuanVideo``) and HunyuanVideo 1.5 (``HunyuanVideo15``:
        its t2v and i2v checkpoints share one architecture, so a 1.5 clip conditioned on a start image is refused
        when it is sampled). The image-to-video configurations take the start image as input channels
        (``HunyuanVideoI2V`` 33, ``HunyuanVideoSkyreelsI2V`` 32 for 16 latent channels); the 1.5 super-resolution
        model upscales a given video."""
        if config in ("HunyuanVideoI2V", "HunyuanVideoSkyreelsI2V"):
            return (
                "this is an image-to-video HunyuanVideo model (its input takes the start image), so its clip already "
                "starts from a picture"
            )
        if config not in ("HunyuanVideo", "HunyuanVideo15"):
            return f"this HunyuanVideo model ({config}) is not a text-to-video model"
        return None

    def plan(self, diffusion_model) -> None:
        self.token_refiners = len(diffusion_model.txt_in.individual_token_refiner.blocks)

    def block_labels(self, diffusion_model) -> list[str]:
        return numbered("double", diffusion_model.double_blocks) + numbered("single", diffusion_model.single_blocks)

    def call_site(self, key, ordinal, call) -> CallSite:
        block_type, index = key
        if block_type in ("double", "single") and index is not None and ordinal == 0:
            return CallSite(f"{block_type} {index}", True, image_layout=IMAGE_LAST)
        if key == (None, None) and ordinal < self.token_refiners:
            return CallSite(f"token refiner {ordinal}", False)  # the prompt's tokens only: no video, untouched
        return unexpected_call(key, ordinal)
