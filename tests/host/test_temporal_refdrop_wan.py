"""Temporal RefDrop on ComfyUI's real Wan 2.x models (tiny, random weights), sampled with ComfyUI's real sampler."""

from __future__ import annotations

import logging
import types

import comfy.sample
import pytest
import torch
from refguide.comfy_patches.dit_override import OVERRIDE_KEY
from refguide.nodes.refdrop import ApplyRefDrop
from refguide.nodes.svd import SVDTemporalRefDrop
from refguide.nodes.video_dit import TemporalRefDrop
from refguide_testing import reference, tiny_models, tiny_wan

torch.set_num_threads(1)


def apply(model, strength=0.2, reference_frame=0, start_percent=0.0, end_percent=1.0, exclude_blocks=""):
    return TemporalRefDrop.execute(model, strength, reference_frame, start_percent, end_percent, exclude_blocks).args[0]


@pytest.fixture(scope="module")
def t2v():
    return tiny_wan.tiny_wan("t2v", seed=0)


@pytest.fixture(scope="module")
def i2v():
    return tiny_wan.tiny_wan("i2v", seed=0)


# ---- one forward, every attention call recorded -------------------------------------------------------------


class Recorder:
    """An attention override set on top of the patched model (so Temporal RefDrop is chained inside it).

    It records every call's q/k/v, the output the chain returns, the plain backend output and the call's grid
    and block index.
    """

    def __init__(self, inner):
        self.inner, self.log = inner, []

    def __call__(self, func, q, k, v, heads, **kwargs):
        out = self.inner(func, q, k, v, heads, **kwargs) if self.inner else func(q, k, v, heads, **kwargs)
        options = kwargs["transformer_options"]
        plain = func(q, k, v, heads, **kwargs)
        self.log.append(types.SimpleNamespace(q=q, k=k, v=v, heads=heads, out=out.clone(), plain=plain,
                                              grid=tuple(options.get("grid_sizes", ())),
                                              block=options.get("block_index")))  # fmt: skip
        return out


def recorded(patcher):
    clone = patcher.clone()
    options = clone.model_options.setdefault("transformer_options", {})
    recorder = Recorder(options.get(OVERRIDE_KEY))
    options[OVERRIDE_KEY] = recorder
    return clone, recorder


def wan_inputs(variant, frames=3, size=4, text_tokens=7, seed=0, rows=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, tiny_wan.latent_channels(variant), frames, size, size, generator=g)
    context = torch.randn(rows, text_tokens, tiny_wan.TEXT_DIM, generator=g)
    clip = torch.randn(rows, 257, tiny_wan.CLIP_VISION_WIDTH, generator=g) if variant == "i2v" else None
    return x, context, clip


