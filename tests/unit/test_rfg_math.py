"""RefDrop's equations (Eq. 5, Eq. 6, concatenated attention) against direct float64 computations."""

import pytest
import torch
from refguide.attention_patches.layout import chunk_layout
from refguide.attention_patches.rfg import reference_feature_guidance_, subject_token_mask
from refguide_testing import reference

HEADS = 2


def direct_attention(q, k, v, heads=HEADS):
    return reference.direct_attention(q, k, v, heads)


def sdpa_attention(q, k, v, heads=HEADS):
    return reference.sdpa_attention(q, k, v, heads)


def random_qkv(batch, tokens=12, width=16, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, tokens, width, generator=g, dtype=dtype) for _ in range(3)]


def expected_rfg(q, k, v, chunks, per_chunk, references, coefficients):
    """Eq. 6 row by row: sum_j c_j Attn(Q_i, K_j, V_j) + (1 - sum_j c_j) Attn(Q_i, K_i, V_i)."""
    out = direct_attention(q, k, v).clone()
    for chunk in range(chunks):
        base = chunk * per_chunk
        for i in range(per_chunk):
            if i in references:
                continue
            row = base + i
            qi = q[row : row + 1]
            mixed = (1 - sum(coefficients)) * direct_attention(qi, k[row : row + 1], v[row : row + 1])
            for ref, c in zip(references, coefficients, strict=True):
                mixed = mixed + c * direct_attention(qi, k[base + ref : base + ref + 1], v[base + ref : base + ref + 1])
            out[row] = mixed[0]
    return out


@pytest.mark.parametrize(
    "chunks,per_chunk,references,coefficients",
    [
        (2, 4, (0,), (0.3,)),  # Eq. 5, positive + negative chunks
        (1, 3, (0,), (-0.3,)),  # negative c extrapolates, no clamping
        (3, 5, (0, 1), (0.3, 0.2)),  # Eq. 6, two references with their own c_j
        (2, 6, (0, 1, 2), (0.25, 0.4, -0.1)),
        (2, 5, (2,), (0.2,)),  # reference in the middle of the chunk (video reference frame)
        (1, 2, (0,), (1.0,)),  # c = 1: cross-frame attention
    ],
)
def test_rfg_matches_equation_7_in_float64(chunks, per_chunk, references, coefficients):
    q, k, v = random_qkv(chunks * per_chunk)
    layout = chunk_layout(chunks * per_chunk, chunks, references)
    out = reference_feature_guidance_(q, k, v, direct_attention(q, k, v), layout, coefficients, direct_attention)
    expected = expected_rfg(q, k, v, chunks, per_chunk, references, coefficients)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_rfg_float32_fused_attention_close_to_float64_reference():
    q, k, v = random_qkv(8, tokens=64, width=32, seed=3)
    layout = chunk_layout(8, 2, (0,))
    q32, k32, v32 = (t.float() for t in (q, k, v))
    out = reference_feature_guidance_(q32, k32, v32, sdpa_attention(q32, k32, v32), layout, (0.35,), sdpa_attention)
    expected = expected_rfg(q, k, v, 2, 4, (0,), (0.35,))
    rel = (out.double() - expected).norm() / expected.norm()
    assert rel < 1e-6


def test_reference_rows_are_bit_identical_and_zero_strength_is_identity():
    q, k, v = random_qkv(6, dtype=torch.float32)
    layout = chunk_layout(6, 2, (0,))
    plain = sdpa_attention(q, k, v)
    out = reference_feature_guidance_(q, k, v, plain.clone(), layout, (0.4,), sdpa_attention)
    assert torch.equal(out[0], plain[0]) and torch.equal(out[3], plain[3])
    assert not torch.allclose(out[1], plain[1])
    untouched = reference_feature_guidance_(q, k, v, plain.clone(), layout, (0.0,), sdpa_attention)
    assert torch.equal(untouched, plain)


