"""The reference term of EasyRef's decoupled cross-attention against a direct float64 computation, row by row.

(The whole layer, text attention + reference term through ComfyUI's attention, is checked in
tests/host/test_apply_easyref.py.)"""

import pytest
import torch
from refguide.attention_patches.decoupled import (
    chunk_kinds,
    decoupled_reference_term,
    mask_for_tokens,
)
from refguide_testing import reference

HEADS = 2


def direct_attention(q, k, v, heads=HEADS):
    return reference.direct_attention(q, k, v, heads)


def sdpa_attention(q, k, v, heads=HEADS):
    return reference.sdpa_attention(q, k, v, heads)


def tensors(rows, tokens=12, refs=7, width=16, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    q = r(rows, tokens, width)
    ref_k = {0: r(1, refs, width), 1: r(1, refs, width)}
    ref_v = {0: r(1, refs, width), 1: r(1, refs, width)}
    return q, ref_k, ref_v


def expected(q, ref_k, ref_v, kinds, scale, gate=None):
    """term_r = scale * gate_r * Attn(q_r, Kref_kind(r), Vref_kind(r)), one row at a time."""
    per = q.shape[0] // len(kinds)
    rows = []
    for r in range(q.shape[0]):
        kind = kinds[r // per]
        ref = direct_attention(q[r : r + 1], ref_k[kind], ref_v[kind])
        if gate is not None:
            ref = ref * gate[r % per]
        rows.append(scale * ref)
    return torch.cat(rows)


@pytest.mark.parametrize("order", [[1, 0], [0, 1], [0], [1], [1, 0, 0]])
@pytest.mark.parametrize("per_chunk", [1, 3])
def test_matches_direct_computation_for_every_chunk_order(order, per_chunk):
    q, ref_k, ref_v = tensors(len(order) * per_chunk)
    kinds = chunk_kinds(q.shape[0], order)
    got = decoupled_reference_term(q, ref_k, ref_v, kinds, 0.7, direct_attention)
    torch.testing.assert_close(got, expected(q, ref_k, ref_v, order, 0.7), rtol=1e-12, atol=1e-12)


def test_fused_attention_gives_the_same_result():
    q, ref_k, ref_v = tensors(4)
    got = decoupled_reference_term(q, ref_k, ref_v, (1, 0), 1.0, sdpa_attention)
    torch.testing.assert_close(got, expected(q, ref_k, ref_v, [1, 0], 1.0), rtol=1e-10, atol=1e-10)


def test_positive_and_negative_rows_use_their_own_tokens():
    q, ref_k, ref_v = tensors(2)
    swapped = decoupled_reference_term(q, ref_k, ref_v, (0, 1), 1.0, direct_attention)
    straight = decoupled_reference_term(q, ref_k, ref_v, (1, 0), 1.0, direct_attention)
    assert not torch.allclose(swapped, straight)
    torch.testing.assert_close(swapped[0:1], direct_attention(q[0:1], ref_k[0], ref_v[0]))
    torch.testing.assert_close(swapped[1:2], direct_attention(q[1:2], ref_k[1], ref_v[1]))


def test_scale_zero_gives_a_zero_term():
    q, ref_k, ref_v = tensors(2)
    got = decoupled_reference_term(q, ref_k, ref_v, (1, 0), 0.0, direct_attention)
    assert torch.equal(got, torch.zeros_like(got))


def test_chunk_kinds():
    assert chunk_kinds(4, [1, 0]) == (1, 0)
    assert chunk_kinds(3, None) == (0,)
    assert chunk_kinds(6, [1, 0, 0]) == (1, 0, 0)
    assert chunk_kinds(5, [1, 0]) is None


def test_mask_is_area_averaged_onto_the_token_grid():
    mask = torch.zeros(1, 8, 12, dtype=torch.float64)
    mask[:, :, :6] = 1.0  # left half
    mask[:, :4, 6:9] = 1.0  # a quarter of the right half
    gate = mask_for_tokens(mask, 2, (2, 2))
    assert gate.shape == (2, 4, 1)
    torch.testing.assert_close(gate[0, :, 0], torch.tensor([1.0, 0.5, 1.0, 0.0]), check_dtype=False)
    torch.testing.assert_close(gate[1], gate[0])  # one mask for every image


def test_mask_batch_follows_the_latent_batch():
    mask = torch.stack([torch.ones(4, 4), torch.zeros(4, 4)])
    gate = mask_for_tokens(mask, 3, (2, 2))
    assert gate[:, 0, 0].tolist() == [1.0, 0.0, 1.0]


@pytest.mark.parametrize("order", [[1, 0], [0]])
def test_mask_gates_the_reference_term_of_every_chunk(order):
    per = 2
    q, ref_k, ref_v = tensors(len(order) * per, tokens=6)
    mask = torch.rand(per, 20, 30, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    gate = mask_for_tokens(mask, per, (2, 3))
    got = decoupled_reference_term(q, ref_k, ref_v, tuple(order), 0.8, direct_attention, gate)
    torch.testing.assert_close(got, expected(q, ref_k, ref_v, order, 0.8, gate), rtol=1e-12, atol=1e-12)
    assert gate.min() > 0 and gate.max() < 1


def test_mask_rows_in_front_of_a_chunk_take_the_first_images_gate():
    masks = torch.stack([torch.full((8, 8), 0.25), torch.full((8, 8), 0.5), torch.full((8, 8), 1.0)])
    gate = mask_for_tokens(masks, rows_per_chunk=5, grid=(2, 2), leading_rows=2)
    assert gate.shape == (5, 4, 1)
    assert gate[:, 0, 0].tolist() == [0.25, 0.25, 0.25, 0.5, 1.0]  # two reference rows, then images 0, 1, 2
    plain = mask_for_tokens(masks, rows_per_chunk=4, grid=(2, 2))
    assert plain[:, 0, 0].tolist() == [0.25, 0.5, 1.0, 0.25]  # no leading rows: row i is image i (repeated)
