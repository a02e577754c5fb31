"""Guidance-chunk arithmetic: which rows of an attention batch are references and which are guided.

ComfyUI concatenates guidance chunks (positive / negative branches, see ``cond_or_uncond``) along the
batch axis; each chunk is the whole latent batch. Within every chunk some rows are references (RefDrop's
first N images, or the reference frame of a video) and the others are guided toward them. Reference images that
are not part of the latent batch (Apply RefDrop (Reference Image)) travel as extra rows in front of each chunk's
own rows; a layout can mark such leading rows as neither reference nor guided ("passive"), so that a patch that
counts its references among the latent batch's own images does not see them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .guidance import GuidanceGroup, Reference, Span


@dataclass(frozen=True)
class ChunkLayout:
    """Rows of one attention call: ``chunks`` chunks of ``rows_per_chunk`` rows each.

    ``reference_rows`` are indices inside a chunk; the first ``leading_rows`` rows of each chunk are passive
    (left as they are); every other row is guided. ``guided_segments`` lists the guided rows as contiguous
    [start, stop) runs, so that they can be addressed as views (no copies).
    """

    chunks: int
    rows_per_chunk: int
    reference_rows: tuple[int, ...]
    leading_rows: int = 0

    @property
    def guided_segments(self) -> tuple[tuple[int, int], ...]:
        segments, start = [], self.leading_rows
        for ref in sorted(self.reference_rows):
            if ref > start:
                segments.append((start, ref))
            start = ref + 1
        if start < self.rows_per_chunk:
            segments.append((start, self.rows_per_chunk))
        return tuple(segments)

    @property
    def own_rows_per_chunk(self) -> int:
        """Rows of each chunk after the passive leading rows (the latent batch's own images)."""
        return self.rows_per_chunk - self.leading_rows


def chunk_layout(
    batch_rows: int, chunk_count: int, reference_rows: tuple[int, ...], leading_rows: int = 0
) -> ChunkLayout | None:
    """The layout of ``batch_rows`` rows split into ``chunk_count`` equal chunks, or None if they do not split.

    ``reference_rows`` count among each chunk's own rows, after ``leading_rows`` passive rows (extra
    reference-image rows that another patch put in front of every chunk). A reference row index past the end
    of a chunk is an error the caller reports (too few images).
    """
    if chunk_count <= 0 or batch_rows % chunk_count != 0:
        return None
    if batch_rows // chunk_count <= leading_rows:
        return None
    shifted = tuple(leading_rows + row for row in reference_rows)
    return ChunkLayout(chunk_count, batch_rows // chunk_count, shifted, leading_rows)


def in_batch_groups(
    layout: ChunkLayout,
    coefficients: Sequence[float],
    selections: Sequence[torch.Tensor | None] | None = None,
    regions: Sequence[torch.Tensor | None] | None = None,
) -> list[GuidanceGroup]:
    """RefDrop's references of each guidance chunk (Eq. 5 / Eq. 6): guided rows of chunk k <- its reference rows.

    One group per chunk and contiguous run of guided rows; ``layout.reference_rows`` pair with ``coefficients``
    (and, when given, with ``selections``: subject token indices, and ``regions``: guided-token booleans, see
    :class:`~.guidance.Reference`). Zero coefficients are dropped; reference and leading rows are not guided.
    [] when every coefficient is 0.
    """
    count = len(layout.reference_rows)
    if len(coefficients) != count:
        raise ValueError(f"{len(coefficients)} coefficients for {count} references")
    selections = [None] * count if selections is None else list(selections)
    regions = [None] * count if regions is None else list(regions)
    if len(selections) != count or len(regions) != count:
        raise ValueError(f"{len(selections)} selections / {len(regions)} regions for {count} references")
    groups = []
    for chunk in range(layout.chunks):
        base = chunk * layout.rows_per_chunk
        references = tuple(
            Reference(Span(base + row), float(c), selection, region)
            for row, c, selection, region in zip(layout.reference_rows, coefficients, selections, regions, strict=True)
            if c != 0.0
        )
        if references:
            groups.extend(
                GuidanceGroup(Span(base + start, rows=stop - start), references)
                for start, stop in layout.guided_segments
            )
    return groups
