"""Apply RefDrop on real ComfyUI UNets (tiny, random weights) and ComfyUI's real sampler."""

from __future__ import annotations

import logging

import comfy.sample
import pytest
import torch
from comfy_extras.nodes_hypertile import HyperTile
from comfy_extras.nodes_sag import SelfAttentionGuidance
from refguide.comfy_patches.attention_calls import FallbackNotice
from refguide.comfy_patches.refdrop.settings import RefDropSettings
from refguide.comfy_patches.refdrop.unet import RefDropAttention
from refguide.nodes.refdrop import ApplyRefDrop
from refguide_testing import reference, tiny_models

CONTEXT = 2048


def apply_refdrop(model, strength=0.3, reference_count=1, skip_up1=False, reference_strengths="", exclude_blocks=""):
    return ApplyRefDrop.execute(model, strength, reference_count, skip_up1, reference_strengths, exclude_blocks).args[0]


@pytest.fixture(scope="module")
def sdxl():
    return tiny_models.tiny_unet("sdxl", seed=0)


def unet_call(patcher, x, context, y, cond_or_uncond, t=500.0):
    """One diffusion-model call as the sampler makes it: the clone's patches plus the chunk list."""
    options = dict(patcher.model_options.get("transformer_options", {}))
    options["cond_or_uncond"] = list(cond_or_uncond)
    options["sigmas"] = torch.full((x.shape[0],), 5.0)
    with torch.no_grad():
        timesteps = torch.full((x.shape[0],), t)
        return patcher.model.diffusion_model(x, timesteps, context, y, transformer_options=options)


def inputs(batch, seed=0, size=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=g)
    context = torch.randn(batch, 8, CONTEXT, generator=g)
    y = torch.randn(batch, tiny_models.TINY_SDXL_UNET["adm_in_channels"], generator=g)
    return x, context, y


def test_every_self_attention_is_patched_and_cross_attention_is_not(sdxl):
    patched = apply_refdrop(sdxl)
    replaces = patched.model_options["transformer_options"]["patches_replace"]
    assert "attn2" not in replaces
    expected = {
        (name, block_id, index)
        for name, block_id, depth in [("input", 4, 1), ("input", 5, 1), ("input", 7, 2), ("input", 8, 2),
                                      ("middle", 0, 2), ("output", 0, 2), ("output", 1, 2), ("output", 2, 2),
                                      ("output", 3, 1), ("output", 4, 1), ("output", 5, 1)]
        for index in range(depth)
    }  # fmt: skip
    assert set(replaces["attn1"]) == expected
    assert all(isinstance(p, RefDropAttention) for p in replaces["attn1"].values())
    assert "patches_replace" not in sdxl.model_options.get("transformer_options", {})  # the input is untouched


def test_skip_up1_and_exclude_blocks(sdxl):
    keys = set(apply_refdrop(sdxl, skip_up1=True, exclude_blocks="input 8, Middle 0").model_options[
        "transformer_options"]["patches_replace"]["attn1"])  # fmt: skip
    blocks = {key[:2] for key in keys}
    assert ("output", 0) not in blocks and ("input", 8) not in blocks and ("middle", 0) not in blocks
    assert ("output", 1) in blocks and ("input", 7) in blocks
    with pytest.raises(ValueError, match=r"'output 9'.*Valid names: input 4, input 5, input 7, input 8, middle 0"):
        apply_refdrop(sdxl, exclude_blocks="output 9")


def test_reference_strengths_validation(sdxl):
    with pytest.raises(ValueError, match="has 1 value.*reference_count is 2"):
        apply_refdrop(sdxl, reference_count=2, reference_strengths="0.3")
    message = ApplyRefDrop.validate_inputs(reference_count=2, reference_strengths="0.3, x")
    assert isinstance(message, str) and "'x' is not a number" in message
    assert ApplyRefDrop.validate_inputs(reference_count=2, reference_strengths="0.3, 0.2") is True


def test_zero_strength_is_bit_identical(sdxl):
    x, context, y = inputs(4)
    patched = apply_refdrop(sdxl, strength=0.0)
    assert torch.equal(unet_call(patched, x, context, y, [0]), unet_call(sdxl, x, context, y, [0]))
    patched = apply_refdrop(sdxl, reference_count=2, reference_strengths="0, 0")
    assert torch.equal(unet_call(patched, x, context, y, [0]), unet_call(sdxl, x, context, y, [0]))


@pytest.mark.parametrize("order", [[1, 0], [0, 1], [0], [1, 0, 0]])
def test_reference_rows_unchanged_and_chunks_independent(sdxl, order):
    per_chunk = 3
    x, context, y = inputs(per_chunk * len(order), seed=len(order))
    patched = apply_refdrop(sdxl, strength=0.4)
    plain = unet_call(sdxl, x, context, y, order)
    guided = unet_call(patched, x, context, y, order)
    for chunk in range(len(order)):
        ref = chunk * per_chunk
        assert torch.equal(guided[ref], plain[ref]), f"reference row of chunk {chunk} changed"
        assert not torch.allclose(guided[ref + 1], plain[ref + 1], atol=1e-4)
        # each chunk alone (a split call) gives the same rows as the joint call
        rows = slice(ref, ref + per_chunk)
        alone = unet_call(patched, x[rows], context[rows], y[rows], [order[chunk]])
        torch.testing.assert_close(alone, guided[rows], rtol=1e-4, atol=1e-4)


