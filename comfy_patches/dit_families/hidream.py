"""HiDream I1 / E1 (HiDreamImageTransformer2DModel): [image; text] attention, ordered by position in the forward."""

from __future__ import annotations

import math
from dataclasses import replace

import comfy.ldm.hidream.model
import torch

from ...attention_patches.tokens import ImageTokens
from .base import IMAGE_ONLY, CallSite, DiTFamily, numbered, unexpected_call


class HiDreamFamily(DiTFamily):
    """HiDream I1 / E1: double-stream blocks, then single-stream blocks; every block one self-attention.

    The model sets no ``block_type`` / ``block_index``: its calls are told apart by their order in the forward.
    The image tokens come first in every call: double blocks attend over [image; T5; last Llama layer; this
    block's Llama layer], single blocks over [image; T5; last Llama layer (both carried from the double blocks);
    this block's Llama layer]. HiDream E1's image condition (``image_cond``) is concatenated to the latent along
    the width before patching, so each token row holds the image's tokens, then the condition's: the image
    tokens are every row's first ``ceil(w / 2)`` tokens (the condition's tokens stay keys/values, like text).
    """

    name = "HiDream"
    configs = ("HiDream",)
    model_classes = (comfy.ldm.hidream.model.HiDreamImageTransformer2DModel,)
    naming = (
        "`double 0`.. (double-stream), `single 0`.. (single-stream); image+text self-attention (E1's image "
        "condition tokens are keys/values, like the text)"
    )
    calls: tuple[str, ...] = ()

    def plan(self, diffusion_model) -> None:
        self.calls = tuple(self.block_labels(diffusion_model))

    def block_labels(self, diffusion_model) -> list[str]:
        return numbered("double", diffusion_model.double_stream_blocks) + numbered(
            "single", diffusion_model.single_stream_blocks
        )

    def call_site(self, key, ordinal, call) -> CallSite:
        if key == (None, None) and ordinal < len(self.calls):
            return CallSite(self.calls[ordinal], True, image_layout=IMAGE_ONLY)
        return unexpected_call(key, ordinal)

    def with_image_tokens(self, site: CallSite, call) -> CallSite:
        """The image tokens of a HiDream call: the first token rows of the sequence; with E1's ``image_cond``
        (concatenated along the width, then padded to whole patches) the first ``ceil(w / 2)`` tokens of each of
        the ``ceil((w + w_cond) / 2)``-token rows."""
        forward = call.forward
        image_cond = forward.inputs.get("image_cond") if forward is not None else None
        if not torch.is_tensor(image_cond) or forward.latent_shape is None:
            return super().with_image_tokens(site, call)
        height, width = forward.latent_shape[-2:]
        patch_height, patch_width = self.patch[1:]
        row = math.ceil((width + image_cond.shape[-1]) / patch_width)
        image = ImageTokens(
            0, 1, math.ceil(height / patch_height), math.ceil(width / patch_width), (height, width),
            (patch_height, patch_width), row_stride=row,
        )  # fmt: skip
        if image.height * row > call.q_tokens:
            problem = (
                f"{site.label}: the {image.height}x{row} tokens of a {height}x{width} latent with a "
                f"{'x'.join(map(str, image_cond.shape[-2:]))} image condition do not fit the call's {call.q_tokens} tokens"
            )
            return replace(site, image=None, problem=problem)
        return replace(site, image=image)
