"""Helpers shared by every attention patch of the pack: ComfyUI's attention call, the fallback notice, token counts.

No patch module imports another patch module for these; they all import this one.
"""

from __future__ import annotations

import logging

import comfy.ldm.modules.attention as comfy_attention

logger = logging.getLogger(__name__)


class FallbackNotice:
    """Logs a 'layout not understood, this call runs without the patch' warning once per patched model."""

    PLAIN_SELF_ATTENTION = (
        "such attention calls run as plain self-attention (reported once). Guidance stays active wherever the "
        "layout is intact."
    )

    def __init__(self, node_name: str, consequence: str = PLAIN_SELF_ATTENTION):
        self.node_name = node_name
        self.consequence = consequence
        self.reported = False

    def report(self, reason: str) -> None:
        if not self.reported:
            self.reported = True
            logger.warning("%s: %s; %s", self.node_name, reason, self.consequence)


def plain_attention(q, k, v, extra_options):
    """Attention as ComfyUI's CrossAttention computes it: the user's attention backend and overrides."""
    return comfy_attention.optimized_attention(
        q,
        k,
        v,
        heads=extra_options["n_heads"],
        attn_precision=extra_options.get("attn_precision"),
        transformer_options=extra_options,
    )


def feature_map_tokens(activations_shape) -> int:
    """Tokens of a feature map (B, C, *spatial): the product of its spatial sizes."""
    tokens = 1
    for size in activations_shape[2:]:
        tokens *= size
    return tokens
