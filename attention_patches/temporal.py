"""Temporal reference feature guidance for video diffusion transformers (RefDrop's video variant), plain torch.

In a video DiT (Wan 2.x) one batch row is a whole clip: self-attention runs over all latent frames' tokens at
once, frame-major, on a grid of (frames, height, width) tokens. RefDrop's Eq. 5 with a reference *frame* of the
same row instead of a reference image: for every query token of every latent frame t other than the reference
frame r,

    X_t' = c * Attn(Q_t, K_r, V_r) + (1 - c) * X_t                                  (Eq. 5, temporal form)

where X_t is the model's own self-attention output for those queries (over the whole clip) and K_r, V_r are the
keys and values of frame r's tokens in the same row and call. Frame r's tokens are left as they are (for them
the formula is the identity). Every row is its own clip with its own reference frame, so guidance branches
(cond_or_uncond) need no bookkeeping.

This module is the *policy* (which tokens are guided toward which); the blend itself is the one shared
implementation, :func:`..guidance.reference_feature_guidance_`. Cost: the guided queries attend to one frame's
keys, about 1/frames of the full attention. K_r and V_r are views (no copies); the frames before and after r
are two contiguous runs of tokens, each one group over all rows, paired row by row with frame r of the same
row: one batched attention call per run (one call in all when r is the first or the last frame).
"""

from __future__ import annotations

import torch

from .guidance import GuidanceGroup, Reference, Span


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


def reference_frame_groups(
    rows: int,
    frames: int,
    tokens_per_frame: int,
    reference_frame: int,
    strength: float,
    video_start: int = 0,
    tokens: int | None = None,
    device: torch.device | None = None,
) -> list[GuidanceGroup]:
    """Eq. 5 with a reference frame: every row's frames t != r <- the same row's frame r (and its other tokens).

    The row's video tokens are [video_start, video_start + frames * n), frame-major (frame t is tokens
    [video_start + t*n, video_start + (t+1)*n) with n = ``tokens_per_frame``). ``tokens``: the row's token count
    (None = video tokens only). When the row has other tokens (joint text+video sequences, appended condition
    tokens), K_r, V_r are frame r's tokens plus those other tokens, and the other tokens are never guided. Each
    run of guided frames is one group over all ``rows`` rows, its reference paired row by row. [] when
    ``strength`` is 0.
    """
    runs = guided_frame_runs(frames, reference_frame)
    if strength == 0.0:
        return []
    n, video_stop = tokens_per_frame, video_start + frames * tokens_per_frame
    tokens = video_stop if tokens is None else tokens
    frame_r = (video_start + reference_frame * n, video_start + (reference_frame + 1) * n)
    if video_start == 0 and tokens == video_stop:
        reference = Reference(Span(0, rows, *frame_r), float(strength))
    else:  # S_r: frame r's video tokens and every non-video token of the row (a gather of 1/frames of K, V)
        selection = torch.cat(
            [torch.arange(0, video_start), torch.arange(*frame_r), torch.arange(video_stop, tokens)]
        ).to(device)
        reference = Reference(Span(0, rows, 0, tokens), float(strength), selection=selection)
    return [
        GuidanceGroup(Span(0, rows, video_start + start * n, video_start + stop * n), (reference,))
        for start, stop in runs
    ]
