"""Flux 2 (dev and Klein: one configuration class, ``comfy.supported_models.Flux2``). Joint [text; image] attention.

ComfyUI runs Flux 2 on its Flux class (``comfy.ldm.flux.model.Flux``) with other parameters: 128 latent channels
at patch size 1 (one token per latent pixel of a 16x-down-sampled latent), shared ("global") modulation, no
pooled text vector; dev embeds guidance, Klein does not. The call order is Flux's: double-stream blocks (one
joint attention each), then single-stream blocks. ``model_base.Flux2`` pads the text to at least 512 tokens
(zeros in front), so the image tokens of every call start after those; reference latents (Flux 2 editing,
``ReferenceLatent``) are appended after the image tokens and stay part of the row, as on Kontext.
"""

from __future__ import annotations

from .flux import FluxFamily


class Flux2Family(FluxFamily):
    """Flux 2 dev / Klein: Flux's call order and block names on the Flux class with Flux 2 parameters."""

    name = "Flux 2"
    configs = ("Flux2",)
    naming = (
        "`double 0`.. (double-stream), `single 0`.. (single-stream); joint text+image self-attention (text padded "
        "to 512 tokens)"
    )
