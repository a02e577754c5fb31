"""Flux-class families: Flux 1 (dev, schnell, fill, Kontext), Chroma. Joint [text; image] attention."""

from __future__ import annotations

import comfy.ldm.chroma.model
import comfy.ldm.flux.model

from .base import TEXT_THEN_IMAGE, CallSite, DiTFamily, numbered, unexpected_call


class FluxFamily(DiTFamily):
    """Flux / Chroma: double-stream blocks (joint [txt; img] attention), then single-stream blocks (one sequence).

    Kontext's reference latents are appended after the image tokens of the row: they stay part of the row
    (a reference's keys/values; with regions, a guided row's appended tokens run as the unpatched model).
    """

    name = "Flux"
    configs = ("Flux", "FluxSchnell", "FluxInpaint")
    model_classes = (comfy.ldm.flux.model.Flux,)
    naming = "`double 0`.. (double-stream), `single 0`.. (single-stream); joint text+image self-attention"

    def block_labels(self, diffusion_model) -> list[str]:
        return numbered("double", diffusion_model.double_blocks) + numbered("single", diffusion_model.single_blocks)

    def call_site(self, key, ordinal, call) -> CallSite:
        block_type, index = key
        if block_type in ("double", "single") and index is not None and ordinal == 0:
            return CallSite(f"{block_type} {index}", True, image_layout=TEXT_THEN_IMAGE)
        return unexpected_call(key, ordinal)


class ChromaFamily(FluxFamily):
    name = "Chroma"
    configs = ("Chroma",)
    model_classes = (comfy.ldm.chroma.model.Chroma,)
