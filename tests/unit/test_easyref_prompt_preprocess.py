"""EasyRef token string (spec steps 1-2) and image preprocessing (spec step 3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from refguide.easyref import preprocess, prompt

SLOT = "<|vision_start|><|image_pad|><|vision_end|>"
HEAD = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
INSTR = "Visualize a scene that closely resembles the provided images, capturing the essence and details described in this prompt:\n"
TAIL = "<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("n", [1, 2, 5])
def test_token_string_layout(n):
    assert prompt.build_text(n, "a red car") == HEAD + SLOT * n + INSTR + "a red car" + TAIL
    assert "Picture" not in prompt.build_text(n, "")


def test_unconditional_string_is_bare_instruction():
    assert prompt.build_text(1, "") == HEAD + SLOT + INSTR + TAIL


def test_zero_images_refused():
    with pytest.raises(ValueError, match="at least one"):
        prompt.build_text(0, "x")


def test_expand_image_pads():
    ids = [1, 9, 2, 9, 3]
    assert prompt.expand_image_pads(ids, 9, [2, 3]) == [1, 9, 9, 2, 9, 9, 9, 3]
    with pytest.raises(ValueError):
        prompt.expand_image_pads(ids, 9, [2])


# (height, width) -> (size after stage a, size after stage b, merged visual tokens); worked by hand from
# qwen_vl_utils.smart_resize (stage a) and the image processor's smart_resize with 121*784..145*784 (stage b).
CASES = {
    "square": ((512, 512), (504, 504), (336, 336), 144),
    "square_large": ((1024, 1024), (1036, 1036), (336, 336), 144),
    "portrait": ((600, 400), (588, 392), (392, 252), 126),
    "landscape": ((400, 600), (392, 588), (252, 392), 126),
    "landscape_16_9": ((768, 1365), (756, 1372), (224, 448), 128),
    "very_small": ((10, 10), (56, 56), (308, 308), 121),
    "one_pixel": ((1, 1), (56, 56), (308, 308), 121),
    "very_large": ((8000, 6000), (4116, 3080), (364, 280), 130),
    "ratio_180": ((2, 360), (28, 364), (112, 1120), 160),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_stage_resize(case):
    hw, a, b, tokens = CASES[case]
    assert preprocess.resize_stage_a(*hw) == a
    assert preprocess.resize_stage_b(*a) == b
    assert (b[0] // 14) * (b[1] // 14) // 4 == tokens


@pytest.mark.parametrize("case", ["square", "portrait", "landscape", "very_small"])
def test_preprocess_image_counts(case):
    hw, _, b, tokens = CASES[case]
    packed = preprocess.preprocess_image(torch.rand(*hw, 3))
    assert packed.num_tokens == tokens
    assert packed.grid_thw == (1, b[0] // 14, b[1] // 14)
    assert packed.pixel_values.shape == (b[0] // 14 * b[1] // 14, 3 * 2 * 14 * 14)


def test_extreme_aspect_ratio_refused():
    with pytest.raises(ValueError, match="aspect ratio"):
        preprocess.preprocess_image(torch.rand(1, 300, 3))


def test_grey_and_rgba_conversion():
    rgb = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    t = torch.from_numpy(rgb).float() / 255
    assert np.array_equal(np.asarray(preprocess.to_pil_rgb(t)), rgb)
    rgba = torch.cat([t, torch.rand(40, 50, 1)], dim=-1)
    assert np.array_equal(np.asarray(preprocess.to_pil_rgb(rgba)), rgb)
    grey = np.asarray(preprocess.to_pil_rgb(t[..., :1]))
    assert grey.shape == (40, 50, 3) and np.array_equal(grey[..., 0], grey[..., 2])
    with pytest.raises(ValueError, match="channels"):
        preprocess.to_pil_rgb(torch.rand(10, 10, 5))


@pytest.mark.mllm
def test_packing_matches_qwen2vl_image_processor():
    """Normalisation and patch order equal the processor's for an image it would not resize."""
    from transformers import Qwen2VLImageProcessor

    rgb = (np.random.default_rng(1).random((392, 252, 3)) * 255).astype(np.uint8)
    proc = Qwen2VLImageProcessor(min_pixels=preprocess.STAGE_B_MIN_PIXELS, max_pixels=preprocess.STAGE_B_MAX_PIXELS)
    expected = proc(images=[rgb], return_tensors="pt")
    ours, grid = preprocess.pack_pixels(rgb)
    assert tuple(expected["image_grid_thw"][0].tolist()) == grid
    torch.testing.assert_close(ours, expected["pixel_values"].float(), rtol=1e-5, atol=1e-5)