def test_layer_output_matches_equation_6_on_real_attention():
    """The attn1 patch (float32, ComfyUI's own attention) against THE direct float64 computation of Eq. 6: two
    chunks of three rows, references 0 and 1 (c = 0.3, 0.2) guide row 2; the reference rows get nothing."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(6, 16, 128, generator=g) for _ in range(3))
    extra = {"n_heads": 2, "dim_head": 64, "attn_precision": None, "cond_or_uncond": [1, 0],
             "activations_shape": [6, 128, 4, 4]}  # fmt: skip
    patch = RefDropAttention(RefDropSettings((0, 1), (0.3, 0.2)), FallbackNotice("t"))
    out = patch(q, k, v, extra)
    assert out.shape == q.shape and out.dtype == torch.float32

    guidance = reference.in_batch_guidance(3, (0, 1), (0.3, 0.2))
    qd, kd, vd = q.double(), k.double(), v.double()
    expected = reference.direct_guidance(qd, kd, vd, 2, guidance)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)

    own = reference.direct_attention(qd, kd, vd, heads=2)  # every row with its own keys/values only
    for chunk in range(2):
        base = chunk * 3
        for ref in (base, base + 1):  # reference rows: plain attention of their own row
            assert guidance(ref, 0) == []
            torch.testing.assert_close(out[ref].double(), own[ref], rtol=1e-5, atol=1e-6)
        guided = base + 2
        assert [(row, c) for row, _, c in guidance(guided, 0)] == [(base, 0.3), (base + 1, 0.2)]
        assert (expected[guided] - own[guided]).abs().max() > 1e-2  # the guidance is far above the tolerance


def test_too_few_images_says_how_many_are_needed(sdxl):
    x, context, y = inputs(2)
    patched = apply_refdrop(sdxl, reference_count=2, reference_strengths="0.3, 0.3")
    with pytest.raises(ValueError, match="has 2 image.*need 3"):
        unet_call(patched, x, context, y, [0])


def test_video_models_are_refused():
    with pytest.raises(ValueError, match="SVD Temporal RefDrop"):
        apply_refdrop(tiny_models.tiny_unet("svd"))


def test_unsupported_models_are_refused_with_the_supported_families():
    """A model of a configuration the pack does not know (a model ComfyUI adds after 0.30.0: here a real AuraFlow
    network under a configuration class of its own) is refused, naming the supported families."""
    import comfy.model_patcher
    import comfy.supported_models
    import comfy.supported_models_base

    class FutureModel(comfy.supported_models_base.BASE):
        unet_config = {}

    unet_config = {"dim": 64, "n_layers": 2, "n_double_layers": 1, "n_heads": 2, "global_conddim": 64,
                   "cond_seq_dim": 32, "max_seq": 64}  # fmt: skip
    model_config = comfy.supported_models.AuraFlow(dict(unet_config))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    model.model_config = FutureModel(dict(unet_config))  # this test's own instance, nothing shared
    patcher = comfy.model_patcher.ModelPatcher(model, torch.device("cpu"), torch.device("cpu"))
    with pytest.raises(ValueError, match=r"works with SD1.x, SD2.x, SDXL, Flux, .*Qwen-Image.*HiDream.* models; "
                                         r"this model \(AuraFlow\) is not supported"):  # fmt: skip
        apply_refdrop(patcher)


# ---- ComfyUI's real sampler ----------------------------------------------------------------------------


def conditioning(batch_rows, seed, area=None):
    g = torch.Generator().manual_seed(seed)
    extras = {"pooled_output": torch.randn(batch_rows, tiny_models.TINY_POOLED_DIM, generator=g)}
    if area is not None:
        extras["area"] = area
    return [torch.randn(batch_rows, 8, CONTEXT, generator=g), extras]


def sample(model, cfg=5.0, positive=None, negative=None, batch=3, steps=3):
    latent = torch.zeros(batch, 4, 16, 16)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(11))
    positive = positive or [conditioning(batch, 1)]
    negative = negative or [conditioning(1, 2)]
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", positive, negative, latent, seed=11,
                               disable_pbar=True)  # fmt: skip


@pytest.mark.parametrize(
    "cfg,positive",
    [
        (5.0, None),  # positive and negative batched: [1, 0]
        (1.0, None),  # cfg 1: positive only
        (5.0, [conditioning(3, 1), conditioning(3, 4)]),  # two positive conds: [1, 0, 0]
        (5.0, [conditioning(3, 1), conditioning(3, 4, area=(8, 8, 0, 0))]),  # area cond: smaller feature map
    ],
)
def test_real_sampler_keeps_reference_image_and_guides_the_rest(sdxl, cfg, positive):
    plain = sample(sdxl, cfg=cfg, positive=positive)
    guided = sample(apply_refdrop(sdxl, strength=0.4), cfg=cfg, positive=positive)
    assert torch.isfinite(guided).all()
    torch.testing.assert_close(guided[0], plain[0], rtol=1e-5, atol=1e-5)
    assert (guided[1:] - plain[1:]).abs().mean() > 1e-3


def test_sag_middle_patch_becomes_the_inner_attention(sdxl):
    sag = SelfAttentionGuidance.execute(sdxl, 0.5, 2.0).args[0]
    sag_patch = sag.model_options["transformer_options"]["patches_replace"]["attn1"][("middle", 0, 0)]
    both = apply_refdrop(sag, strength=0.4)
    ours = both.model_options["transformer_options"]["patches_replace"]["attn1"][("middle", 0, 0)]
    assert isinstance(ours, RefDropAttention) and ours.inner is sag_patch
    assert ours.inner is not None and both.model_options["sampler_post_cfg_function"]  # SAG's guidance is kept
    sag_only = sample(sag)
    combined = sample(both)
    torch.testing.assert_close(combined[0], sag_only[0], rtol=1e-5, atol=1e-5)
    assert (combined[1:] - sag_only[1:]).abs().mean() > 1e-3


def test_hypertile_falls_back_with_one_warning(sdxl, caplog):
    tiled = HyperTile.execute(sdxl, 32, 2, 1, False)[0]
    both = apply_refdrop(tiled, strength=0.4)
    with caplog.at_level(logging.WARNING):
        out = sample(both, batch=3)
    assert torch.isfinite(out).all()
    warnings = [r for r in caplog.records if "plain self-attention" in r.getMessage()]
    assert len(warnings) == 1


def test_sd15_is_supported_too():
    sd15 = tiny_models.tiny_unet("sd15", seed=3)
    patched = apply_refdrop(sd15, skip_up1=True)
    blocks = {key[:2] for key in patched.model_options["transformer_options"]["patches_replace"]["attn1"]}
    assert ("output", 3) not in blocks and ("output", 4) in blocks and ("input", 1) in blocks
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(3, 4, 16, 16, generator=g), torch.randn(3, 8, 64, generator=g)
    plain, guided = unet_call(sd15, x, context, None, [0]), unet_call(patched, x, context, None, [0])
    assert torch.equal(plain[0], guided[0]) and not torch.allclose(plain[1], guided[1], atol=1e-4)


def test_controlnet_model_is_never_patched(sdxl):
    """The ControlNet runs its own attention: same control outputs with and without RefDrop on the UNet."""
    from refguide_testing import tiny_easyref

    control = tiny_easyref.tiny_controlnet("sdxl").copy().set_cond_hint(torch.rand(1, 3, 128, 128), 1.0, (0.0, 1.0))
    outputs = []
    hook = control.control_model.register_forward_hook(
        lambda module, args, output: outputs.append([t.clone() for v in output.values() for t in v if t is not None])
    )
    try:
        positive = [conditioning(3, 1)]
        positive[0][1]["control"] = control
        plain = sample(sdxl, positive=positive, steps=1)
        plain_controls = list(outputs)
        outputs.clear()
        guided = sample(apply_refdrop(sdxl, strength=0.4), positive=positive, steps=1)
    finally:
        hook.remove()
    assert (guided[1:] - plain[1:]).abs().mean() > 1e-4  # the UNet is guided ...
    assert len(outputs) == len(plain_controls) > 0  # ... the ControlNet computes exactly the same
    for a, b in zip(plain_controls, outputs, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_prompt_batch_rows_follow_the_lines_and_mix_token_lengths():
    from refguide.nodes.refdrop import RefDropPromptBatch

    clip = tiny_models.tiny_clip()
    long_prompt = ", ".join(["a very detailed photo of a red-haired woman in a green coat"] * 12)  # > 75 tokens
    lines = ["a red-haired woman, portrait", long_prompt, "", "a red-haired woman on a beach"]
    (conditioning_out,) = RefDropPromptBatch.execute(clip, "\n".join(lines)).args
    cond, extras = conditioning_out[0]
    singles = [clip.encode_from_tokens(clip.tokenize(line), return_pooled=True) for line in lines if line]
    assert singles[1][0].shape[1] > singles[0][0].shape[1]  # really different token lengths
    assert cond.shape == (3, singles[1][0].shape[1], 2048) and extras["pooled_output"].shape[0] == 3
    for row, (single, pooled) in enumerate(singles):
        repeats = cond.shape[1] // single.shape[1]
        assert torch.equal(cond[row : row + 1], single.repeat(1, repeats, 1))
        assert torch.equal(extras["pooled_output"][row], pooled[0])
    # repeating a whole key/value sequence leaves cross-attention unchanged: each row still sees its own prompt
    q = torch.randn(1, 16, 2048, dtype=torch.float64)
    short = singles[0][0].double()
    assert torch.allclose(
        torch.nn.functional.scaled_dot_product_attention(q, short, short),
        torch.nn.functional.scaled_dot_product_attention(q, cond[0:1].double(), cond[0:1].double()),
    )
    with pytest.raises(ValueError, match="at least one prompt"):
        RefDropPromptBatch.execute(clip, "\n  \n")
