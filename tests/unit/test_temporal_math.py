"""Temporal RefDrop (Eq. 5 with a reference frame, video DiT token layout) against a direct float64 computation."""

import pytest
import torch
from refguide.attention_patches.guidance import apply_guidance_
from refguide.attention_patches.temporal import guided_frame_runs, temporal_terms
from refguide_testing import reference

HEADS = 2


def direct_attention(q, k, v):
    return reference.direct_attention(q, k, v, HEADS)


def guide(q, k, v, out, frames, reference_frame, c, attention=None, token_axis=1):
    """Temporal RefDrop as the pack runs it: the temporal terms through the shared blend (apply_guidance_)."""
    attention = attention or direct_attention
    terms = temporal_terms(q.shape[0], frames, q.shape[token_axis] // frames, reference_frame, c)
    return apply_guidance_(out, q, k, v, terms, lambda qs, ks, vs, term, source: attention(qs, ks, vs),
                           token_axis, token_axis)  # fmt: skip


def clip_qkv(rows, frames, per_frame, width=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, frames * per_frame, width, generator=g, dtype=torch.float64) for _ in range(3)]


def expected_temporal(q, k, v, frames, reference_frame, c):
    """Frame by frame, row by row: X_t' = c Attn(Q_t, K_r, V_r) + (1 - c) Attn(Q_t, K, V), frame r unchanged."""
    per_frame = q.shape[1] // frames
    out = direct_attention(q, k, v).clone()
    ref = slice(reference_frame * per_frame, (reference_frame + 1) * per_frame)
    for row in range(q.shape[0]):
        for t in range(frames):
            if t == reference_frame:
                continue
            tokens = slice(t * per_frame, (t + 1) * per_frame)
            own = direct_attention(q[row : row + 1], k[row : row + 1], v[row : row + 1])[0, tokens]
            guided = direct_attention(q[row : row + 1, tokens], k[row : row + 1, ref], v[row : row + 1, ref])[0]
            out[row, tokens] = c * guided + (1 - c) * own
    return out


@pytest.mark.parametrize(
    "rows,frames,per_frame,reference_frame,c",
    [
        (2, 5, 6, 0, 0.2),  # cfg: two rows (negative, positive), each its own clip and reference
        (1, 4, 3, 2, 0.5),  # reference in the middle: frames before and after are guided
        (3, 3, 4, 2, -0.3),  # last frame, negative c extrapolates (no clamping)
        (1, 2, 5, 1, 1.0),  # c = 1: cross-frame attention
    ],
)
def test_matches_direct_computation_in_float64(rows, frames, per_frame, reference_frame, c):
    q, k, v = clip_qkv(rows, frames, per_frame)
    out = guide(q, k, v, direct_attention(q, k, v), frames, reference_frame, c)
    torch.testing.assert_close(out, expected_temporal(q, k, v, frames, reference_frame, c), rtol=1e-12, atol=1e-12)


def test_heads_first_layout_matches_tokens_layout():
    """(B, heads, N, d) inputs (token_dim 2, as skip_reshape callers pass them) give the same result."""
    q, k, v = clip_qkv(2, 4, 3)
    expected = expected_temporal(q, k, v, 4, 1, 0.3)

    def heads_first(x):
        return x.reshape(x.shape[0], x.shape[1], HEADS, -1).transpose(1, 2)

    def attention_heads_first(qh, kh, vh):
        return torch.softmax(qh @ kh.transpose(-1, -2) / qh.shape[-1] ** 0.5, dim=-1) @ vh

    qh, kh, vh = heads_first(q), heads_first(k), heads_first(v)
    out = guide(qh, kh, vh, attention_heads_first(qh, kh, vh), 4, 1, 0.3, attention_heads_first, token_axis=2)
    torch.testing.assert_close(out.transpose(1, 2).reshape(expected.shape), expected, rtol=1e-12, atol=1e-12)


def test_reference_keys_are_views_and_one_call_per_run():
    """K_r / V_r share the storage of K / V (no copies); one attention per run of guided frames, over all rows."""
    q, k, v = clip_qkv(2, 5, 4)
    calls = []

    def spy(qs, ks, vs):
        calls.append((qs.shape, ks.untyped_storage().data_ptr(), vs.untyped_storage().data_ptr(), ks.shape))
        return direct_attention(qs, ks, vs)

    guide(q, k, v, direct_attention(q, k, v), 5, 0, 0.2, spy)
    assert calls == [(torch.Size([2, 16, 16]), k.untyped_storage().data_ptr(), v.untyped_storage().data_ptr(),
                      torch.Size([2, 4, 16]))]  # fmt: skip
    calls.clear()
    guide(q, k, v, direct_attention(q, k, v), 5, 2, 0.2, spy)
    assert [shape for shape, *_ in calls] == [torch.Size([2, 8, 16]), torch.Size([2, 8, 16])]


def test_single_frame_and_zero_strength_leave_the_output_untouched():
    q, k, v = clip_qkv(2, 1, 6)
    plain = direct_attention(q, k, v)
    calls = []

    def spy(*args):
        calls.append(args)
        return direct_attention(*args)

    assert torch.equal(guide(q, k, v, plain.clone(), 1, 0, 0.5, spy), plain)
    q, k, v = clip_qkv(2, 3, 2)
    plain = direct_attention(q, k, v)
    assert torch.equal(guide(q, k, v, plain.clone(), 3, 0, 0.0, spy), plain)
    assert calls == []


def test_guided_runs_and_errors():
    assert guided_frame_runs(5, 0) == ((1, 5),)
    assert guided_frame_runs(5, 4) == ((0, 4),)
    assert guided_frame_runs(5, 2) == ((0, 2), (3, 5))
    assert guided_frame_runs(1, 0) == ()
    with pytest.raises(ValueError, match="outside the clip's 3 latent frames"):
        guided_frame_runs(3, 3)
    assert temporal_terms(2, 1, 6, 0, 0.5) == [] and temporal_terms(2, 3, 6, 0, 0.0) == []
    with pytest.raises(ValueError, match="outside the clip's 3 latent frames"):
        temporal_terms(2, 3, 6, 5, 0.2)
