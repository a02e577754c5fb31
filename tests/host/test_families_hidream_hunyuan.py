"""HiDream (I1, E1) and HunyuanImage 2.1: block names, E1's image condition, ByT5 glyph tokens, refusals.

Tiny real instances of ComfyUI's own classes (``tiny_dits.ENTRIES["hidream"]`` / ``["hunyuan_image21"]``; the
family-parametrized host tests cover both as well). Where the image tokens are is written here from the models'
code, independently of the pack's family table:
- HiDream: every call is [image; text]. E1 concatenates its image condition to the latent along the width before
  padding to whole 2x2 patches, so a token row holds ceil(w / 2) tokens of the image, then the condition's.
- HunyuanImage 2.1: the token refiner attends over the prompt only; the blocks over [prompt; ByT5 glyph tokens;
  image], one token per latent pixel.
"""

from __future__ import annotations

import math

import comfy.model_management as mm
import comfy.model_patcher
import comfy.sample
import comfy.supported_models
import pytest
import torch
from refguide.comfy_patches import model_families
from refguide.comfy_patches.dit_override import EXTRA_CALL_KEY, OVERRIDE_KEY, patch_dit
from refguide.comfy_patches.refdrop.dit import ReferenceImageRows
from refguide.comfy_patches.refdrop.settings import RefDropSettings
from refguide.comfy_patches.reference_rows import REFERENCE_MASKS_KEY, REFERENCE_ROWS_KEY
from refguide.nodes.refdrop import ApplyRefDrop
from refguide_testing import reference, tiny_dits

CONTEXT_TOKENS, PIXELS = 8, 8  # prompt tokens; image pixels per latent pixel (masks are drawn at image size)


def apply_refdrop(model, strength=0.4, reference_count=1, reference_strengths="", exclude_blocks="", regions=None):
    return ApplyRefDrop.execute(model, strength, reference_count, False, reference_strengths, exclude_blocks, 0.0,
                                1.0, regions).args[0]  # fmt: skip


def conditioning(name, rows, seed, extra=None):
    entry = tiny_dits.ENTRIES[name]
    g = torch.Generator().manual_seed(seed)
    extras = entry.conditioning_extras(rows, g)
    extras.update(extra or {})
    return [torch.randn(rows, CONTEXT_TOKENS, entry.context_width, generator=g), extras]


def sample(name, model, batch=3, size=(16, 16), steps=1, cfg=1.0, extra=None):
    shape = (batch, tiny_dits.ENTRIES[name].latent_channels, *size)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    positive, negative = [conditioning(name, batch, 1, extra)], [conditioning(name, 1, 2, extra)]
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive, negative, torch.zeros(shape),
                               seed=7, disable_pbar=True)  # fmt: skip


def with_recorder(model):
    """A clone whose attention goes through a recording override (another pack's, below ours): per plain call the
    number of extra (reference) attentions that followed it, and the call's block key."""
    calls = []

    def recorder(func, *args, **kwargs):
        options = kwargs.get("transformer_options") or {}
        if options.get(EXTRA_CALL_KEY):
            calls[-1]["extras"] += 1
        else:
            calls.append({"extras": 0, "block": (options.get("block_type"), options.get("block_index"))})
        return func(*args, **kwargs)

    base = model.clone()
    base.model_options.setdefault("transformer_options", {})[OVERRIDE_KEY] = recorder
    return base, calls


# ---- block names -----------------------------------------------------------------------------------------------


def test_hidream_exclude_blocks_uses_the_model_names():
    """HiDream sets no block index: the calls come in model order, double-stream then single-stream blocks."""
    model = tiny_dits.tiny_dit("hidream", seed=1)
    assert model_families.model_family(model).block_names == ("double 0", "double 1", "single 0", "single 1")
    base, calls = with_recorder(model)
    sample("hidream", apply_refdrop(base, exclude_blocks="double 1, Single 0"))
    assert [call["extras"] for call in calls] == [1, 0, 0, 1]
    assert {call["block"] for call in calls} == {(None, None)}
    with pytest.raises(ValueError, match=r"'joint 0'.*Valid names: double 0, double 1, single 0, single 1\."):
        apply_refdrop(model, exclude_blocks="joint 0")


