"""Cosmos video: Predict2 Video2World (MiniTrainDIT, as Cosmos Predict2 image) and Cosmos 1 (GeneralDIT)."""

from __future__ import annotations

import comfy.ldm.cosmos.model

from .base import IMAGE_ONLY, NO_IMAGE, CallSite, DiTFamily, unexpected_call
from .cosmos import CosmosPredict2Family


class CosmosPredict2VideoFamily(CosmosPredict2Family):
    """Cosmos Predict2 Video2World (image-to-video): the text-to-image model's class and call order, on a clip:
    per block a self-attention over every latent frame's tokens (frame-major), then the text cross-attention
    (never touched). The conditioning frames are the latent's first frames (a denoise mask), not extra tokens."""

    name = "Cosmos Predict2 Video"
    video = True
    configs = ("CosmosI2VPredict2",)
    naming = "`block 0`..; video self-attention (the text cross-attention is untouched)"


class Cosmos1Family(DiTFamily):
    """Cosmos 1 (text-to-video, Video2World): GeneralDIT. Each block runs the sub-blocks of its ``block_config``
    ("FA-CA-MLP"): a full self-attention over every latent frame's tokens (frame-major), a cross-attention to the
    text (never touched), an MLP. The model sets no ``block_type`` / ``block_index``: the calls are told apart by
    their order, read off the model's sub-blocks."""

    name = "Cosmos 1"
    video = True
    configs = ("CosmosT2V", "CosmosI2V")
    model_classes = (comfy.ldm.cosmos.model.GeneralDIT,)
    naming = "`block 0`..; video self-attention (the text cross-attention is untouched)"
    calls: tuple[tuple[int, bool], ...] = ()  # per attention call of a forward: (block, self-attention)

    def plan(self, diffusion_model) -> None:
        calls = []
        for index, block in enumerate(diffusion_model.blocks.values()):
            for part in block.blocks:
                if part.block_type in ("full_attn", "fa", "cross_attn", "ca"):
                    calls.append((index, part.block_type in ("full_attn", "fa")))
        self.calls = tuple(calls)

    def patch_of(self, diffusion_model) -> tuple[int, int, int]:
        spatial = int(diffusion_model.patch_spatial)
        return (int(diffusion_model.patch_temporal), spatial, spatial)

    def block_labels(self, diffusion_model) -> list[str]:
        return [f"block {i}" for i in range(len(diffusion_model.blocks))]

    def call_site(self, key, ordinal, call) -> CallSite:
        if key == (None, None) and ordinal < len(self.calls):
            index, self_attention = self.calls[ordinal]
            return CallSite(f"block {index}", self_attention, image_layout=IMAGE_ONLY if self_attention else NO_IMAGE)
        return unexpected_call(key, ordinal)
