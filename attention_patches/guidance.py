"""Guidance terms: RefDrop's blend written once for every attention layout, plain torch.

A guidance term says: these query tokens (``target``: one row of the batch, a token range of it) are guided
toward these keys/values (``sources``: each one row and token range, with its coefficient c_j):

    X[target]' = sum_j c_j * Attn(Q[target], K[source_j], V[source_j]) + (1 - sum_j c_j) * X[target]

where X[target] = Attn(Q[target], K[own], V[own]) is what the plain call already computed. This is RefDrop's
RFG, Eq. 5 with one source and Eq. 6 with several. Who the sources are is a policy's choice:

- in-batch references (:func:`in_batch_terms`): the first N rows of every guidance chunk are references for
  the other rows of that chunk (paper Eq. 5 / 6; each classifier-free-guidance branch uses its own references);
- temporal references (video DiTs): within one row, the tokens of every frame t != r are guided toward the
  tokens of frame r of the same row (the paper's SVD variant);
- reference-image rows appended to the batch (our extension: clean reference images).

Tensors are addressed through views (``Span.of``): no K/V copies, no attention matrices; one extra
attention per (target, source) pair, each as large as the target's share of the plain attention.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .layout import ChunkLayout


@dataclass(frozen=True)
class Span:
    """Rows [row, row + rows) of a batch, tokens [start, stop) of each (stop None = to the end).

    ``rows`` > 1 addresses the same tokens of several rows at once, for a term whose target and sources cover the
    same rows (the frames of every clip of a video batch): one extra attention then serves all those rows.
    """

    row: int
    start: int = 0
    stop: int | None = None
    rows: int = 1

    def of(self, x: torch.Tensor, token_axis: int) -> torch.Tensor:
        """The view of ``x`` this span covers: batch size ``rows``, the span's tokens on ``token_axis``."""
        stop = x.shape[token_axis] if self.stop is None else self.stop
        return x.narrow(0, self.row, self.rows).narrow(token_axis, self.start, stop - self.start)

    def length(self, tokens: int) -> int:
        return (tokens if self.stop is None else self.stop) - self.start


@dataclass(frozen=True)
class GuidanceTerm:
    """X[target]' = sum_j c_j Attn(Q[target], K[source_j], V[source_j]) + (1 - sum_j c_j) X[target] (Eq. 5/6)."""

    target: Span
    sources: tuple[tuple[Span, float], ...]


# attention(queries, keys, values, term, source) -> output of the queries, in the layout the plain call returns.
TermAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, GuidanceTerm, Span], torch.Tensor]


def in_batch_terms(layout: ChunkLayout, coefficients: Sequence[float]) -> list[GuidanceTerm]:
    """RefDrop's in-batch references (Eq. 5 / Eq. 6): guided row i of chunk k <- reference rows j of chunk k.

    ``layout.reference_rows`` pair with ``coefficients``; zero coefficients are dropped and reference rows get
    no term (for them the formula is the identity). [] when every coefficient is 0.
    """
    if len(coefficients) != len(layout.reference_rows):
        raise ValueError(f"{len(coefficients)} coefficients for {len(layout.reference_rows)} references")
    active = [(row, float(c)) for row, c in zip(layout.reference_rows, coefficients, strict=True) if c != 0.0]
    if not active:
        return []
    terms = []
    for chunk in range(layout.chunks):
        base = chunk * layout.rows_per_chunk
        sources = tuple((Span(base + row), c) for row, c in active)
        for start, stop in layout.guided_segments:
            terms.extend(GuidanceTerm(Span(base + row), sources) for row in range(start, stop))
    return terms


def apply_guidance_(
    out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    terms: Sequence[GuidanceTerm],
    attention: TermAttention,
    token_axis: int = 1,
    out_token_axis: int = 1,
) -> torch.Tensor:
    """Blend every term into ``out`` (the plain attention output of q, k, v) in place; returns ``out``.

    ``token_axis`` is 1 for (B, L, heads*dim) inputs and 2 for (B, heads, L, dim); ``out_token_axis`` likewise
    for the output. The targets of the terms must not overlap (each query token is blended once).
    """
    for term in terms:
        keep = 1.0 - sum(c for _, c in term.sources)
        queries = term.target.of(q, token_axis)
        target = term.target.of(out, out_token_axis)
        if keep != 1.0:
            target.mul_(keep)
        for source, coefficient in term.sources:
            extra = attention(queries, source.of(k, token_axis), source.of(v, token_axis), term, source)
            target.add_(extra.to(target.dtype), alpha=coefficient)
    return out


def term_mask(mask: torch.Tensor | None, batch: int, term: GuidanceTerm, source: Span, q_tokens: int, k_tokens: int):
    """The attention mask of one extra attention: the source row's key mask over the source's tokens.

    ComfyUI masks are (Lq, Lk) (shared by every row), (B or 1, Lq or 1, Lk) or (B or 1, heads or 1, Lq or 1, Lk).
    A per-row mask contributes the source row (the reference's own padding mask); a per-query mask keeps the
    target's query positions. Returns a view (no copies) or None.
    """
    if mask is None:
        return None
    if mask.ndim >= 3 and mask.shape[0] == batch and batch > 1:
        mask = mask.narrow(0, source.row, source.rows)
    if mask.shape[-1] == k_tokens:
        mask = mask.narrow(-1, source.start, source.length(k_tokens))
    if mask.ndim >= 2 and mask.shape[-2] == q_tokens and q_tokens > 1:
        mask = mask.narrow(-2, term.target.start, term.target.length(q_tokens))
    return mask