def test_hunyuan_image_exclude_blocks_uses_the_model_names_and_leaves_an_excluded_token_refiner_plain():
    model = tiny_dits.tiny_dit("hunyuan_image21", seed=1)
    names = ("token refiner 0", "token refiner 1", "double 0", "double 1", "single 0", "single 1")
    assert model_families.model_family(model).block_names == names
    base, calls = with_recorder(model)
    sample("hunyuan_image21", apply_refdrop(base))
    assert [call["extras"] for call in calls] == [1] * 6  # the token refiner's text self-attention is guided too
    calls.clear()
    sample("hunyuan_image21", apply_refdrop(base, exclude_blocks="token refiner 0, token refiner 1, double 1"))
    assert [(call["block"], call["extras"]) for call in calls] == [
        ((None, None), 0), ((None, None), 0), (("double", 0), 1), (("double", 1), 0), (("single", 0), 1),
        (("single", 1), 1),
    ]  # fmt: skip
    excluded = sample("hunyuan_image21", apply_refdrop(model, exclude_blocks=", ".join(names)))
    torch.testing.assert_close(excluded, sample("hunyuan_image21", model), rtol=0, atol=0)  # all excluded: plain
    with pytest.raises(ValueError, match=r"'refiner 0'.*Valid names: token refiner 0, token refiner 1, double 0, "):
        apply_refdrop(model, exclude_blocks="refiner 0")


# ---- subject masks and regions on the real token layouts: HiDream E1, HunyuanImage 2.1 with ByT5 ---------------


def bind(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False, **kwargs):
    return q, k, v, heads, mask, skip_reshape, skip_output_reshape


def recording(patched):
    """Wrap the pack's override: every plain self-attention call's inputs and the pack's output (test-only)."""
    options = patched.model_options["transformer_options"]
    pack, calls = options[OVERRIDE_KEY], []

    def recorder(func, *args, **kwargs):
        out = pack(func, *args, **kwargs)
        if not (kwargs.get("transformer_options") or {}).get(EXTRA_CALL_KEY):
            q, k, v, heads, mask, skip_reshape, skip_output_reshape = bind(*args, **kwargs)
            order = list((kwargs.get("transformer_options") or {}).get("cond_or_uncond") or [0])
            calls.append((q, k, v, heads, mask, skip_reshape, skip_output_reshape, out.detach().clone(), order))
        return out

    options[OVERRIDE_KEY] = recorder
    return calls


def grid_tokens(mask, size, patch):
    """The tokens (row-major on the grid padded to whole patches) whose latent patch averages >= 0.5."""
    height, width = size
    latent = mask.reshape(height, PIXELS, width, PIXELS).mean(dim=(1, 3))
    grid_h, grid_w = math.ceil(height / patch), math.ceil(width / patch)
    padded = torch.zeros(grid_h * patch, grid_w * patch)
    padded[:height, :width] = latent
    averaged = padded.reshape(grid_h, patch, grid_w, patch).mean(dim=(1, 3))
    return set((averaged.flatten() >= 0.5).nonzero().flatten().tolist())


def left_right_regions(size):
    height, width = size
    regions = torch.zeros(2, height * PIXELS, width * PIXELS)
    regions[0, :, : 6 * PIXELS] = 1.0
    regions[1, :, 5 * PIXELS :] = 1.0
    return regions


def upper_left_subject(size):
    height, width = size
    mask = torch.zeros(1, height * PIXELS, width * PIXELS)
    mask[0, : 5 * PIXELS, : 7 * PIXELS] = 1.0
    return mask


