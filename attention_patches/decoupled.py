"""Decoupled cross-attention (EasyRef / IP-Adapter style): text and reference tokens in two separate softmaxes.

EasyRef (arXiv 2412.09618, Sec. 3, following IP-Adapter) adds to every cross-attention layer

    out = Attn(Q, K_text, V_text) + scale * Attn(Q, W_k_ip · R, W_v_ip · R)            (decoupled cross-attention)

before the layer's output projection, where R are the 64 reference tokens of the group. Text and reference tokens
never share a softmax. With classifier-free guidance, the positive guidance chunks use the conditional reference
tokens and the negative chunks the unconditional ones (black image, bare instruction).

:func:`decoupled_reference_term` computes the second term; the text term is the layer's own attention, computed
(or chained) by the ComfyUI glue, which adds the two. This module is plain torch: the attention function is passed in (ComfyUI's ``optimized_attention`` in the host),
so no attention matrix is ever materialised here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

POSITIVE, NEGATIVE = 0, 1  # ComfyUI's cond_or_uncond values


def chunk_kinds(batch_rows: int, cond_or_uncond: Sequence[int] | None) -> tuple[int, ...] | None:
    """The guidance kind (0 positive, 1 negative) of every chunk, or None if ``batch_rows`` does not split.

    ComfyUI concatenates whole-latent-batch chunks listed by ``cond_or_uncond`` (e.g. [1, 0], [0], [1, 0, 0]);
    a call without that list is one positive chunk.
    """
    kinds = tuple(NEGATIVE if int(c) == NEGATIVE else POSITIVE for c in (cond_or_uncond or [POSITIVE]))
    if batch_rows % len(kinds) != 0:
        return None
    return kinds


def reference_attention(
    q: torch.Tensor,
    reference_keys: dict[int, torch.Tensor],
    reference_values: dict[int, torch.Tensor],
    kinds: Sequence[int],
    attention: Attention,
) -> torch.Tensor:
    """Attn(Q, K_ref, V_ref) for every row of ``q`` (B, N, C), with each chunk's own reference tokens.

    ``reference_keys[kind]`` / ``reference_values[kind]`` are (1, T, C): the projected reference tokens W_k_ip·R,
    W_v_ip·R of the positive (kind 0) or negative (kind 1) branch. Every chunk of B/len(kinds) rows attends to the
    tokens of its kind. The rows of one chunk are folded into one query sequence (attention treats queries
    independently, so this is exactly per-row attention) and all chunks go through one attention call.
    """
    chunks = len(kinds)
    rows, tokens, width = q.shape
    per_chunk = rows // chunks
    keys = torch.cat([reference_keys[kind] for kind in kinds], dim=0)  # (chunks, T, C)
    values = torch.cat([reference_values[kind] for kind in kinds], dim=0)
    folded = q.reshape(chunks, per_chunk * tokens, width)
    return attention(folded, keys, values).reshape(rows, tokens, -1)


def mask_for_tokens(
    mask: torch.Tensor, rows_per_chunk: int, grid: tuple[int, int], leading_rows: int = 0
) -> torch.Tensor:
    """A (rows_per_chunk, h*w, 1) gate in [0, 1] from a ComfyUI MASK (Bm, H, W), averaged onto the token grid.

    Area averaging gives every token the fraction of its patch the mask covers. Mask batch row i gates image i of
    the latent batch; a shorter mask batch is repeated (as ComfyUI repeats conditioning masks). ``leading_rows``
    rows in front of each chunk are not images of the latent batch (reference pictures that another patch put
    there, conditioned like the chunk's first image): they take the first image's gate.
    """
    if mask.dim() == 2:
        mask = mask.unsqueeze(0)
    height, width = grid
    resized = F.interpolate(mask.unsqueeze(1).float(), size=(height, width), mode="area").clamp_(0.0, 1.0)
    images = torch.arange(rows_per_chunk, device=resized.device) - leading_rows
    index = images.clamp_(min=0) % resized.shape[0]
    return resized[index].reshape(rows_per_chunk, height * width, 1)


def decoupled_reference_term(
    q: torch.Tensor,
    reference_keys: dict[int, torch.Tensor],
    reference_values: dict[int, torch.Tensor],
    kinds: Sequence[int],
    scale: float,
    attention: Attention,
    token_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The reference term of decoupled cross-attention: scale * Attn(Q, W_k_ip·R, W_v_ip·R) [* mask].

    Added by the caller to the text attention Attn(Q, K_text, V_text). ``token_mask`` is the
    (rows_per_chunk, N, 1) gate from :func:`mask_for_tokens`; it applies to every guidance chunk alike.
    """
    term = reference_attention(q, reference_keys, reference_values, kinds, attention)
    if token_mask is not None:
        chunks = len(kinds)
        gate = token_mask.to(device=term.device, dtype=term.dtype)
        term = (term.view(chunks, -1, *term.shape[1:]) * gate).view(term.shape)
    return term * scale
