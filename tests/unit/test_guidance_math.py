"""Guidance terms (attention_patches/guidance.py) against direct float64 computations, both attention layouts."""

import pytest
import torch
from refguide.attention_patches.guidance import GuidanceTerm, Span, apply_guidance_, in_batch_terms, term_mask
from refguide.attention_patches.layout import chunk_layout

HEADS, DIM = 2, 8


def heads_attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(d) + mask) v for (B, heads, L, dim), weights materialised (the definition)."""
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = scores + mask
    return torch.softmax(scores, dim=-1) @ v


def to_flat(x):  # (B, heads, L, dim) -> (B, L, heads*dim)
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


def random_qkv(batch, tokens=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, HEADS, tokens, DIM, generator=g, dtype=torch.float64) for _ in range(3)]


def expected(q, k, v, order_chunks, per, references, coefficients, mask=None):
    """Eq. 6 row by row, with each reference's own key mask."""
    rows = []
    for row in range(q.shape[0]):
        base, index = row - row % per, row % per
        own = heads_attention(q[row], k[row], v[row], None if mask is None else mask[row])
        if index in references:
            rows.append(own)
            continue
        mixed = (1 - sum(coefficients)) * own
        for ref, c in zip(references, coefficients, strict=True):
            ref_mask = None if mask is None else mask[base + ref]
            mixed = mixed + c * heads_attention(q[row], k[base + ref], v[base + ref], ref_mask)
        rows.append(mixed)
    return torch.stack(rows)


@pytest.mark.parametrize("chunks", [1, 2, 3])
@pytest.mark.parametrize("references,coefficients", [((0,), (0.4,)), ((0, 1), (0.3, -0.2)), ((1,), (1.0,))])
@pytest.mark.parametrize("layout_name", ["flat", "heads"])
def test_in_batch_terms_compute_equation_6(chunks, references, coefficients, layout_name):
    per = 3
    q, k, v = random_qkv(chunks * per, seed=chunks)
    layout = chunk_layout(chunks * per, chunks, references)
    terms = in_batch_terms(layout, coefficients)
    assert {t.target.row % per for t in terms}.isdisjoint(references)  # references are never targets

    if layout_name == "heads":  # Flux's skip_reshape: (B, heads, L, dim) in, (B, L, heads*dim) out

        def attention(qs, ks, vs, term, source):
            return to_flat(heads_attention(qs, ks, vs))

        out = to_flat(heads_attention(q, k, v))
        apply_guidance_(out, q, k, v, terms, attention, token_axis=2, out_token_axis=1)
    else:
        qf, kf, vf = to_flat(q), to_flat(k), to_flat(v)

        def split(x):
            return x.reshape(x.shape[0], x.shape[1], HEADS, DIM).transpose(1, 2)

        def attention(qs, ks, vs, term, source):
            return to_flat(heads_attention(split(qs), split(ks), split(vs)))

        out = to_flat(heads_attention(q, k, v))
        apply_guidance_(out, qf, kf, vf, terms, attention, token_axis=1, out_token_axis=1)
    torch.testing.assert_close(out, to_flat(expected(q, k, v, chunks, per, references, coefficients)))


def test_zero_coefficients_give_no_terms():
    assert in_batch_terms(chunk_layout(6, 2, (0, 1)), (0.0, 0.0)) == []


def test_reference_key_masks_and_token_ranges():
    """The extra attention uses the source row's key mask over the source's tokens (Qwen-Image padding masks)."""
    rows, tokens = 4, 10
    q, k, v = random_qkv(rows, tokens, seed=5)
    mask = torch.zeros(rows, 1, tokens, dtype=torch.float64)  # additive key masks, one per row
    mask[1, 0, 7:] = -1e9
    mask[2, 0, 5:] = -1e9
    layout = chunk_layout(rows, 2, (0,))
    terms = in_batch_terms(layout, (0.5,))

    def attention(qs, ks, vs, term, source):
        m = term_mask(mask, rows, term, source, tokens, tokens)
        return to_flat(heads_attention(qs, ks, vs, m))

    out = to_flat(heads_attention(q, k, v, mask.unsqueeze(1)))
    apply_guidance_(out, q, k, v, terms, attention, token_axis=2)
    torch.testing.assert_close(out, to_flat(expected(q, k, v, 2, 2, (0,), (0.5,), mask)))

    # a token-range source and a per-query mask: the mask is cut to the source's keys and the target's queries
    full = torch.randn(rows, tokens, tokens, dtype=torch.float64)
    term = GuidanceTerm(Span(1, 2, 6), ((Span(3, 4, 8), 0.2),))
    cut = term_mask(full, rows, term, term.sources[0][0], tokens, tokens)
    assert torch.equal(cut, full[3:4, 2:6, 4:8])
    shared = torch.randn(tokens, tokens, dtype=torch.float64)  # (Lq, Lk): the same for every row
    assert torch.equal(term_mask(shared, rows, term, term.sources[0][0], tokens, tokens), shared[2:6, 4:8])


def test_a_token_range_term_blends_only_its_tokens():
    q, k, v = random_qkv(1, 12, seed=9)
    out = to_flat(heads_attention(q, k, v))
    before = out.clone()
    term = GuidanceTerm(Span(0, 4, 12), ((Span(0, 0, 4), 0.3),))  # tokens 4.. guided toward tokens 0..3

    def attention(qs, ks, vs, term, source):
        return to_flat(heads_attention(qs, ks, vs))

    apply_guidance_(out, q, k, v, [term], attention, token_axis=2)
    assert torch.equal(out[:, :4], before[:, :4])
    blended = 0.7 * before[:, 4:] + 0.3 * to_flat(heads_attention(q[:, :, 4:], k[:, :, :4], v[:, :, :4]))
    torch.testing.assert_close(out[:, 4:], blended)