def check_calls(calls, image_positions, guidance_for):
    """Every recorded call equals the direct float64 computation; ``image_positions(tokens)`` maps the image grid
    to the call's tokens (None: a call without image tokens). Returns how many calls had image tokens."""
    assert calls
    with_image = 0
    for q, k, v, heads, mask, skip_reshape, skip_output_reshape, out, order in calls:
        layout = "heads" if skip_reshape else "flat"
        tokens = q.shape[2 if skip_reshape else 1]
        positions = image_positions(tokens)
        with_image += positions is not None
        guidance = guidance_for(q.shape[0] // len(order), positions, tokens)
        assert mask is None
        expected = reference.direct_guidance(q.double(), k.double(), v.double(), heads, guidance, layout)
        if layout == "heads" and not skip_output_reshape:
            expected = expected.transpose(1, 2).reshape(q.shape[0], tokens, -1)
        torch.testing.assert_close(out.double(), expected, rtol=2e-4, atol=2e-4)
    return with_image


def region_guidance(regions, size, patch):
    region_tokens = [grid_tokens(region, size, patch) for region in regions]
    assert region_tokens[0] & region_tokens[1] and region_tokens[0] != region_tokens[1]

    def guidance_for(per_chunk, positions, tokens):
        where = {} if positions is None else {token: index for index, token in enumerate(positions)}

        def guidance(b, t):
            base, index = b - b % per_chunk, b % per_chunk
            if index < 2 or t not in where:
                return []  # references, and every non-image token of a guided row: unguided with regions
            return [(base + j, None, c) for j, c in ((0, 0.4), (1, 0.3)) if where[t] in region_tokens[j]]

        return guidance

    return guidance_for


def subject_guidance(mask, size, patch):
    subject = grid_tokens(mask[0], size, patch)
    assert 0 < len(subject) < math.ceil(size[0] / patch) * math.ceil(size[1] / patch)

    def guidance_for(per_chunk, positions, tokens):
        image = set(positions or [])
        kept = None if positions is None else [
            t for t in range(tokens) if t not in image or positions.index(t) in subject
        ]  # fmt: skip

        def guidance(b, t):
            base, index = b - b % per_chunk, b % per_chunk
            return [] if index == 0 else [(base, kept, 0.5)]

        return guidance

    return guidance_for


def with_reference_row(model, mask):
    """The Reference Image policy with row 0 of every chunk standing for the picture row (as its wrapper puts it)."""
    settings = RefDropSettings((0,), (0.5,), "Apply RefDrop (Reference Image)")
    patched = patch_dit(model, model_families.model_family(model).dit, ReferenceImageRows(settings))
    options = patched.model_options["transformer_options"]
    options[REFERENCE_ROWS_KEY] = 1
    options[REFERENCE_MASKS_KEY] = mask
    return patched


def hidream_e1_positions(size, condition_width):
    """E1: [x | image condition] along the width, padded to whole 2x2 patches; the image's tokens of each row."""
    height, width = size
    row = math.ceil((width + condition_width) / 2)
    image = [r * row + c for r in range(math.ceil(height / 2)) for c in range(math.ceil(width / 2))]
    return lambda tokens: image


def guided(model, feature, size, patch):
    """(patched model, batch, guidance_for): in-batch Apply RefDrop with two references and left/right regions, or
    the Reference Image policy with an upper-left subject mask; ``patch``: latent pixels per token side."""
    if feature == "regions":
        regions = left_right_regions(size)
        return apply_refdrop(model, 0.3, 2, "0.4, 0.3", regions=regions), 4, region_guidance(regions, size, patch)
    mask = upper_left_subject(size)
    return with_reference_row(model, mask), 3, subject_guidance(mask, size, patch)


@pytest.mark.parametrize("feature", ["regions", "subject mask"])
def test_hidream_e1_image_condition_tokens_stay_keys_and_masks_land_on_the_image_tokens(feature):
    """E1 (an image condition concatenated along the width, here 9 latent pixels wide next to an odd 11 x 13
    latent): regions and subject masks act on the image's tokens only; every call equals the direct computation."""
    size, condition_width = (11, 13), 9
    g = torch.Generator().manual_seed(5)
    condition = {"concat_latent_image": torch.randn(1, 16, size[0], condition_width, generator=g)}
    patched, batch, guidance_for = guided(tiny_dits.tiny_dit("hidream", seed=1), feature, size, 2)
    calls = recording(patched)
    sample("hidream", patched, batch=batch, size=size, extra=condition)
    assert len(calls) == 4  # double 0, 1, single 0, 1
    # 6 token rows of 11 (7 of the image, 4 of the condition), then T5 + the last and the block's Llama layer
    assert {call[0].shape[1] for call in calls} == {6 * 11 + CONTEXT_TOKENS + 2 * tiny_dits.HIDREAM_LLAMA_TOKENS}
    assert check_calls(calls, hidream_e1_positions(size, condition_width), guidance_for) == 4


def test_hidream_e1_samples_with_a_reference_picture():
    """Apply RefDrop (Reference Image) on E1: the reference rows get the chunk's image condition (the sampler's
    real run, cfg 2: two guidance chunks); guided differs from plain, strength 0 is bit-identical."""
    from refguide.nodes.refdrop import ApplyRefDropImage

    model, vae = tiny_dits.tiny_dit("hidream", seed=6), tiny_dits.tiny_dit_vae("hidream")
    g = torch.Generator().manual_seed(8)
    image = torch.rand(1, 96, 128, 3, generator=g)
    condition = {"concat_latent_image": torch.randn(1, 16, 12, 14, generator=g)}

    def run(patcher):
        return sample("hidream", patcher, batch=2, size=(12, 14), cfg=2.0, extra=condition)

    def picture(strength):
        return ApplyRefDropImage.execute(model, vae, image, strength, 3, False, "").args[0]

    plain, guided = run(model), run(picture(0.4))
    assert torch.isfinite(guided).all() and (guided - plain).abs().mean() > 1e-4 * plain.abs().mean()
    assert torch.equal(run(picture(0.0)), plain)


def tiny_hunyuan_image_with_byt5(seed=1):
    """HunyuanImage 2.1 with its ByT5 glyph mapper (1472-wide ByT5-small states -> the model width), as released."""
    config = comfy.supported_models.HunyuanImage21(dict(tiny_dits.TINY_HUNYUAN_IMAGE21, byt5=True))
    config.set_inference_dtype(torch.float32, None)
    model = tiny_dits.init_weights_(config.get_model({}), seed)
    return comfy.model_patcher.ModelPatcher(model, mm.get_torch_device(), mm.unet_offload_device())


@pytest.mark.parametrize("feature", ["regions", "subject mask"])
def test_hunyuan_image_with_glyph_tokens_keeps_the_image_tokens_last(feature):
    """The ByT5 glyph tokens are appended to the prompt: [prompt; glyphs; image] in the blocks, the token refiner
    sees the prompt only; non-square 7 x 9 latent, one token per latent pixel."""
    size, glyphs = (7, 9), 3
    g = torch.Generator().manual_seed(6)
    glyph_states = {"conditioning_byt5small": torch.randn(1, glyphs, 1472, generator=g)}
    patched, batch, guidance_for = guided(tiny_hunyuan_image_with_byt5(), feature, size, 1)
    calls = recording(patched)
    sample("hunyuan_image21", patched, batch=batch, size=size, extra=glyph_states)
    image = list(range(CONTEXT_TOKENS + glyphs, CONTEXT_TOKENS + glyphs + size[0] * size[1]))
    tokens = [call[0].shape[2] for call in calls]
    assert tokens == [CONTEXT_TOKENS] * 2 + [len(image) + CONTEXT_TOKENS + glyphs] * 4
    assert check_calls(calls, lambda n: None if n == CONTEXT_TOKENS else image, guidance_for) == 4


# ---- refused: HiDream-O1, the HunyuanImage 2.1 refiner --------------------------------------------------------

TINY_HIDREAM_O1 = {
    "image_model": "hidream_o1",
    "text_config_overrides": {"vocab_size": 151680, "hidden_size": 64, "intermediate_size": 128,
                              "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
                              "head_dim": 32, "rope_dims": [8, 4, 4]},
    "vision_config_overrides": {"hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "depth": 1,
                                "deepstack_visual_indexes": ()},
}  # fmt: skip
TINY_HUNYUAN_IMAGE21_REFINER = dict(tiny_dits.TINY_HUNYUAN_IMAGE21, in_channels=128, patch_size=[1, 1, 1],
                                    axes_dim=[8, 12, 12])  # fmt: skip


def tiny_patcher(config_class, config, seed=0):
    model_config = config_class(dict(config))
    model_config.set_inference_dtype(torch.float32, None)
    model = tiny_dits.init_weights_(model_config.get_model({}), seed, std=0.02)
    return comfy.model_patcher.ModelPatcher(model, mm.get_torch_device(), mm.unet_offload_device())


def test_hidream_o1_is_refused_and_has_no_self_attention_call_of_one_sequence():
    model = tiny_patcher(comfy.supported_models.HiDreamO1, TINY_HIDREAM_O1)
    with pytest.raises(ValueError, match=r"HiDreamO1 models: it has no self-attention call to guide: each layer sends "
                                         r"only the generated tokens' queries"):  # fmt: skip
        apply_refdrop(model)
    # the reason, checked on the model: what reaches ComfyUI's attention override in two sampling steps (the second
    # reuses the text prefix's key/value cache) is the generated tokens' queries against the whole sequence's keys
    seen = []

    def override(func, *args, **kwargs):
        seen.append((args[0].shape[2], args[1].shape[2]))  # (B, heads, tokens, dim): query and key tokens
        return func(*args, **kwargs)

    base = model.clone()
    base.model_options.setdefault("transformer_options", {})[OVERRIDE_KEY] = override
    prompt = torch.tensor([[151644, 872, 198, 100, 200, 300, 151645, 151673]])  # 8 tokens, the last the tms token
    latent = torch.zeros(2, 3, 64, 64)  # 2 x 2 patches of 32 pixels
    conds = [[torch.zeros(1, 1, 1), {"text_input_ids": prompt}]]
    comfy.sample.sample(base, torch.randn(latent.shape), 2, 1.0, "euler", "simple", conds, conds, latent, seed=1,
                        disable_pbar=True)  # fmt: skip
    assert seen and set(seen) == {(1 + 4, 8 - 1 + 1 + 4)}  # tms + 4 image queries; 7 causal prefix keys + them


def test_the_hunyuan_image_refiner_is_refused_with_its_latent_format_as_the_reason():
    model = tiny_patcher(comfy.supported_models.HunyuanImage21Refiner, TINY_HUNYUAN_IMAGE21_REFINER)
    with pytest.raises(ValueError, match=r"HunyuanImage21Refiner models: its latent format .* packs two frames of "
                                         r"its VAE's 32-channel latent into one 64-channel frame"):  # fmt: skip
        apply_refdrop(model)
    # the reason: a 1-frame 32-channel latent of its VAE becomes one 64-channel frame in the model
    latent_format = model.get_model_object("latent_format")
    assert latent_format.latent_channels == 64
    assert tuple(latent_format.process_in(torch.zeros(1, 32, 1, 4, 4)).shape) == (1, 64, 1, 4, 4)