def forward(patcher, x, context, clip=None, cond_or_uncond=(1, 0)):
    """One model call as ComfyUI's sampler makes it (BaseModel.apply_model, with the patcher's wrappers)."""
    options = dict(patcher.model_options.get("transformer_options", {}))
    options["cond_or_uncond"] = list(cond_or_uncond)
    sigma = torch.full((x.shape[0],), 0.7)
    options["sigmas"] = sigma
    options["wrappers"] = patcher.wrappers
    extra = {"clip_fea": clip} if clip is not None else {}
    in_dim = patcher.model.diffusion_model.patch_embedding.weight.shape[1]
    concat = None
    if in_dim > x.shape[1]:  # image-to-video: mask + start-image latent, as concat_cond builds them
        concat = torch.randn(x.shape[0], in_dim - x.shape[1], *x.shape[2:], generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        return patcher.model.apply_model(x, sigma, c_concat=concat, c_crossattn=context, transformer_options=options,
                                         **extra)  # fmt: skip


def expected_self_attention(call, reference_frame, c):
    """Eq. 5 frame by frame in float64: X_t' = c Attn(Q_t, K_r, V_r) + (1 - c) X_t, frame r as computed."""
    frames, h, w = call.grid
    n = h * w
    q, k, v = (t.double() for t in (call.q, call.k, call.v))
    out = call.plain.double().clone()
    ref = slice(reference_frame * n, (reference_frame + 1) * n)
    for row in range(q.shape[0]):
        for t in range(frames):
            if t == reference_frame:
                continue
            tokens = slice(t * n, (t + 1) * n)
            guided = reference.direct_attention(q[row : row + 1, tokens], k[row : row + 1, ref],
                                                v[row : row + 1, ref], call.heads)[0]  # fmt: skip
            out[row, tokens] = c * guided + (1 - c) * out[row, tokens]
    return out


def self_and_cross(log, cross_per_block):
    """Split recorded calls by their place in Wan's block: self-attention first, then its cross-attentions."""
    per_block = 1 + cross_per_block
    assert len(log) % per_block == 0
    self_calls = log[::per_block]
    cross_calls = [call for i, call in enumerate(log) if i % per_block]
    assert [call.block for call in self_calls] == list(range(len(self_calls)))
    return self_calls, cross_calls


@pytest.mark.parametrize(
    "variant,reference_frame,frames,text_tokens",
    [
        ("t2v", 0, 3, 7),
        ("t2v", 1, 3, 12),  # 3 frames x 2x2 tokens = 12 = the text length: same shapes as the cross-attention
        ("i2v", 2, 3, 12),  # CLIP-image cross-attention (257 tokens) + text, reference = last frame
    ],
)
def test_self_attention_follows_eq5_and_cross_attention_is_untouched(t2v, i2v, variant, reference_frame, frames,
                                                                      text_tokens):  # fmt: skip
    model = {"t2v": t2v, "i2v": i2v}[variant]
    patched, recorder = recorded(apply(model, strength=0.3, reference_frame=reference_frame))
    x, context, clip = wan_inputs(variant, frames=frames, text_tokens=text_tokens)
    forward(patched, x, context, clip)
    self_calls, cross_calls = self_and_cross(recorder.log, 2 if variant == "i2v" else 1)
    assert len(self_calls) == 2
    for call in cross_calls:
        assert torch.equal(call.out, call.plain), "a cross-attention call changed"
    if variant == "i2v":
        assert {call.k.shape[1] for call in cross_calls} == {257, text_tokens}
    for call in self_calls:
        assert call.grid == (frames, 2, 2)
        n = 4
        ref = slice(reference_frame * n, (reference_frame + 1) * n)
        assert torch.equal(call.out[:, ref], call.plain[:, ref]), "the reference frame changed"
        assert (call.out - call.plain).abs().max() > 1e-4
        torch.testing.assert_close(call.out.double(), expected_self_attention(call, reference_frame, 0.3),
                                   rtol=1e-4, atol=1e-5)  # fmt: skip


def test_excluded_blocks_stay_plain(t2v):
    patched, recorder = recorded(apply(t2v, strength=0.3, exclude_blocks="block 1"))
    forward(patched, *wan_inputs("t2v")[:2])
    self_calls, _ = self_and_cross(recorder.log, 1)
    assert not torch.equal(self_calls[0].out, self_calls[0].plain)
    assert torch.equal(self_calls[1].out, self_calls[1].plain)


@pytest.mark.parametrize("order", [[1, 0], [0, 1], [0]])
def test_chunk_orders_and_split_calls(t2v, order):
    """Every row is its own clip with its own reference frame: batched branches equal the branches run alone."""
    patched = apply(t2v, strength=0.3)
    x, context, _ = wan_inputs("t2v", rows=len(order), seed=3)
    joint = forward(patched, x, context, cond_or_uncond=order)
    assert (joint - forward(t2v, x, context, cond_or_uncond=order)).abs().mean() > 1e-4
    for row in range(len(order)):
        alone = forward(patched, x[row : row + 1], context[row : row + 1], cond_or_uncond=[order[row]])
        torch.testing.assert_close(alone, joint[row : row + 1], rtol=1e-5, atol=1e-5)


def test_single_frame_runs_unchanged_with_one_warning(t2v, caplog):
    patched = apply(t2v, strength=0.5)
    x, context, _ = wan_inputs("t2v", frames=1)
    with caplog.at_level(logging.WARNING):
        out = forward(patched, x, context)
        forward(patched, x, context)
    assert torch.equal(out, forward(t2v, x, context))
    warnings = [r for r in caplog.records if "single latent frame" in r.getMessage()]
    assert len(warnings) == 1 and "Temporal RefDrop" in warnings[0].getMessage()


def test_reference_frame_past_the_clip_is_a_clear_error(t2v):
    patched = apply(t2v, reference_frame=3)
    with pytest.raises(ValueError, match=r"reference_frame 3 is past the end of this clip, which has 3 latent"):
        forward(patched, *wan_inputs("t2v", frames=3)[:2])


def test_inputs_are_checked(t2v):
    with pytest.raises(ValueError, match=r"'block 7' is not a block of this Wan 2.1 / 2.2 model. Valid names: block 0"):
        apply(t2v, exclude_blocks="block 7")
    with pytest.raises(ValueError, match=r"'output 0' is not a block of this Wan"):
        apply(t2v, exclude_blocks="output 0")
    assert "swap" in TemporalRefDrop.validate_inputs(start_percent=0.8, end_percent=0.2)
    assert TemporalRefDrop.validate_inputs(exclude_blocks="Block 0, block_1") is True


def test_families_point_to_the_right_node(t2v):
    with pytest.raises(ValueError, match="SVD Temporal RefDrop"):
        apply(tiny_models.tiny_unet("svd_light"))
    with pytest.raises(ValueError, match="Apply RefDrop"):
        apply(tiny_models.tiny_unet("sd15"))
    with pytest.raises(ValueError, match="'Temporal RefDrop'"):
        SVDTemporalRefDrop.execute(t2v, 0.2, 0, 0.0, 1.0)
    with pytest.raises(ValueError, match="'Temporal RefDrop'"):
        ApplyRefDrop.execute(t2v, 0.3, 1, False, "", "")


def test_the_input_model_is_not_changed(t2v):
    before = dict(t2v.model_options.get("transformer_options", {}))
    apply(t2v)
    assert t2v.model_options.get("transformer_options", {}) == before


# ---- ComfyUI's real sampler ----------------------------------------------------------------------------


def conditioning(variant, frames=3, size=8):
    g = torch.Generator().manual_seed(5)
    text = torch.randn(1, 9, tiny_wan.TEXT_DIM, generator=g)
    extra = {}
    if variant == "i2v":
        embeds = torch.randn(1, 257, tiny_wan.CLIP_VISION_WIDTH, generator=g)
        extra["clip_vision_output"] = types.SimpleNamespace(penultimate_hidden_states=embeds)
    if variant in ("i2v", "i2v_22"):
        extra["concat_latent_image"] = torch.randn(1, 16, frames, size, size, generator=g)
        mask = torch.ones(1, 1, frames, size, size)
        mask[:, :, 0] = 0.0
        extra["concat_mask"] = mask
    return [[text, dict(extra)]], [[torch.zeros_like(text), dict(extra)]]


def sample(model, variant="t2v", cfg=5.0, steps=3, frames=3, size=8, **phase):
    positive, negative = conditioning(variant, frames, size)
    latent = torch.zeros(1, tiny_wan.latent_channels(variant), frames, size, size)
    noise = phase.pop("noise", None)
    if noise is None:
        noise = comfy.sample.prepare_noise(latent, 9)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive, negative, latent, seed=9,
                               disable_pbar=True, **phase)  # fmt: skip


