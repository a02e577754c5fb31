"""Ideogram 4 (``Ideogram4Transformer2DModel``): single-stream layers over [text; image], ordered by position."""

from __future__ import annotations

import comfy.ldm.ideogram4.model

from .base import TEXT_THEN_IMAGE, CallSite, DiTFamily, unexpected_call


class Ideogram4Family(DiTFamily):
    """Ideogram 4: one self-attention per ``layers`` layer over [text; image] (the text is the conditioning's
    tokens, padding included: a per-row (B, 1, L, L) segment mask keeps padding and content apart); without text
    (``context`` None) the sequence is the image alone, which the same rule places at 0. The model sets no
    ``block_type`` / ``block_index``: layers are told apart by their order in the forward.

    One token per latent pixel: the 128-channel latent is Flux 2's VAE latent patchified 2x2 (the model's
    ``patch_size`` 2 is in the VAE's pixels), so the token grid is the latent's own.
    """

    name = "Ideogram 4"
    configs = ("Ideogram4",)
    model_classes = (comfy.ldm.ideogram4.model.Ideogram4Transformer2DModel,)
    naming = "`layer 0`..; joint text+image self-attention"
    layers = 0

    def plan(self, diffusion_model) -> None:
        self.layers = len(diffusion_model.layers)

    def patch_of(self, diffusion_model) -> tuple[int, int, int]:
        return (1, 1, 1)

    def block_labels(self, diffusion_model) -> list[str]:
        return [f"layer {i}" for i in range(len(diffusion_model.layers))]

    def call_site(self, key, ordinal, call) -> CallSite:
        if key == (None, None) and ordinal < self.layers:
            return CallSite(f"layer {ordinal}", True, image_layout=TEXT_THEN_IMAGE)
        return unexpected_call(key, ordinal)
