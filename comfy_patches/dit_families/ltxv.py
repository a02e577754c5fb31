"""LTX-Video (LTXVModel, the video-only LTXV configuration): per block a video self-attention, then the text one."""

from __future__ import annotations

import comfy.ldm.lightricks.model

from .base import IMAGE_ONLY, NO_IMAGE, CallSite, DiTFamily, unexpected_call

KEYFRAME_GUIDES = (
    "this clip has keyframe guides (LTXVAddGuide): their latents are appended to the clip as extra frames and, "
    "with a guide strength other than 1, the model splits each self-attention into several partial calls, so "
    "Temporal RefDrop leaves every attention of this clip unchanged"
)


class LTXVFamily(DiTFamily):
    """LTX-Video (0.9.x): per block ``attn1``, a self-attention over every latent frame's tokens (one token per
    latent pixel, frame-major), then ``attn2``, the cross-attention to the text (never touched). The model sets
    no ``block_type`` / ``block_index``: block i's calls are calls 2i and 2i + 1. Image-to-video
    (LTXVImgToVideo) only changes the first frame's noise level, not the tokens.

    Keyframe guides (LTXVAddGuide, ``keyframe_idxs``) are not handled: a clip with guides runs unchanged, with
    one warning (see :data:`KEYFRAME_GUIDES`)."""

    name = "LTX-Video"
    video = True
    configs = ("LTXV",)
    model_classes = (comfy.ldm.lightricks.model.LTXVModel,)
    naming = (
        "`block 0`..; video self-attention (the text cross-attention is untouched; clips with keyframe guides run "
        "unchanged)"
    )
    blocks = 0

    def plan(self, diffusion_model) -> None:
        self.blocks = len(diffusion_model.transformer_blocks)

    def patch_of(self, diffusion_model) -> tuple[int, int, int]:
        return tuple(int(size) for size in diffusion_model.patchifier.patch_size)

    def block_labels(self, diffusion_model) -> list[str]:
        return [f"block {i}" for i in range(len(diffusion_model.transformer_blocks))]

    def call_site(self, key, ordinal, call) -> CallSite:
        keyframes = call.forward.inputs.get("keyframe_idxs") if call.forward is not None else None
        if keyframes is not None and keyframes.shape[2] > 0:
            return CallSite(None, False, problem=KEYFRAME_GUIDES)
        if key != (None, None) or ordinal >= 2 * self.blocks:
            return unexpected_call(key, ordinal)
        label = f"block {ordinal // 2}"
        self_attention = ordinal % 2 == 0
        return CallSite(label, self_attention, image_layout=IMAGE_ONLY if self_attention else NO_IMAGE)
