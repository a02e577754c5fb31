"""THE Eq. 5 / Eq. 6 implementation (attention_patches/guidance.py) against the one direct float64 computation
(refguide_testing/reference.direct_guidance): in-batch references, subject selections, regions, the model's key
masks, reference frames, both attention layouts; plus what it must never do (extra calls, K/V copies)."""

import pytest
import torch
from refguide.attention_patches.guidance import (
    GuidanceGroup,
    Reference,
    Span,
    reference_feature_guidance_,
)
from refguide.attention_patches.layout import chunk_layout, in_batch_groups
from refguide.attention_patches.temporal import guided_frame_runs, reference_frame_groups
from refguide.attention_patches.tokens import token_grid_mask
from refguide_testing import reference

HEADS, DIM = 2, 8


def random_qkv(batch, tokens=10, layout="flat", seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, tokens, HEADS * DIM) if layout == "flat" else (batch, HEADS, tokens, DIM)
    return [torch.randn(*shape, generator=g, dtype=dtype) for _ in range(3)]


def attention_fn(layout, calls=None):
    """Plain attention for the pack's callback (q, k, v, mask), in the given layout, weights materialised."""

    def attention(q, k, v, mask=None):
        if calls is not None:
            calls.append((q, k, v, mask))
        qh, kh, vh = (reference.heads_first(x, HEADS, layout) for x in (q, k, v))
        scores = qh @ kh.transpose(-1, -2) / DIM**0.5
        if mask is not None:
            scores = scores + (mask if mask.ndim == 4 else mask.unsqueeze(1))
        out = torch.softmax(scores, dim=-1) @ vh
        return out if layout == "heads" else out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)

    return attention


def guide(q, k, v, groups, layout="flat", mask=None, calls=None):
    axis = 1 if layout == "flat" else 2
    attention = attention_fn(layout, calls)
    out = attention(q, k, v, None if mask is None else mask_for_call(mask))
    if calls is not None:
        calls.clear()
    return reference_feature_guidance_(out, q, k, v, groups, attention, axis, axis, None if mask is None else
                                       mask_for_call(mask))  # fmt: skip


def mask_for_call(mask):  # additive key mask (B, Lk) as ComfyUI passes it: (B, 1, Lk)
    return mask.unsqueeze(1)


# --- in-batch references: Eq. 5 / Eq. 6 ---------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["flat", "heads"])
@pytest.mark.parametrize(
    "chunks,per_chunk,references,coefficients",
    [
        (2, 4, (0,), (0.3,)),  # Eq. 5, positive + negative chunks
        (1, 3, (0,), (-0.3,)),  # negative c extrapolates, no clamping
        (3, 5, (0, 1), (0.3, 0.2)),  # Eq. 6, two references with their own c_j
        (2, 6, (0, 1, 2), (0.25, 0.4, -0.1)),
        (2, 5, (2,), (0.2,)),  # reference in the middle of the chunk (SVD reference frame)
        (1, 2, (0,), (1.0,)),  # c = 1: cross-frame attention
    ],
)
def test_in_batch_matches_equation_6_in_float64(layout, chunks, per_chunk, references, coefficients):
    q, k, v = random_qkv(chunks * per_chunk, layout=layout, seed=chunks)
    groups = in_batch_groups(chunk_layout(chunks * per_chunk, chunks, references), coefficients)
    out = guide(q, k, v, groups, layout)
    expected = reference.direct_guidance(q, k, v, HEADS, reference.in_batch_guidance(per_chunk, references,
                                         coefficients), layout)  # fmt: skip
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_leading_rows_are_neither_references_nor_guided():
    q, k, v = random_qkv(10)
    groups = in_batch_groups(chunk_layout(10, 2, (0,), leading_rows=1), (0.3,))
    out = guide(q, k, v, groups)
    expected = reference.direct_guidance(q, k, v, HEADS, reference.in_batch_guidance(5, (0,), (0.3,), leading=1))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_float32_through_a_fused_kernel_is_close_to_float64():
    q, k, v = random_qkv(8, tokens=64, seed=3)
    groups = in_batch_groups(chunk_layout(8, 2, (0,)), (0.35,))
    expected = reference.direct_guidance(q, k, v, HEADS, reference.in_batch_guidance(4, (0,), (0.35,)))
    q32, k32, v32 = (t.float() for t in (q, k, v))

    def fused(qs, ks, vs, mask=None):
        return reference.sdpa_attention(qs, ks, vs, HEADS)

    out = reference_feature_guidance_(fused(q32, k32, v32), q32, k32, v32, groups, fused)
    assert ((out.double() - expected).norm() / expected.norm()) < 1e-6


