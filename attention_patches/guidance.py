"""RefDrop's Reference Feature Guidance, written once for every model and every attention layout (plain torch).

Notation (paper Sec. 3): Attn(Q, K, V) = softmax(Q K^T / sqrt(d)) V per head, before the output projection.
For every guided query token t of a self-attention call, with references j (coefficient c_j):

    X_t' = sum_j c_j m_j(t) Attn(Q_t, K_j[S_j], V_j[S_j]) + (1 - sum_j c_j m_j(t)) X_t

where X_t = Attn(Q_t, K_i, V_i) is what the plain call already computed for t (its own row's keys/values).
Without selections and regions (S_j = every token, m_j = 1) this is exactly RFG: Eq. 5 with one reference,
Eq. 6 with several (``../shared/seeds/refdrop-paper.txt``). Two extensions of this pack, named as such:

- subject masks: ``S_j`` restricts reference j's keys/values to its subject tokens (the paper's future work);
- regions: ``m_j(t)`` in {0, 1} says where in the generated image reference j guides (two characters in one
  image); regions that overlap add their terms.

Who guides whom is the caller's policy, expressed as :class:`GuidanceGroup` s: a group is a run of guided rows
(and a token range of each) that share their references. Each reference of a group costs ONE attention call
over all the group's query tokens: rows that share a reference are folded into one query sequence where the
memory layout has that view, else the reference's keys/values are broadcast over the rows (an expanded view, one
batched call); a reference that is paired row by row (a clip's own reference frame) is one batched call. References are
never concatenated (that would couple their softmax). No K/V copies except the gather of a subject
selection, no attention matrix, no output that is thrown away (region queries are gathered first).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

# attention(queries, keys, values, mask) -> output, in the layout of the model's own call (see token_axis).
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass(frozen=True)
class Span:
    """Rows [row, row + rows) of an attention batch, tokens [start, stop) of each (stop None = to the end)."""

    row: int
    rows: int = 1
    start: int = 0
    stop: int | None = None

    def of(self, x: torch.Tensor, token_axis: int) -> torch.Tensor:
        """The view of ``x`` this span covers (no copy)."""
        return x.narrow(0, self.row, self.rows).narrow(token_axis, self.start, self.length(x.shape[token_axis]))

    def length(self, tokens: int) -> int:
        return (tokens if self.stop is None else self.stop) - self.start


@dataclass(frozen=True, eq=False)
class Reference:
    """Reference j of a group: where its keys/values are, c_j, and the two optional extensions.

    ``span.rows`` is 1 (one reference row shared by every guided row of the group) or the group's row count
    (paired row by row: each guided row has its own reference, e.g. a frame of the same clip).
    ``keys`` / ``values`` (optional): the reference's keys/values come from ANOTHER forward at the same call
    (a picture's, our extension "a picture as a clip's reference"), in the call's layout; ``span`` then indexes
    them instead of the call's own k, v, and ``key_mask`` is that forward's mask of the call (None: no mask).
    ``selection``: token indices into the span's tokens (subject mask S_j), None = every token; an empty
    selection makes c_j = 0 here. ``region``: booleans over the target's tokens of one row (m_j), None = every
    guided token; all-false makes c_j = 0 here.
    """

    span: Span
    coefficient: float
    selection: torch.Tensor | None = None
    region: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    key_mask: torch.Tensor | None = None

    def guides(self) -> bool:
        """False when this reference changes nothing at this call (c_j = 0, empty selection or region)."""
        if self.coefficient == 0.0:
            return False
        if self.selection is not None and self.selection.numel() == 0:
            return False
        return self.region is None or bool(self.region.any())


@dataclass(frozen=True, eq=False)
class GuidanceGroup:
    """Guided rows/tokens (``target``) and the references they share. Targets of one call never overlap."""

    target: Span
    references: tuple[Reference, ...]


def reference_feature_guidance_(
    out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    groups: Sequence[GuidanceGroup],
    attention: AttentionFn,
    token_axis: int = 1,
    out_token_axis: int = 1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """RFG (Eq. 5 / Eq. 6, with subject selections and regions) blended into ``out`` in place; returns ``out``.

    ``out`` is the plain attention of q, k, v (X). Layouts: ``token_axis`` 1 for (B, L, heads*dim), 2 for
    (B, heads, L, dim); ``out_token_axis`` likewise for ``out``. ``mask`` is the model's own attention mask of
    the call (ComfyUI shapes: (Lq, Lk), (B|1, Lq|1, Lk) or (B|1, heads|1, Lq|1, Lk)): every extra attention uses
    the reference row's key mask over the reference's keys. Groups are blended one after another, so the extra
    memory is that of one group's reference attention.
    """
    for group in groups:
        references = [reference for reference in group.references if reference.guides()]
        if not references:
            continue
        target = group.target.of(out, out_token_axis)
        tokens = target.shape[out_token_axis]
        if all(reference.region is None for reference in references):
            keep = 1.0 - sum(reference.coefficient for reference in references)
            if keep != 1.0:
                target.mul_(keep)
        else:  # regions: 1 - sum_j c_j m_j(t), per token
            weight = torch.zeros(tokens, dtype=torch.float64)
            for reference in references:
                region = torch.ones(tokens, dtype=torch.bool) if reference.region is None else reference.region.cpu()
                weight += reference.coefficient * region.to(torch.float64)
            shape = [1] * target.ndim
            shape[out_token_axis] = tokens
            target.mul_((1.0 - weight).to(target.device, target.dtype).view(shape))
        for reference in references:
            extra = _reference_attention(q, k, v, group.target, reference, attention, token_axis, out_token_axis, mask)
            extra = extra.to(target.dtype)
            if reference.region is None:
                target.add_(extra, alpha=reference.coefficient)
            else:
                queries = reference.region.nonzero().squeeze(1).to(target.device)
                target.index_add_(out_token_axis, queries, extra, alpha=reference.coefficient)
    return out


def _reference_attention(q, k, v, target: Span, reference: Reference, attention, token_axis, out_token_axis, mask):
    """Attn(Q_t, K_j[S_j], V_j[S_j]) for the target's query tokens (those of the region only): one call.

    Rows that share the reference are folded into one query sequence where the memory layout has such a view
    (no copy); else, and for a per-query mask of the model's call,
    the reference's keys/values are broadcast over the rows (an expanded view): one batched call, no copies
    (a copy of the queries measured +8.5% step peak memory at Flux width with PyTorch attention).
    """
    rows = target.rows
    queries = target.of(q, token_axis)
    query_tokens = None
    if reference.region is not None:
        query_tokens = reference.region.nonzero().squeeze(1).to(q.device)
        queries = queries.index_select(token_axis, query_tokens)  # the region's queries only
    external = reference.keys is not None
    if external:  # another forward's keys/values (a picture's): its own mask, none of the call's
        k, v, mask = reference.keys, reference.values, reference.key_mask
    keys, values = reference.span.of(k, token_axis), reference.span.of(v, token_axis)
    key_tokens = None
    if reference.selection is not None:  # the subject's tokens only (a gather of one reference's K/V)
        key_tokens = reference.selection.to(k.device)
        keys, values = keys.index_select(token_axis, key_tokens), values.index_select(token_axis, key_tokens)
    call_mask = _reference_mask(mask, q, k, target, reference, query_tokens, key_tokens, token_axis, external)
    if reference.span.rows == rows or rows == 1:
        return attention(queries, keys, values, call_mask)
    if reference.span.rows != 1:
        raise ValueError(f"a reference of {reference.span.rows} rows for a target of {rows} rows")
    per_query_mask = call_mask is not None and call_mask.ndim >= 2 and call_mask.shape[-2] > 1
    sequence = None if per_query_mask else _fold_rows(queries, token_axis)
    if sequence is not None:  # one query sequence over every guided row: exactly the per-row attention
        result = attention(sequence, keys, values, call_mask)
        return result.squeeze(0).unflatten(out_token_axis - 1, (rows, -1)).movedim(out_token_axis - 1, 0)
    keys = keys.expand(rows, *keys.shape[1:])  # the shared reference broadcast over the rows (a view)
    values = values.expand(rows, *values.shape[1:])
    return attention(queries, keys, values, call_mask)


def _fold_rows(x: torch.Tensor, token_axis: int) -> torch.Tensor | None:
    """(n, ..., L, ...) as (1, ..., n*L, ...) WITHOUT a copy, or None when the memory layout has no such view."""
    moved = x.movedim(0, token_axis - 1)
    axis = token_axis - 1
    try:
        return moved.view(*moved.shape[:axis], -1, *moved.shape[axis + 2 :]).unsqueeze(0)
    except RuntimeError:
        return None


def _reference_mask(mask, q, k, target: Span, reference: Reference, query_tokens, key_tokens, token_axis,
                    external=False):  # fmt: skip
    """The model's mask for one extra attention: the reference row's key mask over the reference's keys.

    A per-row mask contributes the reference's row (its own padding mask); a per-query mask keeps the target's
    query positions (the region's only). Views except where a selection gathers. ``external``: the mask and
    keys are another forward's (its rows are the reference's rows; a per-query mask is not supported there).
    """
    if mask is None:
        return None
    batch, q_tokens, k_tokens = (k if external else q).shape[0], q.shape[token_axis], k.shape[token_axis]
    if external and mask.ndim >= 2 and mask.shape[-2] > 1:
        raise ValueError("a per-query mask of another forward cannot mask a reference attention")
    if mask.ndim >= 3 and mask.shape[0] == batch and batch > 1:
        mask = mask.narrow(0, reference.span.row, reference.span.rows)
    if mask.shape[-1] == k_tokens:
        mask = mask.narrow(-1, reference.span.start, reference.span.length(k_tokens))
        if key_tokens is not None:
            mask = mask.index_select(-1, key_tokens.to(mask.device))
    if mask.ndim >= 2 and mask.shape[-2] == q_tokens and q_tokens > 1:
        mask = mask.narrow(-2, target.start, target.length(q_tokens))
        if query_tokens is not None:
            mask = mask.index_select(-2, query_tokens.to(mask.device))
    return mask