@pytest.mark.parametrize("variant", ["t2v", "i2v", "ti2v_5b"])
@pytest.mark.parametrize("cfg", [1.0, 5.0])
def test_real_sampler(variant, cfg):
    model = tiny_wan.tiny_wan(variant)
    plain = sample(model, variant, cfg=cfg)
    guided = sample(apply(model, strength=0.3), variant, cfg=cfg)
    assert torch.isfinite(guided).all()
    assert (guided - plain).abs().mean() > 1e-4


def test_strength_zero_is_bit_identical(i2v):
    assert torch.equal(sample(apply(i2v, strength=0.0), "i2v"), sample(i2v, "i2v"))


def test_step_window(t2v):
    plain = sample(t2v, steps=4)
    everywhere = sample(apply(t2v, strength=0.3), steps=4)
    late = sample(apply(t2v, strength=0.3, start_percent=0.6), steps=4)
    never = sample(apply(t2v, strength=0.3, start_percent=1.0, end_percent=1.0), steps=4)
    assert torch.equal(never, plain)
    assert (late - plain).abs().mean() > 1e-5 and (late - everywhere).abs().mean() > 1e-5


def two_experts(high, low, steps=4, switch=2):
    """Wan 2.2 14B as in ComfyUI's template: KSamplerAdvanced (high, 0..switch, leftover noise), then (low, switch..)."""
    latent = torch.zeros(1, 16, 3, 8, 8)
    first = sample(high, "i2v_22", steps=steps, noise=comfy.sample.prepare_noise(latent, 9), start_step=0,
                   last_step=switch, force_full_denoise=False)  # fmt: skip
    positive, negative = conditioning("i2v_22")
    return comfy.sample.sample(low, torch.zeros_like(latent), steps, 5.0, "euler", "simple", positive, negative, first,
                               start_step=switch, last_step=10000, force_full_denoise=True, disable_noise=True,
                               seed=9, disable_pbar=True)  # fmt: skip


def test_two_expert_wan22_with_the_node_on_each_model():
    high, low = tiny_wan.tiny_wan("i2v_22", seed=0), tiny_wan.tiny_wan("i2v_22", seed=1)
    plain = two_experts(high, low)
    guided = two_experts(apply(high), apply(low))
    high_only = two_experts(apply(high), low)
    low_only = two_experts(high, apply(low))
    assert torch.isfinite(guided).all()
    for other in (plain, high_only, low_only):
        assert (guided - other).abs().mean() > 1e-5  # each expert's node acts in its own part of the schedule
    assert (high_only - plain).abs().mean() > 1e-5 and (low_only - plain).abs().mean() > 1e-5