def test_is_eq_5_not_concatenated_attention():
    """Two softmaxes blended with a fixed c (Eq. 5), not one softmax over [K_1; K_i] (per-query C)."""
    q, k, v = random_qkv(2, seed=7)
    out = guide(q, k, v, in_batch_groups(chunk_layout(2, 1, (0,)), (0.5,)))
    attention = attention_fn("flat")
    concatenated = attention(q[1:2], torch.cat([k[0:1], k[1:2]], 1), torch.cat([v[0:1], v[1:2]], 1))
    assert (out[1:2] - concatenated).abs().max() > 1e-3


def test_reference_rows_bit_identical_zero_strength_identity_and_no_call():
    q, k, v = random_qkv(6, dtype=torch.float32)
    calls = []
    plain = attention_fn("flat")(q, k, v)
    out = guide(q, k, v, in_batch_groups(chunk_layout(6, 2, (0,)), (0.4,)))
    assert torch.equal(out[0], plain[0]) and torch.equal(out[3], plain[3]) and not torch.allclose(out[1], plain[1])
    assert in_batch_groups(chunk_layout(6, 2, (0,)), (0.0,)) == []
    zero = (GuidanceGroup(Span(1, 2), (Reference(Span(0), 0.0),)),)
    assert torch.equal(guide(q, k, v, zero, calls=calls), plain) and calls == []


# --- one attention call per reference and group; views, not copies ------------------------------------------
def test_one_call_per_reference_over_the_folded_rows_with_views():
    """Guided rows that share a reference are folded into ONE query sequence; K/V are views of the reference row."""
    q, k, v = random_qkv(8, tokens=6)
    calls = []
    guide(q, k, v, in_batch_groups(chunk_layout(8, 2, (0, 1)), (0.3, 0.2)), calls=calls)
    assert [tuple(c[0].shape) for c in calls] == [(1, 2 * 6, HEADS * DIM)] * 4  # 2 chunks x 2 references
    for queries, keys, values, _ in calls:
        assert queries.untyped_storage().data_ptr() == q.untyped_storage().data_ptr()
        assert keys.untyped_storage().data_ptr() == k.untyped_storage().data_ptr()
        assert values.untyped_storage().data_ptr() == v.untyped_storage().data_ptr()


def test_heads_layout_without_a_folding_view_broadcasts_the_reference():
    """(B, heads, L, d) rows cannot fold without a copy: the reference's K/V are expanded over the rows (a view of
    the call's keys, no copy), one batched call per reference."""
    q, k, v = random_qkv(4, layout="heads")
    calls = []
    out = guide(q, k, v, in_batch_groups(chunk_layout(4, 1, (0, 1)), (0.3, 0.2)), "heads", calls=calls)
    assert [tuple(c[0].shape) for c in calls] == [(2, HEADS, 10, DIM)] * 2
    for queries, keys, _, _ in calls:
        assert keys.stride(0) == 0 and keys.untyped_storage().data_ptr() == k.untyped_storage().data_ptr()
        assert queries.untyped_storage().data_ptr() == q.untyped_storage().data_ptr()
    expected = reference.direct_guidance(q, k, v, HEADS, reference.in_batch_guidance(4, (0, 1), (0.3, 0.2)), "heads")
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_heads_layout_of_a_packed_projection_folds():
    """Flux-style q/k/v (a permuted view of one packed projection) fold rows into tokens as a view."""
    g = torch.Generator().manual_seed(5)
    packed = torch.randn(4, 10, 3, HEADS, DIM, generator=g, dtype=torch.float64)
    q, k, v = packed.permute(2, 0, 3, 1, 4)
    calls = []
    out = guide(q, k, v, in_batch_groups(chunk_layout(4, 1, (0,)), (0.3,)), "heads", calls=calls)
    assert [tuple(c[0].shape) for c in calls] == [(1, HEADS, 3 * 10, DIM)]
    assert calls[0][0].untyped_storage().data_ptr() == q.untyped_storage().data_ptr()  # a view, no copy
    expected = reference.direct_guidance(q, k, v, HEADS, reference.in_batch_guidance(4, (0,), (0.3,)), "heads")
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


