"""Reference Feature Guidance (RefDrop, NeurIPS 2024): the equations of the paper, plain torch.

Notation (paper Sec. 3): for a self-attention layer, Attn(Q, K, V) = softmax(Q K^T / sqrt(d)) V, computed
per head, before the output projection. Sample 1..N of a batch are references; every other sample i is
guided toward them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .layout import ChunkLayout, chunk_rows

# attention(q, k, v) -> out, all (B, tokens, heads*dim_head); the caller binds heads and precision.
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def reference_feature_guidance_(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    self_attention: torch.Tensor,
    layout: ChunkLayout,
    coefficients: Sequence[float],
    attention: AttentionFn,
) -> torch.Tensor:
    """RFG, Eq. 6 (Eq. 5 when there is one reference), written into ``self_attention`` in place.

    For every guided row i of every chunk:
        X_i' = sum_j c_j * Attn(Q_i, K_j, V_j) + (1 - sum_j c_j) * Attn(Q_i, K_i, V_i)
    where j runs over the chunk's reference rows (``layout.reference_rows``, paired with
    ``coefficients``) and ``self_attention`` already holds Attn(Q, K, V) for the whole batch.
    Reference rows are not touched (for them the formula is the identity). One extra attention per
    reference and guided row; references are never concatenated (that would couple their softmax).
    Negative coefficients extrapolate away from the reference (no clamping).
    """
    if len(coefficients) != len(layout.reference_rows):
        raise ValueError(f"{len(coefficients)} coefficients for {len(layout.reference_rows)} references")
    active = [(row, float(c)) for row, c in zip(layout.reference_rows, coefficients, strict=True) if c != 0.0]
    if not active:
        return self_attention
    keep = 1.0 - sum(c for _, c in active)
    # One chunk at a time: the temporary reference-attention output then covers one chunk's guided rows,
    # which keeps the call's peak memory below that of the plain attention it follows.
    for chunk in range(layout.chunks):
        rows = slice(chunk, chunk + 1)
        for start, stop in layout.guided_segments:
            queries = chunk_rows(q, layout, start, stop)[rows]
            target = chunk_rows(self_attention, layout, start, stop)[rows]
            target.mul_(keep)
            for row, coefficient in active:
                keys = chunk_rows(k, layout, row, row + 1)[rows]
                values = chunk_rows(v, layout, row, row + 1)[rows]
                target.add_(attention(queries, keys, values), alpha=coefficient)
    return self_attention
