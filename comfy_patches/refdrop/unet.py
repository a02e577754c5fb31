"""RefDrop on SD UNets: the attn1 replace that runs Eq. 5 / Eq. 6 inside every guided self-attention layer."""

from __future__ import annotations

from ...attention_patches.guidance import GuidanceGroup, reference_feature_guidance_
from ...attention_patches.layout import ChunkLayout, chunk_layout, in_batch_groups
from ...attention_patches.tokens import token_grid_mask
from ..attention_calls import FallbackNotice, feature_map_tokens, plain_attention
from ..dit_override import EXTRA_CALL_KEY
from ..reference_rows import REFERENCE_MASKS_KEY, REFERENCE_ROWS_KEY, row_safe
from ..unet_blocks import existing_replace
from .settings import RefDropSettings


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
    """attn1 replace: inner self-attention (chained patch or plain), then Eq. 5 / Eq. 6 on the guided rows.

    ``inner`` is whatever replace patch was registered for this block before (SAG's middle-block patch, for
    instance): it computes Attn(Q_i, K_i, V_i) for the whole batch, so it still sees what it expects; with
    reference-image rows in the batch, another node's patch sees the latent batch's own rows only
    (``reference_rows.row_safe``). Nothing is stored between calls. Subclasses choose the groups (which rows
    are references): :meth:`layout` and :meth:`groups`.
    """

    knows_reference_rows = True  # reads REFERENCE_ROWS_KEY itself (reference_rows.hide_reference_rows)

    def __init__(self, settings: RefDropSettings, notice: FallbackNotice, inner=None):
        self.settings = settings
        self.notice = notice
        self.inner = inner

    def __call__(self, q, k, v, extra_options):
        inner = plain_attention if self.inner is None else row_safe(self.inner)
        out = inner(q, k, v, extra_options)
        if not self.settings.window.contains(extra_options):
            return out
        layout = self.layout(q, k, v, extra_options)
        if layout is None:
            return out
        groups = self.groups(layout, extra_options, q.device)
        if not groups:
            return out

        extra_call = {**extra_options, EXTRA_CALL_KEY: True}  # marked: other nodes' overrides pass it through

        def attention(queries, keys, values, mask):
            return plain_attention(queries, keys, values, extra_call)

        return reference_feature_guidance_(out, q, k, v, groups, attention)

    def groups(self, layout: ChunkLayout, extra_options, device) -> list[GuidanceGroup]:
        """In-batch references: the chunk's reference rows guide its other rows (Eq. 5 / Eq. 6)."""
        regions = self.region_weights(extra_options, device)
        return in_batch_groups(layout, self.settings.coefficients, regions=regions)

    def region_weights(self, extra_options, device) -> list | None:
        """m_j(t) on this layer's feature map, one per reference (our extension), or None without regions."""
        regions = self.settings.regions
        if regions is None:
            return None
        placed = regions.on_grid(tuple(extra_options["activations_shape"][2:]), device)
        return [placed[j if len(placed) > 1 else 0] for j in range(len(self.settings.coefficients))]

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
        if self.settings.regions is not None and (activations is None or len(activations) != 4):
            self.notice.report("the feature map's grid is unknown, so the regions cannot be placed")
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


class ReferenceImageAttention(RefDropAttention):
    """attn1 replace of Apply RefDrop (Reference Image): Eq. 6 toward the reference-image rows in front of each
    chunk (``reference_rows.ReferenceRows``), with optional subject masks (our extension), on top of whatever
    the inner self-attention computed (an in-batch Apply RefDrop included).

    Stays the outermost attn1 patch of its layer (an in-batch Apply RefDrop applied later goes inside it), so
    its guidance always applies on top of the in-batch guidance. Calls without reference rows (outside the
    step window) return the inner attention unchanged; the extra rows keep what the inner attention computed.
    """

    stays_outermost = True

    def with_inner(self, inner) -> ReferenceImageAttention:
        return type(self)(self.settings, self.notice, inner)

    def layout(self, q, k, v, extra_options) -> ChunkLayout | None:
        extra = extra_options.get(REFERENCE_ROWS_KEY)
        if not extra or not self.guidable_call(q, k, v, extra_options):
            return None
        if extra != len(self.settings.coefficients):
            self.notice.report(f"{extra} reference rows for {len(self.settings.coefficients)} reference images")
            return None
        chunks = self.chunk_count(q, extra_options)
        layout = chunk_layout(q.shape[0], chunks, tuple(range(extra)))
        if layout is None or layout.rows_per_chunk <= extra:
            self.notice.report(f"{q.shape[0]} rows do not split into {chunks} chunks with {extra} reference rows")
            return None
        placed = extra_options.get(REFERENCE_MASKS_KEY) is not None or self.settings.regions is not None
        if placed and len(extra_options.get("activations_shape", ())) != 4:
            self.notice.report("the feature map's grid is unknown, so the subject masks / regions cannot be placed")
            return None
        return layout

    def groups(self, layout: ChunkLayout, extra_options, device) -> list[GuidanceGroup]:
        masks = extra_options.get(REFERENCE_MASKS_KEY)
        selections = None
        if masks is not None:  # subject masks on this layer's feature-map grid: S_j
            height, width = extra_options["activations_shape"][2:]
            selections = [row.nonzero().squeeze(1) for row in token_grid_mask(masks, (height, width))]
        return in_batch_groups(
            layout, self.settings.coefficients, selections, self.region_weights(extra_options, device)
        )


def patch_self_attention(model, settings: RefDropSettings, blocks, attention_class=RefDropAttention):
    """A clone of ``model`` with ``attention_class`` on every attn1 of ``blocks`` (unet_blocks.TransformerBlock).

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