# --- subject selections and regions (this pack's extensions) -------------------------------------------------
@pytest.mark.parametrize("layout", ["flat", "heads"])
@pytest.mark.parametrize("pattern", ["half", "random", "one_empty"])
def test_subject_selections_match_the_direct_computation(layout, pattern):
    tokens = 12
    q, k, v = random_qkv(8, tokens=tokens, layout=layout, seed=11)
    if pattern == "half":
        selections = [list(range(6)), list(range(6, 12))]
    elif pattern == "random":
        g = torch.Generator().manual_seed(2)
        selections = [(torch.rand(tokens, generator=g) > 0.4).nonzero().flatten().tolist() for _ in range(2)]
    else:
        selections = [[], list(range(3, 9))]  # reference 0 has no subject token here: its c counts as 0
    groups = in_batch_groups(chunk_layout(8, 2, (0, 1)), (0.3, 0.25), [torch.tensor(s, dtype=torch.long) for s in
                                                                        selections])  # fmt: skip
    out = guide(q, k, v, groups, layout)
    expected = reference.direct_guidance(q, k, v, HEADS, reference.in_batch_guidance(4, (0, 1), (0.3, 0.25),
                                         selections=selections), layout)  # fmt: skip
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", ["flat", "heads"])
def test_regions_match_the_direct_computation_and_overlaps_add(layout):
    """X_t' = sum_j c_j m_j(t) A_j + (1 - sum_j c_j m_j(t)) X_t: left / right halves and an overlap in the middle."""
    tokens = 12
    q, k, v = random_qkv(6, tokens=tokens, layout=layout, seed=4)
    regions = [set(range(0, 7)), set(range(5, 12))]
    masks = [torch.tensor([t in r for t in range(tokens)]) for r in regions]
    groups = in_batch_groups(chunk_layout(6, 2, (0, 1)), (0.4, -0.2), regions=masks)
    calls = []
    out = guide(q, k, v, groups, layout, calls=calls)
    expected = reference.direct_guidance(q, k, v, HEADS, reference.in_batch_guidance(3, (0, 1), (0.4, -0.2),
                                         regions=regions), layout)  # fmt: skip
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    # only the region's queries are attended (no output computed and thrown away)
    assert sorted(c[0].shape[1 if layout == "flat" else 2] for c in calls) == [7, 7, 7, 7]


def test_all_true_selection_and_region_are_none_and_all_false_is_strength_zero():
    q, k, v = random_qkv(6, dtype=torch.float32)
    layout = chunk_layout(6, 2, (0,))
    plain = attention_fn("flat")(q, k, v)
    unmasked = guide(q, k, v, in_batch_groups(layout, (0.4,)))
    everything = guide(q, k, v, in_batch_groups(layout, (0.4,), [torch.arange(10)], [torch.ones(10, dtype=bool)]))
    torch.testing.assert_close(everything, unmasked, rtol=1e-6, atol=1e-6)
    nothing = guide(q, k, v, in_batch_groups(layout, (0.4,), [torch.arange(0)]))
    no_region = guide(q, k, v, in_batch_groups(layout, (0.4,), regions=[torch.zeros(10, dtype=bool)]))
    assert torch.equal(nothing, plain) and torch.equal(no_region, plain)


