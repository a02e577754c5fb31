"""The attn1 replace object that runs RefDrop's reference feature guidance inside a ComfyUI UNet."""

from __future__ import annotations

from dataclasses import dataclass

from ..attention_patches.layout import ChunkLayout, chunk_layout
from ..attention_patches.rfg import reference_feature_guidance_
from .attention_calls import FallbackNotice, feature_map_tokens, plain_attention
from .model_blocks import existing_replace
from .reference_rows import REFERENCE_ROWS_KEY, row_safe
from .step_window import in_sigma_window


@dataclass(frozen=True)
class RefDropSettings:
    """What one Apply RefDrop node asks for: one coefficient per reference row of each guidance chunk."""

    reference_rows: tuple[int, ...]
    coefficients: tuple[float, ...]
    node_name: str = "Apply RefDrop"
    sigma_range: tuple[float, float] | None = None  # (sigma_start, sigma_end), inclusive; None = every step

    def active_at(self, extra_options: dict) -> bool:
        return self.sigma_range is None or in_sigma_window(extra_options, *self.sigma_range)


def check_reference_rows(layout: ChunkLayout, settings: RefDropSettings) -> None:
    """Raise a ValueError that says how many images are needed when a chunk is too small for the references."""
    references = settings.reference_rows
    needed = max(max(references) + 1, len(references) + 1)
    if layout.own_rows_per_chunk < needed:
        raise ValueError(
            f"{settings.node_name}: the latent batch has {layout.own_rows_per_chunk} image(s)/frame(s), but the "
            f"reference(s) at position {', '.join(str(r) for r in references)} plus at least one image to guide "
            f"need {needed}. Raise the latent's batch size (e.g. Empty Latent Image batch_size, or the video "
            f"frame count) to {needed} or more, or use fewer / earlier references."
        )


class RefDropAttention:
    """attn1 replace: inner self-attention (chained patch or plain) plus Eq. 6 on the guided rows.

    ``inner`` is whatever replace patch was registered for this block before (SAG's middle-block patch, for
    instance): it computes Attn(Q_i, K_i, V_i) for the whole batch, so it still sees what it expects; with
    reference-image rows in the batch, another node's patch sees the latent batch's own rows only
    (``reference_rows.row_safe``). Nothing is stored between calls.
    """

    knows_reference_rows = True  # reads REFERENCE_ROWS_KEY itself (reference_rows.hide_reference_rows)

    def __init__(self, settings: RefDropSettings, notice: FallbackNotice, inner=None):
        self.settings = settings
        self.notice = notice
        self.inner = inner

    def __call__(self, q, k, v, extra_options):
        inner = plain_attention if self.inner is None else row_safe(self.inner)
        out = inner(q, k, v, extra_options)
        if not self.settings.active_at(extra_options):
            return out
        layout = self.layout(q, k, v, extra_options)
        if layout is None:
            return out

        def attention(query, key, value):
            return plain_attention(query, key, value, extra_options)

        masks = self.reference_masks(extra_options, layout)
        return reference_feature_guidance_(q, k, v, out, layout, self.settings.coefficients, attention, masks)

    def reference_masks(self, extra_options, layout):
        """Subject masks of the references on this layer's tokens (references, tokens), or None (whole images)."""
        return None

    def layout(self, q, k, v, extra_options) -> ChunkLayout | None:
        """The chunk layout of this call, or None when it must run as plain self-attention."""
        if not self.guidable_call(q, k, v, extra_options):
            return None
        chunks = self.chunk_count(q, extra_options)
        # Reference-image rows in front of each chunk (reference_rows.py) are invisible to in-batch guidance.
        leading = int(extra_options.get(REFERENCE_ROWS_KEY) or 0)
        layout = chunk_layout(q.shape[0], chunks, self.settings.reference_rows, leading)
        if layout is None:
            self.notice.report(f"{q.shape[0]} rows do not split into {chunks} chunks")
            return None
        check_reference_rows(layout, self.settings)
        return layout

    def guidable_call(self, q, k, v, extra_options) -> bool:
        """True when q/k/v are the block's own feature map (B, h*w, C); warns once when another patch changed it."""
        activations = extra_options.get("activations_shape")
        batch = q.shape[0]
        if k.shape[0] != batch or v.shape[0] != batch or k.shape[1] != v.shape[1]:
            self.notice.report(
                f"q/k/v batches differ ({batch}, {k.shape[0]}, {v.shape[0]}): another patch (e.g. HyperTile) changed "
                "the batch layout"
            )
            return False
        if activations is not None and (activations[0] != batch or feature_map_tokens(activations) != q.shape[1]):
            self.notice.report(
                f"attention input {tuple(q.shape[:2])} does not match the feature map {activations}: another patch "
                "(e.g. HyperTile) changed the batch or token layout"
            )
            return False
        return True

    def chunk_count(self, q, extra_options) -> int:
        """Guidance chunks in this call: one per entry of ``cond_or_uncond`` (each is the whole latent batch)."""
        return len(extra_options.get("cond_or_uncond") or [0])

    # --- ComfyUI patch protocol -------------------------------------------------------------------
    def to(self, device_or_dtype):
        if self.inner is not None and hasattr(self.inner, "to"):
            return type(self)(self.settings, self.notice, self.inner.to(device_or_dtype))
        return self

    def models(self):
        return self.inner.models() if self.inner is not None and hasattr(self.inner, "models") else []

    def cleanup(self):
        if self.inner is not None and hasattr(self.inner, "cleanup"):
            self.inner.cleanup()

    def __deepcopy__(self, memo):
        return self


def patch_self_attention(model, settings: RefDropSettings, blocks, attention_class=RefDropAttention):
    """A clone of ``model`` with ``attention_class`` on every attn1 of ``blocks`` (model_blocks.TransformerBlock).

    A replace already registered for a layer (3-tuple or 2-tuple key) becomes that layer's inner attention. A
    patch that must stay outermost (``stays_outermost``: reference-image guidance, which applies on top of
    whatever self-attention computes) keeps its place and takes the new patch as its inner attention instead.
    """
    patched = model.clone()
    notice = FallbackNotice(settings.node_name)
    for block in blocks:
        for key in block.keys():
            inner = existing_replace(model, "attn1", key)
            if getattr(inner, "stays_outermost", False):
                patch = inner.with_inner(attention_class(settings, notice, inner.inner))
            else:
                patch = attention_class(settings, notice, inner)
            patched.set_model_attn1_replace(patch, *key)
    return patched
