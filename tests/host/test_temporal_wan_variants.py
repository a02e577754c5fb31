"""Temporal RefDrop on Wan's variants (tiny real instances of ComfyUI's classes, ComfyUI's real sampler): where each
variant's video tokens sit among its reference / motion / pose tokens (those are keys and values of frame r,
never guided queries), and which of its extra attention calls stay plain (VACE blocks, HuMo's audio
cross-attention; S2V's audio injector, Animate's face adapter and WanDancer's music never reach the override).
"""

from __future__ import annotations

import logging
import types

import comfy.sample
import comfy.supported_models as configs
import pytest
import torch
from refguide.comfy_patches import coverage, dit_families, model_families
from refguide.comfy_patches.dit_override import OVERRIDE_KEY
from refguide.nodes.refdrop import ApplyRefDrop
from refguide.nodes.video_dit import TemporalRefDrop
from refguide_testing import reference, tiny_video_dits, tiny_wan
from refguide_testing import tiny_wan_variants as wv

C, TEXT_TOKENS, FRAMES = 0.3, 7, 3


def apply(model, strength=C, reference_frame=0, exclude_blocks=""):
    return TemporalRefDrop.execute(model, strength, reference_frame, 0.0, 1.0, exclude_blocks).args[0]


class Recorder:
    """The outermost override: every attention call that reaches ComfyUI's override, with the chain's output and
    the plain backend output of the same call."""

    def __init__(self, inner):
        self.inner, self.log = inner, []

    def __call__(self, func, q, k, v, heads, **kwargs):
        out = self.inner(func, q, k, v, heads, **kwargs) if self.inner else func(q, k, v, heads, **kwargs)
        plain = func(q, k, v, heads, **kwargs)
        block = kwargs["transformer_options"].get("block_index")
        self.log.append(types.SimpleNamespace(q=q, k=k, v=v, heads=heads, out=out.clone(), plain=plain, block=block,
                                              skip_reshape=kwargs.get("skip_reshape", False)))  # fmt: skip
        return out


def recorded(patcher):
    clone = patcher.clone()
    options = clone.model_options.setdefault("transformer_options", {})
    recorder = Recorder(options.get(OVERRIDE_KEY))
    options[OVERRIDE_KEY] = recorder
    return clone, recorder


def sample(model, conds=None, frames=FRAMES, size=4, batch=2, cfg=1.0):
    """One step of ComfyUI's sampler on a (batch, 16, frames, size, size) latent with ``conds`` on both prompts."""
    g = torch.Generator().manual_seed(3)
    shape = (batch, 16, frames, size, size)
    extras = conds(1, g) if conds else {}
    positive = [[torch.randn(batch, TEXT_TOKENS, tiny_wan.TEXT_DIM, generator=g), dict(extras)]]
    negative = [[torch.randn(1, TEXT_TOKENS, tiny_wan.TEXT_DIM, generator=g), dict(extras)]]
    noise = torch.randn(shape, generator=g)
    return comfy.sample.sample(model, noise, 1, cfg, "euler", "simple", positive, negative, torch.zeros(shape), seed=3,
                               disable_pbar=True)  # fmt: skip


def self_attention(log):
    """The recorded calls whose queries and keys are one sequence (Wan's self-attention)."""
    return [c for c in log if not c.skip_reshape and c.q.shape[:2] == c.k.shape[:2]]


def assert_temporal_eq5(call, video_start, frames, frame_tokens, reference_frame=0):
    """Eq. 5, temporal form, in float64: the video tokens of frames t != r get c Attn(Q_t, K_r, V_r) + (1-c) X_t,
    where K_r, V_r are frame r's tokens plus every non-video token of the row; every other token is exactly the
    plain attention's."""
    tokens = call.q.shape[1]
    video = range(video_start, video_start + frames * frame_tokens)
    frame_r = range(video_start + reference_frame * frame_tokens, video_start + (reference_frame + 1) * frame_tokens)
    keys = [t for t in range(tokens) if t in frame_r or t not in video]

    def guidance(b, t):
        return [(b, keys, C)] if t in video and t not in frame_r else []

    expected = reference.direct_guidance(call.q.double(), call.k.double(), call.v.double(), call.heads, guidance)
    torch.testing.assert_close(call.out.double(), expected, rtol=2e-4, atol=2e-4)
    unguided = [t for t in range(tokens) if t not in video or t in frame_r]
    assert torch.equal(call.out[:, unguided], call.plain[:, unguided])
    assert (call.out - call.plain).abs().max() > 1e-5, "the guided frames did not change"