# --- the model's own attention mask (joint text+image DiTs pad text) ----------------------------------------
@pytest.mark.parametrize("layout", ["flat", "heads"])
def test_each_reference_uses_its_own_key_mask(layout):
    q, k, v = random_qkv(6, tokens=9, layout=layout, seed=8)
    mask = torch.zeros(6, 9, dtype=torch.float64)
    mask[0, 7:] = -torch.inf  # reference of chunk 0 has two padded text tokens
    mask[4, 8:] = -torch.inf  # a guided row of chunk 1 has one
    out = guide(q, k, v, in_batch_groups(chunk_layout(6, 2, (0,)), (0.5,)), layout, mask=mask)
    expected = reference.direct_guidance(q, k, v, HEADS, reference.in_batch_guidance(3, (0,), (0.5,)), layout, mask)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


# --- reference frames (temporal RefDrop, video DiT token layout) ---------------------------------------------
def frame_guidance(frames, per_frame, reference_frame, c):
    reference_tokens = list(range(reference_frame * per_frame, (reference_frame + 1) * per_frame))

    def guidance(b, t):
        return [] if t // per_frame == reference_frame else [(b, reference_tokens, c)]

    return guidance


@pytest.mark.parametrize("layout", ["flat", "heads"])
@pytest.mark.parametrize(
    "rows,frames,per_frame,reference_frame,c",
    [(2, 5, 3, 0, 0.2), (1, 4, 3, 2, 0.5), (3, 3, 4, 2, -0.3), (1, 2, 5, 1, 1.0)],
)
def test_reference_frames_match_the_direct_computation(layout, rows, frames, per_frame, reference_frame, c):
    q, k, v = random_qkv(rows, tokens=frames * per_frame, layout=layout, seed=frames)
    calls = []
    out = guide(q, k, v, reference_frame_groups(rows, frames, per_frame, reference_frame, c), layout, calls=calls)
    expected = reference.direct_guidance(q, k, v, HEADS, frame_guidance(frames, per_frame, reference_frame, c), layout)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert len(calls) == len(guided_frame_runs(frames, reference_frame))  # one batched call per run of frames
    assert all(keys.untyped_storage().data_ptr() == k.untyped_storage().data_ptr() for _, keys, _, _ in calls)


@pytest.mark.parametrize("layout", ["flat", "heads"])
@pytest.mark.parametrize(
    "video_start,after,frames,per_frame,reference_frame", [(0, 4, 3, 4, 0), (5, 0, 4, 3, 2), (3, 2, 2, 5, 1)]
)
def test_reference_frames_in_a_joint_sequence_match_the_direct_computation(
    layout, video_start, after, frames, per_frame, reference_frame
):
    """Joint text + video rows (HunyuanVideo) and appended condition tokens (Wan S2V / Animate): only video
    queries of frames t != r are guided, toward frame r's tokens plus every non-video token of the same row."""
    rows, c = 2, 0.3
    tokens = video_start + frames * per_frame + after
    q, k, v = random_qkv(rows, tokens=tokens, layout=layout, seed=tokens)
    frame_r = range(video_start + reference_frame * per_frame, video_start + (reference_frame + 1) * per_frame)
    video = range(video_start, video_start + frames * per_frame)
    keys = [t for t in range(tokens) if t in frame_r or t not in video]

    def guidance(b, t):
        return [(b, keys, c)] if t in video and t not in frame_r else []

    groups = reference_frame_groups(rows, frames, per_frame, reference_frame, c, video_start=video_start,
                                    tokens=tokens)  # fmt: skip
    out = guide(q, k, v, groups, layout)
    expected = reference.direct_guidance(q, k, v, HEADS, guidance, layout)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", ["flat", "heads"])
