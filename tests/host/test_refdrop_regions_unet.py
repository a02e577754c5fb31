"""Regions (our extension) on SD UNets: where in the generated image each reference guides.

m_j(t) on every self-attention layer's feature map against the one direct float64 computation, and the two-
characters case (two pictures, two regions) as one model call against in-batch RefDrop with regions and the
noised reference rows in front.
"""

from __future__ import annotations

import comfy.sample
import pytest
import torch
from refguide.attention_patches.tokens import TokenMasks
from refguide.comfy_patches.attention_calls import FallbackNotice
from refguide.comfy_patches.refdrop.settings import RefDropSettings
from refguide.comfy_patches.refdrop.unet import RefDropAttention
from refguide.nodes.refdrop import ApplyRefDrop, ApplyRefDropImage
from refguide_testing import model_calls, reference, tiny_models
from refguide_testing.model_calls import in_front, model_call, own_rows

CONTEXT = 2048


@pytest.fixture(scope="module")
def sdxl():
    return tiny_models.tiny_unet("sdxl", seed=0)


@pytest.fixture(scope="module")
def vae():
    return tiny_models.tiny_vae()


def regions_on(height, width, pixels=8):
    """Left 3/8 and right 5/8 (overlapping columns) of a (height, width) grid, drawn at ``pixels`` per token."""
    masks = torch.zeros(2, height * pixels, width * pixels)
    masks[0, :, : 3 * width * pixels // 8] = 1.0
    masks[1, :, 2 * width * pixels // 8 :] = 1.0
    return masks


def expected_tokens(mask, height, width):
    """Tokens whose cell of the mask averages >= 0.5 (the mask is an exact multiple of the grid here)."""
    cells = mask.reshape(height, mask.shape[0] // height, width, mask.shape[1] // width).mean(dim=(1, 3))
    return set((cells.flatten() >= 0.5).nonzero().flatten().tolist())


@pytest.mark.parametrize("grid", [(4, 6), (3, 5)])
def test_regions_on_a_layer_match_the_direct_computation(grid):
    height, width = grid
    g = torch.Generator().manual_seed(5)
    rows, tokens = 6, height * width
    q, k, v = (torch.randn(rows, tokens, 128, generator=g) for _ in range(3))
    extra = {"n_heads": 2, "dim_head": 64, "attn_precision": None, "cond_or_uncond": [1, 0],
             "activations_shape": [rows, 128, height, width]}  # fmt: skip
    regions = regions_on(height, width)
    settings = RefDropSettings((0, 1), (0.4, 0.3), regions=TokenMasks(regions))
    out = RefDropAttention(settings, FallbackNotice("t"))(q, k, v, extra)
    region_tokens = [expected_tokens(mask, height, width) for mask in regions]
    assert region_tokens[0] & region_tokens[1]  # an overlap: both terms add there
    guidance = reference.in_batch_guidance(3, (0, 1), (0.4, 0.3), regions=region_tokens)
    expected = reference.direct_guidance(q.double(), k.double(), v.double(), 2, guidance)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_regions_of_another_aspect_are_centre_cropped_like_the_latent():
    """A region drawn on a wider canvas is centre-cropped to the latent's aspect before it is placed."""
    placed = TokenMasks(torch.cat([torch.zeros(1, 32, 16), torch.ones(1, 32, 32), torch.zeros(1, 32, 16)], dim=2))
    assert bool(placed.on_grid((4, 4), "cpu").all())  # the white square in the middle is the whole latent
    tall = TokenMasks(torch.ones(1, 8, 8))
    assert tuple(tall.on_grid((2, 6), "cpu").shape) == (1, 12)


def test_region_count_and_size_errors(sdxl):
    with pytest.raises(ValueError, match=r"3 region masks for 2 reference\(s\)"):
        ApplyRefDrop.execute(sdxl, 0.3, 2, False, "", "", 0.0, 1.0, torch.ones(3, 32, 32))
    with pytest.raises(ValueError, match="1x1 pixels"):
        ApplyRefDrop.execute(sdxl, 0.3, 1, False, "", "", 0.0, 1.0, torch.ones(1, 1, 1))
    one = ApplyRefDrop.execute(sdxl, 0.3, 2, False, "", "", 0.0, 1.0, torch.ones(1, 32, 32)).args[0]
    assert one is not sdxl


def test_white_regions_equal_no_regions_and_black_regions_change_nothing(sdxl):
    x, context, y = inputs(6)
    plain = model_call(sdxl, x, 3.0, context, y, [1, 0])
    without = model_call(ApplyRefDrop.execute(sdxl, 0.3, 1, False).args[0], x, 3.0, context, y, [1, 0])
    white = ApplyRefDrop.execute(sdxl, 0.3, 1, False, "", "", 0.0, 1.0, torch.ones(1, 64, 96)).args[0]
    black = ApplyRefDrop.execute(sdxl, 0.3, 1, False, "", "", 0.0, 1.0, torch.zeros(1, 64, 96)).args[0]
    torch.testing.assert_close(model_call(white, x, 3.0, context, y, [1, 0]), without, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model_call(black, x, 3.0, context, y, [1, 0]), plain, rtol=1e-6, atol=1e-6)


def inputs(rows, seed=0, size=(16, 24)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 4, *size, generator=g) * 3
    context = torch.randn(rows, 8, CONTEXT, generator=g)
    y = torch.randn(rows, tiny_models.TINY_SDXL_UNET["adm_in_channels"], generator=g)
    return x, context, y


def picture(count, height=64, width=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(count, height, width, 3, generator=g)


def test_two_characters_in_one_image_equal_in_batch_regions_with_the_pictures_in_front(sdxl, vae):
    """Two pictures, two regions (left / right): one model call equals in-batch RefDrop with the same regions and
    the two noised references as the first rows of each chunk."""
    size, sigma, order, per_chunk = (16, 24), 4.0, [1, 0], 2
    image = picture(2)
    regions = regions_on(2, 3, pixels=32)  # drawn at 64 x 96 pixels, the generated image's size
    x, context, y = inputs(per_chunk * len(order), seed=3, size=size)
    patched = ApplyRefDropImage.execute(sdxl, vae, image, 0.4, 11, False, "0.4, 0.35", "", 0.0, 1.0, None,
                                        regions).args[0]  # fmt: skip
    out = model_call(patched, x, sigma, context, y, order)
    x_ref = model_calls.noised_references(sdxl, vae, image, size, sigma, 11)
    in_batch = ApplyRefDrop.execute(sdxl, 0.4, 2, False, "0.4, 0.35", "", 0.0, 1.0, regions).args[0]
    expected = model_call(in_batch, in_front(x, 2, x_ref), sigma, in_front(context, 2, 2), in_front(y, 2, 2), order)
    torch.testing.assert_close(out, own_rows(expected, 2, 2), rtol=1e-5, atol=1e-5)
    plain_regions = ApplyRefDropImage.execute(sdxl, vae, image, 0.4, 11, False, "0.4, 0.35").args[0]
    assert not torch.allclose(model_call(plain_regions, x, sigma, context, y, order), out, atol=1e-4)


def test_regions_sample_with_the_real_sampler(sdxl, vae):
    latent = torch.zeros(3, 4, 16, 24)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(4)
    positive = [
        [
            torch.randn(3, 8, CONTEXT, generator=g),
            {"pooled_output": torch.randn(3, tiny_models.TINY_POOLED_DIM, generator=g)},
        ]
    ]
    negative = [
        [
            torch.randn(1, 8, CONTEXT, generator=g),
            {"pooled_output": torch.randn(1, tiny_models.TINY_POOLED_DIM, generator=g)},
        ]
    ]
    patched = ApplyRefDropImage.execute(sdxl, vae, picture(2), 0.3, 1, False, "", "", 0.0, 1.0, None,
                                        regions_on(2, 3, pixels=32)).args[0]  # fmt: skip
    samples = comfy.sample.sample(patched, noise, 2, 5.0, "euler", "simple", positive, negative, latent, seed=2,
                                  disable_pbar=True)  # fmt: skip
    assert samples.shape == latent.shape and torch.isfinite(samples).all()
