"""RefDrop on diffusion transformers: the policies RefDrop plugs into the shared attention override.

The override (``..dit_override``) finds every self-attention call of the model; these policies say which rows
are references there, as groups for the one Eq. 5 / Eq. 6 implementation. For joint text+image attention the
reference's whole joint sequence is its keys/values (the pack's reading of "RFG applies to DiTs").
"""

from __future__ import annotations

from dataclasses import dataclass

from ...attention_patches.guidance import GuidanceGroup
from ...attention_patches.layout import chunk_layout, in_batch_groups
from ..dit_families import CallSite
from ..dit_override import AttentionCall, NotUnderstood
from ..reference_rows import REFERENCE_MASKS_KEY, REFERENCE_ROWS_KEY
from .settings import RefDropSettings
from .unet import check_reference_rows


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
        return in_batch_groups(layout, self.settings.coefficients)


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
        if options.get(REFERENCE_MASKS_KEY) is not None:
            raise NotUnderstood("subject masks are not placed on diffusion-transformer tokens")
        chunks = len(options.get("cond_or_uncond") or [0])
        layout = chunk_layout(call.rows, chunks, tuple(range(extra)))
        if layout is None or layout.rows_per_chunk <= extra:
            raise NotUnderstood(f"{call.rows} rows do not split into {chunks} chunks with {extra} reference rows")
        return in_batch_groups(layout, self.settings.coefficients)