def test_rfg_never_calls_attention_for_zero_coefficients():
    q, k, v = random_qkv(6)
    calls = []

    def counting(q_, k_, v_):
        calls.append(q_.shape)
        return direct_attention(q_, k_, v_)

    layout = chunk_layout(6, 2, (0, 1))
    reference_feature_guidance_(q, k, v, direct_attention(q, k, v), layout, (0.3, 0.0), counting)
    # one call per (chunk, guided segment, active reference), the segment's rows folded into one query sequence
    assert calls == [torch.Size([1, 1 * 12, 16])] * 2


def test_concatenated_attention_is_rfg_with_a_rank_one_coefficient():
    """Attn(Q_i, [K_1; K_i], [V_1; V_i]) = C*Attn(Q_i,K_1,V_1) + (1-C)*Attn(Q_i,K_i,V_i), C = S_ref/(S_ref+S_self)."""
    q, k, v = random_qkv(2, seed=7)
    qi, k1, v1, ki, vi = q[1:2], k[0:1], v[0:1], k[1:2], v[1:2]
    concatenated = direct_attention(qi, torch.cat([k1, ki], 1), torch.cat([v1, vi], 1))
    d = q.shape[-1] // HEADS

    def split(x):
        return x.reshape(1, x.shape[1], HEADS, d).transpose(1, 2)

    s_ref = torch.exp(split(qi) @ split(k1).transpose(-1, -2) / d**0.5).sum(-1, keepdim=True)
    s_self = torch.exp(split(qi) @ split(ki).transpose(-1, -2) / d**0.5).sum(-1, keepdim=True)
    coefficient = s_ref / (s_ref + s_self)  # (1, heads, N, 1): one value per head and query row

    def per_head(x):
        return split(x)

    blended = coefficient * per_head(direct_attention(qi, k1, v1)) + (1 - coefficient) * per_head(
        direct_attention(qi, ki, vi)
    )
    torch.testing.assert_close(
        blended.transpose(1, 2).reshape(1, -1, q.shape[-1]), concatenated, rtol=1e-12, atol=1e-12
    )
    # RFG's scalar c is the special case of a constant C; cross-frame attention is C = 1.
    assert coefficient.min() > 0 and coefficient.max() < 1


def test_layout_segments_and_rejections():
    layout = chunk_layout(10, 2, (2,))
    assert layout.guided_segments == ((0, 2), (3, 5)) and layout.guided_rows_per_chunk == 4
    assert chunk_layout(10, 3, (0,)) is None
    assert chunk_layout(4, 1, (0, 1)).guided_segments == ((2, 4),)


def test_mismatched_coefficients_are_rejected():
    q, k, v = random_qkv(4)
    with pytest.raises(ValueError, match="2 coefficients for 1 references"):
        reference_feature_guidance_(q, k, v, q.clone(), chunk_layout(4, 1, (0,)), (0.1, 0.2), direct_attention)


def test_layout_with_leading_reference_image_rows():
    """Rows put in front of each chunk (reference images) are neither references nor guided; refs count after them."""
    layout = chunk_layout(12, 2, (0,), leading_rows=2)
    assert layout.rows_per_chunk == 6 and layout.reference_rows == (2,) and layout.own_rows_per_chunk == 4
    assert layout.guided_segments == ((3, 6),) and layout.guided_rows_per_chunk == 3
    assert chunk_layout(4, 2, (0,), leading_rows=2) is None  # nothing left after the leading rows


