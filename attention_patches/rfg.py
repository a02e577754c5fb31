"""Reference Feature Guidance (RefDrop, NeurIPS 2024): the equations of the paper, plain torch.

Notation (paper Sec. 3): for a self-attention layer, Attn(Q, K, V) = softmax(Q K^T / sqrt(d)) V, computed
per head, before the output projection. Sample 1..N of a batch are references; every other sample i is
guided toward them.

Subject masks are this pack's extension (the paper lists attention masks as future work): a reference's keys
and values are restricted to the tokens of its subject, Attn(Q_i, K_ref[M], V_ref[M]).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

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
    reference_masks: torch.Tensor | None = None,
) -> torch.Tensor:
    """RFG, Eq. 6 (Eq. 5 when there is one reference), written into ``self_attention`` in place.

    For every guided row i of every chunk:
        X_i' = sum_j c_j * Attn(Q_i, K_j, V_j) + (1 - sum_j c_j) * Attn(Q_i, K_i, V_i)
    where j runs over the chunk's reference rows (``layout.reference_rows``, paired with
    ``coefficients``) and ``self_attention`` already holds Attn(Q, K, V) for the whole batch.
    Reference rows are not touched (for them the formula is the identity). One extra attention per
    reference and guided row; references are never concatenated (that would couple their softmax).
    Negative coefficients extrapolate away from the reference (no clamping).

    Subject masks (our extension): ``reference_masks`` (references, tokens) of booleans, one row per
    reference in ``layout.reference_rows`` order (see :func:`subject_token_mask`), restricts reference j's
    keys/values to its masked tokens, Attn(Q_i, K_j[M_j], V_j[M_j]); a reference with no masked token in this
    layer counts with c_j = 0 here. An all-true row is the unmasked reference.
    """
    if len(coefficients) != len(layout.reference_rows):
        raise ValueError(f"{len(coefficients)} coefficients for {len(layout.reference_rows)} references")
    if reference_masks is not None and tuple(reference_masks.shape) != (len(coefficients), q.shape[1]):
        raise ValueError(
            f"reference masks of shape {tuple(reference_masks.shape)} for {len(coefficients)} references of "
            f"{q.shape[1]} tokens"
        )
    active = []  # (row, c_j, kept token indices or None for all tokens)
    for index, (row, c) in enumerate(zip(layout.reference_rows, coefficients, strict=True)):
        tokens = None
        if reference_masks is not None and not bool(reference_masks[index].all()):
            tokens = reference_masks[index].nonzero().squeeze(1).to(k.device)
            if tokens.numel() == 0:
                continue  # no subject token in this layer: c_j = 0 here
        if c != 0.0:
            active.append((row, float(c), tokens))
    if not active:
        return self_attention
    keep = 1.0 - sum(c for _, c, _ in active)
    # One chunk at a time: the temporary reference-attention output then covers one chunk's guided rows,
    # which keeps the call's peak memory below that of the plain attention it follows.
    for chunk in range(layout.chunks):
        rows = slice(chunk, chunk + 1)
        for start, stop in layout.guided_segments:
            queries = chunk_rows(q, layout, start, stop)[rows]
            target = chunk_rows(self_attention, layout, start, stop)[rows]
            target.mul_(keep)
            for row, coefficient, tokens in active:
                keys = chunk_rows(k, layout, row, row + 1)[rows]
                values = chunk_rows(v, layout, row, row + 1)[rows]
                if tokens is not None:  # the subject's tokens only (a gather of one row's K/V)
                    keys, values = keys.index_select(1, tokens), values.index_select(1, tokens)
                target.add_(attention(queries, keys, values), alpha=coefficient)
    return self_attention


def subject_token_mask(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Subject masks (our extension) on a layer's token grid: (references, h*w) booleans, row-major tokens.

    ``masks`` (references, H, W) in [0, 1] (white = subject) is area-averaged onto the (h, w) grid of the
    layer's feature map; a token belongs to the subject when its average is >= 0.5.
    """
    height, width = grid
    averaged = F.interpolate(masks.unsqueeze(1).float(), size=(height, width), mode="area")
    return (averaged >= 0.5).reshape(masks.shape[0], height * width)
