"""RefDrop on diffusion transformers: the policies RefDrop plugs into the shared attention override.

The override (``..dit_override``) finds every self-attention call of the model; these policies say which rows
are references there, as groups for the one Eq. 5 / Eq. 6 implementation. For joint text+image attention the
reference's whole joint sequence is its keys/values (the pack's reading of "RFG applies to DiTs"). Subject masks
and regions (our extensions) act on the call's image tokens, which the family places (``site.image``): a
reference keeps its non-image tokens (text, Kontext / edit tokens) as keys/values; with regions, a guided row's
non-image tokens are computed as the unpatched model computes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...attention_patches.guidance import GuidanceGroup
from ...attention_patches.layout import chunk_layout, in_batch_groups
from ...attention_patches.tokens import image_token_mask
from ..dit_families import NO_IMAGE, CallSite
from ..dit_override import AttentionCall, NotUnderstood
from ..reference_rows import REFERENCE_MASKS_KEY, REFERENCE_ROWS_KEY
from .settings import RefDropSettings
from .unet import check_reference_rows


def region_weights(settings: RefDropSettings, call: AttentionCall, site: CallSite, references: int):
    """m_j(t) per reference over the call's tokens (image tokens from the regions, others 0), or None (no regions).

    Raises NotUnderstood when regions are set but the call's image tokens are unknown.
    """
    if settings.regions is None:
        return None
    image = site.image
    if image is None:
        if site.image_layout == NO_IMAGE:
            return [torch.zeros(call.q_tokens, dtype=torch.bool, device=call.q.device)] * references
        raise NotUnderstood("the image tokens of this call are unknown, so the regions cannot be placed")
    placed = settings.regions.on_image_tokens(image, call.q.device)
    positions = image.positions(call.q.device)
    weights = []
    for j in range(references):
        region = torch.zeros(call.q_tokens, dtype=torch.bool, device=call.q.device)
        region[positions] = placed[j if len(placed) > 1 else 0]
        weights.append(region)
    return weights


def subject_selections(masks: torch.Tensor | None, call: AttentionCall, site: CallSite):
    """S_j per reference: its subject image tokens plus all of its non-image tokens (token indices), or None.

    A reference without a subject token at this call gets an empty selection (its c_j counts as 0 here).
    """
    if masks is None:
        return None
    image = site.image
    if image is None:
        if site.image_layout == NO_IMAGE:
            return None  # a text-only call: every reference keeps all its tokens
        raise NotUnderstood("the image tokens of this call are unknown, so the subject masks cannot be placed")
    selected = image_token_mask(masks, image).to(call.q.device)
    positions = image.positions(call.q.device)
    is_image = torch.zeros(call.k_tokens, dtype=torch.bool, device=call.q.device)
    is_image[positions] = True
    outside = (~is_image).nonzero().squeeze(1)
    selections = []
    for row in selected:
        subject = positions[row]
        selections.append(torch.cat([subject, outside]).sort().values if subject.numel() else subject)
    return selections


@dataclass(frozen=True)
class InBatchReferences:
    """RefDrop's in-batch policy (paper Eq. 5 / Eq. 6): the first rows of every guidance chunk are references.

    Chunks come from ``cond_or_uncond`` (each is the whole latent batch); each classifier-free-guidance branch
    uses its own reference rows. Reference-image rows in front of each chunk are neither references nor guided.
    """

    settings: RefDropSettings

    @property
    def node_name(self) -> str:
        return self.settings.node_name

    def groups(self, call: AttentionCall, site: CallSite) -> list[GuidanceGroup] | None:
        options = call.transformer_options
        if not self.settings.window.contains(options):
            return None
        chunks = len(options.get("cond_or_uncond") or [0])
        leading = int(options.get(REFERENCE_ROWS_KEY) or 0)
        layout = chunk_layout(call.rows, chunks, self.settings.reference_rows, leading)
        if layout is None:
            raise NotUnderstood(f"{call.rows} rows do not split into {chunks} guidance chunks")
        check_reference_rows(layout, self.settings)
        regions = region_weights(self.settings, call, site, len(self.settings.coefficients))
        return in_batch_groups(layout, self.settings.coefficients, regions=regions)


@dataclass(frozen=True)
class ReferenceImageRows:
    """Apply RefDrop (Reference Image) on a DiT (our extension: clean reference images, not generated in the batch).

    ``reference_rows.ReferenceRows`` puts the noised reference latents as extra rows in front of every guidance
    chunk; those rows are the chunk's references for Eq. 5 / 6 and every other row of the chunk is guided. Stays
    the outermost override (an in-batch Apply RefDrop applied later goes inside it), so its guidance applies on
    top of the in-batch guidance, as on UNets.
    """

    settings: RefDropSettings
    stays_outermost = True

    @property
    def node_name(self) -> str:
        return self.settings.node_name

    def groups(self, call: AttentionCall, site: CallSite) -> list[GuidanceGroup] | None:
        options = call.transformer_options
        extra = options.get(REFERENCE_ROWS_KEY)
        if not extra or not self.settings.window.contains(options):
            return None
        if extra != len(self.settings.coefficients):
            raise NotUnderstood(f"{extra} reference rows for {len(self.settings.coefficients)} reference images")
        chunks = len(options.get("cond_or_uncond") or [0])
        layout = chunk_layout(call.rows, chunks, tuple(range(extra)))
        if layout is None or layout.rows_per_chunk <= extra:
            raise NotUnderstood(f"{call.rows} rows do not split into {chunks} chunks with {extra} reference rows")
        selections = subject_selections(options.get(REFERENCE_MASKS_KEY), call, site)
        regions = region_weights(self.settings, call, site, extra)
        return in_batch_groups(layout, self.settings.coefficients, selections, regions)