@pytest.mark.parametrize("masked", [False, True])
def test_references_from_another_forward_match_the_direct_computation(layout, masked):
    """A picture as a clip's reference (our extension): the keys/values come from another forward (one picture row
    per chunk, fewer tokens than the clip); every query of each chunk's clips attends to its chunk's picture row
    (with that forward's own key mask). Checked against the direct computation on the rows stacked together."""
    chunks, per_chunk, clip_tokens, picture_tokens, c = 2, 2, 9, 5, 0.4
    q, k, v = random_qkv(chunks * per_chunk, tokens=clip_tokens, layout=layout, seed=5)
    _, pk, pv = random_qkv(chunks, tokens=picture_tokens, layout=layout, seed=6)
    key_mask = torch.zeros(chunks, picture_tokens, dtype=torch.float64)
    if masked:
        key_mask[1, -2:] = -torch.inf  # chunk 1's picture row pads two tokens
    groups = [
        GuidanceGroup(Span(chunk * per_chunk, per_chunk),
                      (Reference(Span(chunk), c, keys=pk, values=pv, key_mask=mask_for_call(key_mask) if masked else None),))
        for chunk in range(chunks)
    ]  # fmt: skip
    out = guide(q, k, v, groups, layout)
    # stacked: clip rows then picture rows (picture keys padded with masked tokens up to the clip's token count)
    axis = 1 if layout == "flat" else 2
    pad = clip_tokens - picture_tokens
    padded = [
        torch.cat([x, torch.zeros_like(x.narrow(axis, 0, 1)).repeat_interleave(pad, axis)], axis) for x in (pk, pv)
    ]
    big_k, big_v = torch.cat([k, padded[0]]), torch.cat([v, padded[1]])
    big_q = torch.cat([q, torch.zeros_like(padded[0])])
    big_mask = torch.zeros(chunks * per_chunk + chunks, clip_tokens, dtype=torch.float64)
    big_mask[chunks * per_chunk :, picture_tokens:] = -torch.inf
    big_mask[chunks * per_chunk :, :picture_tokens] += key_mask

    def guidance(b, t):
        return [] if b >= chunks * per_chunk else [(chunks * per_chunk + b // per_chunk, None, c)]

    big_mask[: chunks * per_chunk] = 0.0
    expected = reference.direct_guidance(big_q, big_k, big_v, HEADS, guidance, layout, big_mask)
    torch.testing.assert_close(out, expected[: chunks * per_chunk], rtol=1e-12, atol=1e-12)


def test_reference_frame_edges():
    assert guided_frame_runs(5, 2) == ((0, 2), (3, 5)) and guided_frame_runs(1, 0) == ()
    assert reference_frame_groups(2, 1, 6, 0, 0.5) == [] and reference_frame_groups(2, 3, 6, 0, 0.0) == []
    with pytest.raises(ValueError, match="outside the clip's 3 latent frames"):
        reference_frame_groups(2, 3, 6, 5, 0.2)


# --- layouts and token grids -------------------------------------------------------------------------------
def test_layout_segments_leading_rows_and_rejections():
    layout = chunk_layout(10, 2, (2,))
    assert layout.guided_segments == ((0, 2), (3, 5)) and layout.rows_per_chunk == 5
    assert chunk_layout(10, 3, (0,)) is None
    layout = chunk_layout(12, 2, (0,), leading_rows=2)
    assert layout.reference_rows == (2,) and layout.own_rows_per_chunk == 4 and layout.guided_segments == ((3, 6),)
    assert chunk_layout(4, 2, (0,), leading_rows=2) is None
    with pytest.raises(ValueError, match="2 coefficients for 1 references"):
        in_batch_groups(chunk_layout(4, 1, (0,)), (0.1, 0.2))


def test_token_grid_mask_area_averages_non_square_maps():
    mask = torch.zeros(2, 6, 16, dtype=torch.float64)
    mask[0, :, :8] = 1.0
    mask[1, 0:2, 0:4] = 0.75
    mask[1, 2:4, 4:8] = 0.25
    tokens = token_grid_mask(mask, (3, 4))
    expected = torch.nn.functional.avg_pool2d(mask.unsqueeze(1), (2, 4)).reshape(2, 12) >= 0.5  # direct
    assert tokens.dtype == torch.bool and torch.equal(tokens, expected)
    assert tokens[1].tolist() == [True] + [False] * 11
    edge = torch.zeros(1, 2, 2)
    edge[0, :, 0] = 1.0
    assert token_grid_mask(edge, (1, 1)).tolist() == [[True]]  # an average of exactly 0.5 passes
