"""Lumina 2 / Z-Image (NextDiT): caption refiner, noise refiner, then the main layers; all self-attention."""

from __future__ import annotations

import comfy.ldm.lumina.model

from .base import IMAGE_LAST, IMAGE_ONLY, NO_IMAGE, CallSite, DiTFamily, unexpected_call


class LuminaFamily(DiTFamily):
    """Lumina 2 / Z-Image (NextDiT): caption refiner, noise refiner, then the main layers; all self-attention.

    The refiners run before the model sets ``block_index``; they are told apart by their order in the forward.
    Z-Image "omni" calls (reference latents / SigLIP features) change the batch layout: they run unguided.
    """

    name = "Lumina 2 / Z-Image"
    configs = ("Lumina2", "ZImage")
    model_classes = (comfy.ldm.lumina.model.NextDiT,)
    naming = (
        "`context refiner 0`.. (caption tokens), `noise refiner 0`.. (image tokens), `layer 0`.. (joint caption+image)"
    )
    context_refiners = 0
    noise_refiners = 0

    def plan(self, diffusion_model) -> None:
        self.context_refiners = len(diffusion_model.context_refiner)
        self.noise_refiners = len(diffusion_model.noise_refiner)
        self.token_multiple = getattr(diffusion_model, "pad_tokens_multiple", None)

    def block_labels(self, diffusion_model) -> list[str]:
        return (
            [f"context refiner {i}" for i in range(len(diffusion_model.context_refiner))]
            + [f"noise refiner {i}" for i in range(len(diffusion_model.noise_refiner))]
            + [f"layer {i}" for i in range(len(diffusion_model.layers))]
        )

    def call_site(self, key, ordinal, call) -> CallSite:
        if call.forward is not None and call.forward.inputs.get("ref_latents"):
            return CallSite(None, False, "Z-Image omni inputs (reference latents) are not guided")
        block_type, index = key
        if block_type == "double" and index is not None and ordinal == 0:
            return CallSite(f"layer {index}", True, image_layout=IMAGE_LAST)
        if key == (None, None):
            if ordinal < self.context_refiners:
                return CallSite(f"context refiner {ordinal}", True, image_layout=NO_IMAGE)
            if ordinal < self.context_refiners + self.noise_refiners:
                return CallSite(f"noise refiner {ordinal - self.context_refiners}", True, image_layout=IMAGE_ONLY)
        return unexpected_call(key, ordinal)