def test_in_batch_rfg_leaves_leading_rows_alone():
    q, k, v = random_qkv(10)
    plain = direct_attention(q, k, v)
    out = reference_feature_guidance_(q, k, v, plain.clone(), chunk_layout(10, 2, (0,), 1), (0.3,), direct_attention)
    # the same as Eq. 5 on the chunks without their first row
    own = [1, 2, 3, 4, 6, 7, 8, 9]
    expected = expected_rfg(q[own], k[own], v[own], 2, 4, (0,), (0.3,))
    torch.testing.assert_close(out[own], expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(out[0], plain[0]) and torch.equal(out[5], plain[5])


def expected_masked_rfg(q, k, v, chunks, per_chunk, references, coefficients, masks):
    """Our subject-mask extension written out: c_j Attn(Q_i, K_j[M_j], V_j[M_j]); no masked token -> c_j = 0."""
    out = direct_attention(q, k, v).clone()
    for chunk in range(chunks):
        base = chunk * per_chunk
        for i in range(per_chunk):
            if i in references:
                continue
            row = base + i
            qi = q[row : row + 1]
            terms, total = [], 0.0
            for j, (ref, c) in enumerate(zip(references, coefficients, strict=True)):
                kept = masks[j].nonzero().flatten()
                if len(kept) == 0:
                    continue
                kj, vj = k[base + ref : base + ref + 1, kept], v[base + ref : base + ref + 1, kept]
                terms.append(c * direct_attention(qi, kj, vj))
                total += c
            mixed = (1 - total) * direct_attention(qi, k[row : row + 1], v[row : row + 1])
            out[row] = (mixed + sum(terms))[0] if terms else mixed[0]
    return out


@pytest.mark.parametrize("pattern", ["half", "random", "one_empty"])
def test_masked_rfg_matches_direct_computation_in_float64(pattern):
    q, k, v = random_qkv(2 * 4, tokens=12, seed=11)
    g = torch.Generator().manual_seed(2)
    if pattern == "half":
        masks = torch.zeros(2, 12, dtype=torch.bool)
        masks[0, :6] = True
        masks[1, 6:] = True
    elif pattern == "random":
        masks = torch.rand(2, 12, generator=g) > 0.4
    else:
        masks = torch.zeros(2, 12, dtype=torch.bool)
        masks[1, 3:9] = True  # reference 1 has no subject token in this layer: its c counts as 0
    layout = chunk_layout(8, 2, (0, 1))
    out = reference_feature_guidance_(q, k, v, direct_attention(q, k, v), layout, (0.3, 0.25), direct_attention, masks)
    expected = expected_masked_rfg(q, k, v, 2, 4, (0, 1), (0.3, 0.25), masks)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_all_true_mask_is_no_mask_and_all_false_is_strength_zero():
    q, k, v = random_qkv(6, dtype=torch.float32)
    layout = chunk_layout(6, 2, (0,))
    plain = sdpa_attention(q, k, v)
    unmasked = reference_feature_guidance_(q, k, v, plain.clone(), layout, (0.4,), sdpa_attention)
    white = reference_feature_guidance_(q, k, v, plain.clone(), layout, (0.4,), sdpa_attention,
                                        torch.ones(1, 12, dtype=torch.bool))  # fmt: skip
    black = reference_feature_guidance_(q, k, v, plain.clone(), layout, (0.4,), sdpa_attention,
                                        torch.zeros(1, 12, dtype=torch.bool))  # fmt: skip
    assert torch.equal(white, unmasked) and torch.equal(black, plain)


def test_subject_token_mask_area_averages_non_square_maps():
    """A (3 x 8) pixel mask onto a (3, 4) grid of a non-square map: each token averages its own 1x2 patch."""
    mask = torch.zeros(2, 6, 16, dtype=torch.float64)
    mask[0, :, :8] = 1.0  # left half
    mask[1, 0:2, 0:4] = 0.75  # 3/4 grey in one 2x4 corner: passes (>= 0.5)
    mask[1, 2:4, 4:8] = 0.25  # light grey: does not pass
    tokens = subject_token_mask(mask, (3, 4))
    assert tokens.shape == (2, 12) and tokens.dtype == torch.bool
    expected = torch.nn.functional.avg_pool2d(mask.unsqueeze(1), (2, 4)).reshape(2, 12) >= 0.5  # direct
    assert torch.equal(tokens, expected)
    assert tokens[0].reshape(3, 4)[:, :2].all() and not tokens[0].reshape(3, 4)[:, 2:].any()
    assert tokens[1].tolist() == [True] + [False] * 11
    # half-covered token: the average is exactly 0.5, which passes
    edge = torch.zeros(1, 2, 2)
    edge[0, :, 0] = 1.0
    assert subject_token_mask(edge, (1, 1)).tolist() == [[True]]
