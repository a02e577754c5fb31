"""Direct reference computations the tests compare the pack against (the definitions, written out)."""

import torch


def direct_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V per head for (B, N, heads*d) inputs, materialising the weights (float64 in tests)."""
    d = q.shape[-1] // heads

    def split(x):
        return x.reshape(x.shape[0], x.shape[1], heads, d).transpose(1, 2)

    weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / d**0.5, dim=-1)
    return (weights @ split(v)).transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """The same through a fused kernel, like ComfyUI's backends: the weights are never materialised."""
    width = q.shape[-1]

    def split(x):
        return x.reshape(x.shape[0], -1, heads, width // heads).transpose(1, 2)

    out = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(q.shape[0], -1, width)


def heads_first(x: torch.Tensor, heads: int, layout: str) -> torch.Tensor:
    """(B, L, heads*d) ("flat") or (B, heads, L, d) ("heads") as (B, heads, L, d)."""
    if layout == "heads":
        return x
    return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def direct_guidance(q, k, v, heads: int, guidance, layout: str = "flat", mask=None) -> torch.Tensor:
    """THE direct computation of RefDrop's blend, token by token, that every test compares the pack against.

    For every row b and query token t, ``guidance(b, t)`` lists the references that guide it as
    (reference row, key token indices or None for all, c); then
        X_t' = sum_j c_j Attn(Q_t, K_j[S_j], V_j[S_j]) + (1 - sum_j c_j) Attn(Q_t, K_b, V_b)
    (Eq. 5 / Eq. 6; a region is a token for which the reference is not listed). ``mask`` is an additive key
    mask (B, Lk) of the model's call: each attention uses its key row's mask. Weights are materialised, one
    query at a time; returns the layout of q.
    """
    qh, kh, vh = (heads_first(x, heads, layout) for x in (q, k, v))
    if kh.shape[1] != qh.shape[1]:  # grouped-query attention (enable_gqa): each key/value head serves a group
        kh, vh = (x.repeat_interleave(qh.shape[1] // x.shape[1], dim=1) for x in (kh, vh))
    scale = qh.shape[-1] ** -0.5

    def attend(query, row, tokens):  # query (heads, d) -> (heads, d)
        keys, values = kh[row], vh[row]
        scores = (keys @ query.unsqueeze(-1)).squeeze(-1) * scale  # (heads, Lk)
        if mask is not None:
            scores = scores + mask[row]
        if tokens is not None:
            keys_kept = torch.as_tensor(tokens, dtype=torch.long)
            scores, values = scores[:, keys_kept], values[:, keys_kept]
        weights = torch.softmax(scores, dim=-1)
        return (weights.unsqueeze(-1) * values).sum(-2)

    out = torch.empty_like(qh)
    for b in range(qh.shape[0]):
        for t in range(qh.shape[2]):
            query = qh[b, :, t]
            own = attend(query, b, None)
            references = guidance(b, t)
            blended = (1.0 - sum(c for _, _, c in references)) * own
            for row, tokens, c in references:
                blended = blended + c * attend(query, row, tokens)
            out[b, :, t] = blended
    if layout == "heads":
        return out
    return out.transpose(1, 2).reshape(q.shape)


def in_batch_guidance(per_chunk: int, references, coefficients, leading: int = 0, selections=None, regions=None):
    """``guidance`` for :func:`direct_guidance`: chunks of ``per_chunk`` rows, the first ``leading`` rows of each
    passive, then ``references`` (indices after them) guiding every other row with their ``coefficients``;
    optional subject ``selections`` (key token lists) and ``regions`` (query token sets) per reference."""

    def guidance(b, t):
        base, index = b - b % per_chunk, b % per_chunk
        reference_rows = [leading + r for r in references]
        if index < leading or index in reference_rows:
            return []
        listed = []
        for j, (row, c) in enumerate(zip(reference_rows, coefficients, strict=True)):
            tokens = None if selections is None else selections[j]
            if regions is not None and regions[j] is not None and t not in regions[j]:
                continue
            if tokens is not None and len(tokens) == 0:
                continue
            listed.append((base + row, tokens, c))
        return listed

    return guidance


def additive_key_mask(mask, rows: int, keys: int):
    """A model call's attention mask (as ComfyUI passes it) as the additive (rows, keys) float64 key mask
    :func:`direct_guidance` takes: one key row per batch row (the last ``keys`` entries), booleans as 0 / -inf."""
    if mask is None:
        return None
    flat = mask.reshape(mask.shape[0], -1)[:, -keys:].expand(rows, keys)
    if flat.dtype == torch.bool:
        return torch.zeros(flat.shape, dtype=torch.float64).masked_fill(~flat, -torch.inf)
    return flat.double()