def test_every_wan_configuration_has_a_family_or_a_refusal():
    table = coverage.coverage()
    expected = {
        "WAN21_T2V": "Wan 2.1 / 2.2", "WAN21_I2V": "Wan 2.1 / 2.2", "WAN22_T2V": "Wan 2.1 / 2.2",
        "WAN21_FunControl2V": "Wan 2.1 / 2.2", "WAN21_FlowRVS": "Wan 2.1 / 2.2", "WAN21_Vace": "Wan 2.1 VACE",
        "WAN21_Camera": "Wan Camera", "WAN22_Camera": "Wan Camera", "WAN22_S2V": "Wan 2.2 S2V",
        "WAN21_HuMo": "Wan HuMo", "WAN22_Animate": "Wan 2.2 Animate", "WAN21_SCAIL": "Wan SCAIL",
        "WAN21_SCAIL2": "Wan SCAIL", "WAN22_WanDancer": "WanDancer",
    }  # fmt: skip
    hosted = {cls.__name__ for cls in configs.models if cls.__name__.startswith("WAN")}
    assert hosted == set(expected) | {"WAN21_CausalAR_T2V"}
    assert {name: table[name].family for name in expected} == expected
    assert "transformer_options" in table["WAN21_CausalAR_T2V"].refused


def test_s2v_reference_and_motion_tokens_are_keys_only_and_audio_never_reaches_the_override():
    model = tiny_video_dits.tiny_video_dit("wan_s2v", seed=1)
    patched, recorder = recorded(apply(model))
    sample(patched, wv.s2v_motion_conds, size=8)  # 3 frames of 4x4 tokens, then reference and FramePack motion
    assert len(recorder.log) == 2 * 2  # per block: self-attention, text cross-attention (the audio injector: none)
    calls = self_attention(recorder.log)
    assert len(calls) == 2 and calls[0].q.shape[1] > FRAMES * 16 + 16  # appended reference frame + motion tokens
    for call in calls:
        assert_temporal_eq5(call, 0, FRAMES, 16)
    for call in recorder.log:
        if all(call is not guided for guided in calls):  # the text cross-attention
            assert torch.equal(call.out, call.plain)
    silent = dict(wv.s2v_motion_conds(1, torch.Generator().manual_seed(3)))
    silent["audio_embed"] = torch.zeros_like(silent["audio_embed"])
    assert not torch.equal(sample(model, lambda rows, g: silent, size=8), sample(model, wv.s2v_motion_conds, size=8))


def test_humo_reference_frame_is_keys_only_and_audio_cross_attention_untouched(caplog):
    model = tiny_video_dits.tiny_video_dit("wan_humo", seed=1)
    patched, recorder = recorded(apply(model, reference_frame=2))
    with caplog.at_level(logging.WARNING):
        sample(patched, wv.humo_conds)
    assert not [r for r in caplog.records if "Temporal RefDrop" in r.getMessage()]  # every call is understood
    audio = [c for c in recorder.log if c.skip_reshape]
    assert len(recorder.log) == 2 * 3 and len(audio) == 2  # per block: self, text, audio cross-attention
    for call in audio:
        assert call.k.shape[2] == 16 and torch.equal(call.out, call.plain)
    calls = self_attention(recorder.log)
    assert [c.q.shape[1] for c in calls] == [(FRAMES + 1) * 4] * 2  # the video, then the reference frame
    for call in calls:
        assert_temporal_eq5(call, 0, FRAMES, 4, reference_frame=2)


def two_control_videos(rows, generator):
    one, two = wv.vace_conds(rows, generator), wv.vace_conds(rows, generator)
    return {key: one[key] + two[key] for key in one}


def test_vace_blocks_are_named_and_stay_plain(caplog):
    model = tiny_video_dits.tiny_video_dit("wan_vace", seed=1)
    family = dit_families.dit_family(model)
    assert model_families.model_family(model).block_names == ("block 0", "block 1")
    # after main block 0: VACE block 0 once per control video (self-attention, text cross-attention)
    sites = [family.call_site(("double", 0), ordinal, None) for ordinal in range(6)]
    assert [(s.label, s.self_attention, s.problem) for s in sites] == [
        ("block 0", True, None), ("block 0", False, None), *[("vace block 0", False, None)] * 4
    ]  # fmt: skip
    assert family.call_site(("double", 1), 2, None).problem  # main block 1 has no VACE block after it
    patched, recorder = recorded(apply(model))
    with caplog.at_level(logging.WARNING):
        sample(patched, two_control_videos)
    assert not [r for r in caplog.records if "Temporal RefDrop" in r.getMessage()]
    assert [c.block for c in recorder.log] == [0] * 6 + [1] * 2
    main, vace = [recorder.log[0], recorder.log[6]], recorder.log[2:6]
    for call in main:
        assert_temporal_eq5(call, 0, FRAMES, 4)
    for call in [recorder.log[1], *vace, recorder.log[7]]:
        assert torch.equal(call.out, call.plain)
    with pytest.raises(ValueError, match=r"'vace block 0' is not a block of this Wan 2.1 VACE model. Valid names"):
        apply(model, exclude_blocks="vace block 0")


def face_video(rows, generator):
    """WanAnimateToVideo's face crops: one 512 x 512 frame (the motion encoder's fixed input size), in [-1, 1]."""
    pixels = torch.rand(1, 3, 1, 512, 512, generator=generator) * 2 - 1
    return dict(wv.animate_conds(rows, generator), face_video_pixels=pixels)


