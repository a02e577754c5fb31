"""OmniGen2 and Boogu (its derivative): caption, noise and reference-image refiners, then the joint layers."""

from __future__ import annotations

import comfy.ldm.boogu.model
import comfy.ldm.omnigen.omnigen2

from .base import IMAGE_LAST, IMAGE_ONLY, NO_IMAGE, CallSite, DiTFamily, unexpected_call


class OmniGen2Family(DiTFamily):
    """OmniGen2: caption refiner (text only), noise refiner (image only), reference-image refiner (the edit's
    input images, only when the call has ``ref_latents``), then the layers over [text; reference images; image].

    Every call is self-attention; none sets a block index, so the order in the forward says which is which.
    Reference latents stay part of their row (a reference's keys/values, like Flux Kontext's).
    """

    name = "OmniGen2"
    configs = ("Omnigen2",)
    model_classes = (comfy.ldm.omnigen.omnigen2.OmniGen2Transformer2DModel,)
    naming = (
        "`context refiner 0`.. (text), `noise refiner 0`.. (image), `reference refiner 0`.. (the edit's input "
        "images), `layer 0`.. (joint text+image)"
    )
    # (label, image layout) of each call in forward order, without and with reference latents
    plain_calls: tuple[tuple[str, str], ...] = ()
    edit_calls: tuple[tuple[str, str], ...] = ()

    def refiners(self, diffusion_model, with_references: bool) -> list[tuple[str, str]]:
        calls = [(f"context refiner {i}", NO_IMAGE) for i in range(len(diffusion_model.context_refiner))]
        calls += [(f"noise refiner {i}", IMAGE_ONLY) for i in range(len(diffusion_model.noise_refiner))]
        if with_references:
            calls += [(f"reference refiner {i}", NO_IMAGE) for i in range(len(diffusion_model.ref_image_refiner))]
        return calls

    def main_calls(self, diffusion_model) -> list[tuple[str, str]]:
        return [(f"layer {i}", IMAGE_LAST) for i in range(len(diffusion_model.layers))]

    def plan(self, diffusion_model) -> None:
        main = self.main_calls(diffusion_model)
        self.plain_calls = tuple(self.refiners(diffusion_model, False) + main)
        self.edit_calls = tuple(self.refiners(diffusion_model, True) + main)

    def block_labels(self, diffusion_model) -> list[str]:
        return list(
            dict.fromkeys(label for label, _ in self.refiners(diffusion_model, True) + self.main_calls(diffusion_model))
        )

    def call_site(self, key, ordinal, call) -> CallSite:
        edit = call.forward is not None and call.forward.inputs.get("ref_latents") is not None
        calls = self.edit_calls if edit else self.plain_calls
        if key == (None, None) and ordinal < len(calls):
            label, layout = calls[ordinal]
            return CallSite(label, True, image_layout=layout)
        return unexpected_call(key, ordinal)


class BooguFamily(OmniGen2Family):
    """Boogu: OmniGen2's refiners, then double-stream blocks (a joint [text; reference images; image] attention,
    then an image-only [reference images; image] self-attention, both labelled by their block), then single-stream
    layers over [text; reference images; image]."""

    name = "Boogu"
    configs = ("Boogu",)
    model_classes = (comfy.ldm.boogu.model.BooguTransformer2DModel,)
    naming = (
        "`context refiner 0`.. (text), `noise refiner 0`.. (image), `reference refiner 0`.. (the edit's input "
        "images), `double 0`.. (joint text+image, then image self-attention), `single 0`.. (joint text+image)"
    )

    def main_calls(self, diffusion_model) -> list[tuple[str, str]]:
        calls = []
        for i in range(len(diffusion_model.double_stream_layers)):
            calls += [(f"double {i}", IMAGE_LAST), (f"double {i}", IMAGE_LAST)]
        return calls + [(f"single {i}", IMAGE_LAST) for i in range(len(diffusion_model.single_stream_layers))]
