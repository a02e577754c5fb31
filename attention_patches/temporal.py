"""Temporal reference feature guidance for video diffusion transformers (RefDrop's video variant), plain torch.

In a video DiT (Wan 2.x) one batch row is a whole clip: self-attention runs over all latent frames' tokens at
once, frame-major, on a grid of (frames, height, width) tokens. RefDrop's Eq. 5 with a reference *frame* of the
same row instead of a reference image: for every query token of every latent frame t other than the reference
frame r,

    X_t' = c * Attn(Q_t, K_r, V_r) + (1 - c) * X_t                                  (Eq. 5, temporal form)

where X_t is the model's own self-attention output for those queries (over the whole clip) and K_r, V_r are the
keys and values of frame r's tokens in the same row and call. Frame r's tokens are left as they are (for them
the formula is the identity). Every row is its own clip with its own reference frame, so guidance branches
(cond_or_uncond) need no bookkeeping here.

Cost: the guided queries attend to one frame's keys, about 1/frames of the full attention. K_r and V_r are
views (no copies); the queries of the frames before and after r are two contiguous runs, each one attention
call over all rows (one call in all when r is the first or the last frame).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# attention(q, k, v) -> out, in the layout of q (the caller binds heads, precision and layout flags).
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def guided_frame_runs(frames: int, reference_frame: int) -> tuple[tuple[int, int], ...]:
    """The guided frames as contiguous [start, stop) runs: every frame except ``reference_frame``."""
    if not 0 <= reference_frame < frames:
        raise ValueError(f"reference frame {reference_frame} is outside the clip's {frames} latent frames")
    runs = []
    if reference_frame > 0:
        runs.append((0, reference_frame))
    if reference_frame + 1 < frames:
        runs.append((reference_frame + 1, frames))
    return tuple(runs)


def temporal_reference_guidance_(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    self_attention: torch.Tensor,
    frames: int,
    reference_frame: int,
    strength: float,
    attention: AttentionFn,
    token_dim: int = 1,
) -> torch.Tensor:
    """Eq. 5 with a reference frame, written into ``self_attention`` (the call's own output) in place.

    ``q``, ``k``, ``v`` and ``self_attention`` hold the same ``frames * tokens_per_frame`` tokens along
    ``token_dim`` (1 for (B, N, C), 2 for (B, heads, N, d)), frame-major. Every row is guided toward its own
    frame ``reference_frame``. ``strength`` is c; negative values extrapolate away from the reference (no
    clamping); 0 leaves the output untouched (no extra attention).
    """
    tokens = q.shape[token_dim]
    if tokens % frames != 0 or k.shape[token_dim] != tokens or self_attention.shape[token_dim] != tokens:
        raise ValueError(f"{tokens} query tokens do not split into {frames} frames of equal size")
    runs = guided_frame_runs(frames, reference_frame)
    if strength == 0.0 or not runs:
        return self_attention
    per_frame = tokens // frames
    reference_keys = k.narrow(token_dim, reference_frame * per_frame, per_frame)
    reference_values = v.narrow(token_dim, reference_frame * per_frame, per_frame)
    for start, stop in runs:
        queries = q.narrow(token_dim, start * per_frame, (stop - start) * per_frame)
        target = self_attention.narrow(token_dim, start * per_frame, (stop - start) * per_frame)
        target.mul_(1.0 - strength).add_(attention(queries, reference_keys, reference_values), alpha=strength)
    return self_attention