def test_animate_reference_picture_frame_is_keys_only_and_the_face_adapter_never_reaches_the_override():
    model = wv.tiny_wan_variant(configs.WAN22_Animate, dict(wv.TINY_ANIMATE, num_layers=5), seed=1)  # 1 face block
    patched, recorder = recorded(apply(model))
    with_face = sample(patched, face_video, frames=1 + FRAMES, batch=1)  # latent frame 0: the character picture
    assert len(recorder.log) == 5 * 3  # per block: self, CLIP-image and text cross-attention (face adapter: none)
    calls = self_attention(recorder.log)
    assert len(calls) == 5
    for call in calls:
        assert_temporal_eq5(call, 4, FRAMES, 4)  # video frames 1..3; frame 0's tokens are keys only
    assert not torch.equal(with_face, sample(apply(model), wv.animate_conds, frames=1 + FRAMES, batch=1))


def test_animate_latent_of_the_picture_alone_runs_plain_with_one_warning(caplog):
    model = tiny_video_dits.tiny_video_dit("wan_animate", seed=1)
    with caplog.at_level(logging.WARNING):
        guided = sample(apply(model), frames=1)
    assert torch.equal(guided, sample(model, frames=1))
    warnings = [r.getMessage() for r in caplog.records if "Temporal RefDrop" in r.getMessage()]
    assert len(warnings) == 1 and "0 video latent frames" in warnings[0]


def two_references(rows, generator):
    """SCAIL-2 multi-reference: two reference pictures (stacked in front of the video, the primary one last)."""
    conds = wv.scail_conds(rows, generator)
    return dict(conds, reference_latents=[wv.latent(generator, frames=1), *conds["reference_latents"]])


def test_scail_reference_frames_are_in_front_and_pose_tokens_after():
    model = tiny_video_dits.tiny_video_dit("wan_scail2", seed=1)
    patched, recorder = recorded(apply(model, reference_frame=1))
    sample(patched, two_references)
    calls = self_attention(recorder.log)
    assert [c.q.shape[1] for c in calls] == [2 * 4 + FRAMES * 4 + FRAMES] * 2  # references, video, pose tokens
    for call in calls:
        assert_temporal_eq5(call, 2 * 4, FRAMES, 4, reference_frame=1)


@pytest.mark.parametrize("with_reference", [True, False])
def test_wan_ref_conv_reference_is_in_front_only_when_given(with_reference):
    model = tiny_video_dits.tiny_video_dit("wan_fun_reference", seed=1)
    patched, recorder = recorded(apply(model))
    sample(patched, wv.reference_picture_conds if with_reference else None)
    for call in self_attention(recorder.log):
        assert_temporal_eq5(call, 4 if with_reference else 0, FRAMES, 4)


def music(rows, generator):
    """WanDancer's music features (35 per audio frame) and the start frame's CLIP image."""
    return dict(wv.wandancer_conds(rows, generator), audio_embed=torch.randn(1, 24, 35, generator=generator))


def test_wandancer_music_never_reaches_the_override():
    model = tiny_video_dits.tiny_video_dit("wandancer", seed=1)
    patched, recorder = recorded(apply(model))
    sample(patched, music, size=8)  # the music injector splits each frame's 16 tokens into 8 groups
    assert len(recorder.log) == 2 * 3  # per block: self, CLIP-image, text (music encoder and injector: none)
    for call in self_attention(recorder.log):
        assert_temporal_eq5(call, 0, FRAMES, 16)
    assert not torch.equal(sample(model, music, size=8), sample(model, wv.wandancer_conds, size=8))


def test_causal_ar_wan_is_refused_because_its_blocks_run_without_transformer_options():
    model = wv.tiny_wan_variant(configs.WAN21_CausalAR_T2V, wv.TINY_CAUSAL_AR)
    reason = r"calls the blocks without transformer_options, so ComfyUI's attention override never sees"
    with pytest.raises(ValueError, match=rf"Temporal RefDrop does not work with WAN21_CausalAR_T2V models: .*{reason}"):
        apply(model)
    with pytest.raises(ValueError, match=reason):
        ApplyRefDrop.execute(model, 0.3, 1, False, "", "")
    # the reason, verified: with the autoregressive sampler's ar_state no attention call reaches an override
    diffusion_model, autoregressive = model.model.diffusion_model, []

    def override(func, *args, **kwargs):
        autoregressive.append("ar_state" in kwargs["transformer_options"])
        return func(*args, **kwargs)

    x, t, context = torch.randn(1, 16, 2, 4, 4), torch.full((1,), 0.5), torch.randn(1, 7, tiny_wan.TEXT_DIM)
    ar_state = {"start_frame": 0, "kv_caches": diffusion_model.init_kv_caches(1, 8, "cpu", torch.float32),
                "crossattn_caches": diffusion_model.init_crossattn_caches(1, "cpu", torch.float32)}  # fmt: skip
    for options in ({OVERRIDE_KEY: override}, {OVERRIDE_KEY: override, "ar_state": ar_state}):
        with torch.no_grad():
            diffusion_model(x, t, context, transformer_options=options)
    assert autoregressive and not any(autoregressive)  # calls reached the override without ar_state, none with it
