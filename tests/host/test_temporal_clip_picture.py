"""Temporal RefDrop with a picture as the clip's reference, on ComfyUI's real Wan models (tiny, random weights).

One model call, made as the sampler makes it, is recorded from outside the pack: every self-attention call
(a recording override chained outside the pack's) and the inputs of every forward (an APPLY_MODEL wrapper inside
the pack's). The picture forward must receive x_ref written out here (VAE Encode of the picture, common_upscale,
comfy.sample.prepare_noise, process_latent_in, noise_scaling at each chunk's first row's sigma) with each chunk's
first row's conditioning; every clip self-attention output must equal the direct float64 computation of Eq. 5 on
the rows stacked (clip rows + picture rows, picture keys padded and masked): every video token of every frame
toward the picture row of its chunk, with the keys/values that row had at the same call of the picture forward.
"""

from __future__ import annotations

import logging
import types

import comfy.latent_formats
import comfy.patcher_extension
import comfy.sample
import comfy.sd
import comfy.supported_models
import comfy.utils
import pytest
import torch
from comfy.taesd.taehv import TAEHV
from refguide.comfy_patches.dit_override import EXTRA_CALL_KEY, OVERRIDE_KEY, patch_dit
from refguide.comfy_patches.model_families import model_family
from refguide.comfy_patches.refdrop.clip_picture import (
    ClipPictureRows,
    PictureReferencePolicy,
    _first_rows,
    add_outermost,
)
from refguide.comfy_patches.step_window import EVERY_STEP
from refguide.nodes.video_dit import TemporalRefDrop
from refguide_testing import reference, tiny_dits, tiny_models, tiny_video_dits, tiny_wan

torch.set_num_threads(1)

SEED, C = 5, 0.4
FRAMES, SIZE, TEXT_TOKENS = 3, 8, 7  # a 3-frame 8x8 latent: 16 tokens a frame (2x2 patches), 48 a clip
APPLY_MODEL = comfy.patcher_extension.WrappersMP.APPLY_MODEL


def apply(model, image, vae, strength=C, seed=SEED, start_percent=0.0, end_percent=1.0, exclude_blocks=""):
    return TemporalRefDrop.execute(model, strength, 0, start_percent, end_percent, exclude_blocks, image, vae,
                                   seed).args[0]  # fmt: skip


@pytest.fixture(scope="module")
def t2v():
    return tiny_wan.tiny_wan("t2v", seed=0)


@pytest.fixture(scope="module")
def vae():
    return tiny_wan.tiny_wan_vae()


@pytest.fixture(scope="module")
def picture():
    return torch.rand(1, 80, 112, 3, generator=torch.Generator().manual_seed(11))  # a 10x14 latent


def bind(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False, **kwargs):
    return q, k, v, heads, mask, skip_reshape


def recording(patched):
    """Every self-attention call (q, k of one sequence) with the chain's output and the plain attention; q/k/v
    and the output in the (B, L, heads*d) layout."""
    options = patched.model_options["transformer_options"]
    pack, calls = options[OVERRIDE_KEY], []

    def recorder(func, *args, **kwargs):
        out = pack(func, *args, **kwargs)
        q, k, v, heads, mask, skip_reshape = bind(*args, **kwargs)
        call_options = kwargs.get("transformer_options") or {}
        axis = 2 if skip_reshape else 1
        if not call_options.get(EXTRA_CALL_KEY) and q.shape[axis] == k.shape[axis] and q.shape[0] == k.shape[0]:
            flat = [x.transpose(1, 2).flatten(2) if skip_reshape else x for x in (q, k, v)]
            block = (call_options.get("block_type"), call_options.get("block_index"))
            calls.append(types.SimpleNamespace(q=flat[0], k=flat[1], v=flat[2], heads=heads, mask=mask, block=block,
                                               out=out.detach().clone(), plain=func(*args, **kwargs)))  # fmt: skip
        return out

    options[OVERRIDE_KEY] = recorder
    return calls


def recording_inputs(patched):
    """The inputs of every forward the model call runs (an APPLY_MODEL wrapper added last: inside the pack's)."""
    seen = []

    def wrapper(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kw):
        seen.append(types.SimpleNamespace(x=x.clone(), t=t.clone(), context=c_crossattn.clone(), kw=dict(kw)))
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kw)

    patched.add_wrapper_with_key(APPLY_MODEL, "test_forward_inputs", wrapper)
    return seen


def model_call(patcher, x, context, sigmas, order, **extras):
    """One model call as the sampler makes it: extra_conds / process_cond, apply_model with the clone's wrappers."""
    conds = patcher.model.extra_conds(noise=x, device=x.device, cross_attn=context, **extras)
    kwargs = {key: cond.process_cond(batch_size=x.shape[0], area=None).cond for key, cond in conds.items()}
    options = dict(patcher.model_options.get("transformer_options", {}), cond_or_uncond=list(order))
    options["wrappers"] = comfy.patcher_extension.copy_nested_dicts(patcher.wrappers)
    with torch.no_grad():
        return patcher.model.apply_model(x, sigmas, transformer_options=options, **kwargs)


def noised_picture(model, vae, image, height, width, sigmas):
    """x_ref written out: VAE Encode (one frame), common_upscale, prepare_noise, process_latent_in, noise_scaling."""
    base = model.model
    z = vae.encode(image)  # (1, C, 1, h, w): the picture as a one-frame clip
    assert z.shape[2] == 1
    z = comfy.utils.common_upscale(z[:, :, 0], width, height, "bilinear", "center").unsqueeze(2)
    eps = comfy.sample.prepare_noise(z, SEED)
    clean = base.process_latent_in(z)
    return torch.cat([base.model_sampling.noise_scaling(sigma.reshape(1), eps, clean) for sigma in sigmas])


def padded(x, tokens):
    return torch.cat([x, x.new_zeros(x.shape[0], tokens - x.shape[1], x.shape[2])], 1)


def expected_clip_output(clip, picture_call, c, per_chunk, video_tokens=None):
    """Eq. 5 with the picture as reference, direct in float64 on the rows stacked: clip rows, then picture rows
    (every token of the picture row is a key: its video and its text). Only the clip's last ``video_tokens``
    tokens (its video; None: all) are guided."""
    rows, tokens = clip.q.shape[:2]
    picture_tokens = picture_call.k.shape[1]
    video_start = tokens - (tokens if video_tokens is None else video_tokens)
    big_q = torch.cat([clip.q, clip.q.new_zeros(picture_call.k.shape[0], tokens, clip.q.shape[2])]).double()
    big_k = torch.cat([clip.k, padded(picture_call.k, tokens)]).double()
    big_v = torch.cat([clip.v, padded(picture_call.v, tokens)]).double()
    mask = torch.zeros(big_q.shape[0], tokens, dtype=torch.float64)
    mask[rows:, picture_tokens:] = -torch.inf  # the padding is no key of the picture row

    def guidance(b, t):
        return [(rows + b // per_chunk, None, c)] if b < rows and t >= video_start else []

    return reference.direct_guidance(big_q, big_k, big_v, clip.heads, guidance, "flat", mask)[:rows]


@pytest.mark.parametrize("order", [(1, 0), (0,)])
def test_one_model_call_guides_every_frame_toward_its_chunks_picture_row(t2v, vae, picture, order):
    per_chunk = 2
    rows = per_chunk * len(order)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(rows, 16, FRAMES, SIZE, SIZE, generator=g)
    context = torch.randn(rows, TEXT_TOKENS, tiny_wan.TEXT_DIM, generator=g)  # every row its own conditioning
    chunk_sigmas = torch.tensor([0.7, 0.4])[: len(order)]
    sigmas = chunk_sigmas.repeat_interleave(per_chunk)
    patched = apply(t2v, picture, vae)
    calls = recording(patched)
    inputs = recording_inputs(patched)
    out = model_call(patched, x, context, sigmas, order)

    assert out.shape == x.shape
    assert len(inputs) == 2  # the picture forward, then the clips' forward
    picture_in, clip_in = inputs
    expected_x = noised_picture(t2v, vae, picture, SIZE, SIZE, chunk_sigmas)
    assert picture_in.x.shape == (len(order), 16, 1, SIZE, SIZE)
    torch.testing.assert_close(picture_in.x, expected_x, rtol=1e-6, atol=1e-6)
    assert torch.equal(picture_in.t, chunk_sigmas)
    assert torch.equal(picture_in.context, context[::per_chunk])  # each chunk's first row's conditioning
    assert torch.equal(clip_in.x, x) and torch.equal(clip_in.context, context)

    per_frame = (SIZE // 2) ** 2
    pictures = [call for call in calls if call.q.shape[1] == per_frame]
    clips = [call for call in calls if call.q.shape[1] == FRAMES * per_frame]
    assert len(pictures) == len(clips) == 2 and len(calls) == 4  # one self-attention per block and forward
    for picture_call in pictures:  # the picture forward runs plain
        assert picture_call.q.shape[0] == len(order) and torch.equal(picture_call.out, picture_call.plain)
    for clip in clips:
        picture_call = next(call for call in pictures if call.block == clip.block)  # that forward's same call
        expected = expected_clip_output(clip, picture_call, C, per_chunk)
        torch.testing.assert_close(clip.out.double(), expected, rtol=2e-4, atol=2e-4)
        assert (clip.out - clip.plain).abs().max() > 1e-3  # guided
    plain = model_call(t2v, x, context, sigmas, order)
    assert (out - plain).abs().mean() > 1e-5 * plain.abs().mean()


def test_excluded_blocks_stay_plain_in_both_forwards(t2v, vae, picture):
    patched = apply(t2v, picture, vae, exclude_blocks="block 0")
    calls = recording(patched)
    g = torch.Generator().manual_seed(4)
    x, context = torch.randn(2, 16, FRAMES, SIZE, SIZE, generator=g), torch.randn(2, TEXT_TOKENS, 64, generator=g)
    model_call(patched, x, context, torch.full((2,), 0.6), (0,))
    clips = {call.block: call for call in calls if call.q.shape[1] == FRAMES * (SIZE // 2) ** 2}
    first, second = clips[("double", 0)], clips[("double", 1)]  # Wan's blocks: block_type "double", index i
    assert torch.equal(first.out, first.plain) and not torch.equal(second.out, second.plain)


def sample(model, cfg=3.0, steps=2, seed=7, noise_mask=None, channels=16):
    shape = (1, channels, FRAMES, SIZE, SIZE)
    g = torch.Generator().manual_seed(2)
    positive = [[torch.randn(1, TEXT_TOKENS, tiny_wan.TEXT_DIM, generator=g), {}]]
    negative = [[torch.randn(1, TEXT_TOKENS, tiny_wan.TEXT_DIM, generator=g), {}]]
    latent = torch.zeros(shape)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive, negative, latent,
                               noise_mask=noise_mask, seed=seed, disable_pbar=True)  # fmt: skip


def test_real_sampler_with_cfg_gives_each_chunk_its_own_picture_row(t2v, vae, picture):
    patched = apply(t2v, picture, vae)
    inputs = recording_inputs(patched)
    guided = sample(patched)
    assert guided.shape == (1, 16, FRAMES, SIZE, SIZE) and torch.isfinite(guided).all()  # the clip, no picture row
    assert len(inputs) == 4  # two steps, each: picture forward, then the clips (cond and uncond in one call)
    for picture_in, clip_in in (inputs[0:2], inputs[2:4]):
        assert picture_in.x.shape == (2, 16, 1, SIZE, SIZE) and clip_in.x.shape == (2, 16, FRAMES, SIZE, SIZE)
        assert torch.equal(picture_in.context, clip_in.context)  # one row a chunk: that chunk's conditioning
        assert not torch.equal(picture_in.context[0], picture_in.context[1])  # positive and negative prompts
        assert torch.equal(picture_in.t, clip_in.t)
    expected = noised_picture(t2v, vae, picture, SIZE, SIZE, inputs[2].t)
    torch.testing.assert_close(inputs[2].x, expected, rtol=1e-6, atol=1e-6)
    plain = sample(t2v)
    assert (guided - plain).abs().mean() > 1e-4 * plain.abs().mean()


def test_strength_zero_is_bit_identical(t2v, vae, picture):
    assert torch.equal(sample(apply(t2v, picture, vae, strength=0.0)), sample(t2v))


def test_outside_the_step_window_no_picture_forward_runs(t2v, vae, picture):
    patched = apply(t2v, picture, vae, start_percent=0.5)
    inputs = recording_inputs(patched)
    sample(patched, steps=4)
    frames = [seen.x.shape[2] for seen in inputs]
    assert frames[:2] == [FRAMES, FRAMES] and frames[-2:] == [1, FRAMES]  # the first steps without, the last with
    assert frames.count(FRAMES) == 4 and 0 < frames.count(1) < 4


def test_a_frame_reference_node_applied_before_still_guides_the_clips(t2v, vae, picture, caplog):
    frame_guided = TemporalRefDrop.execute(t2v, 0.3, 1, 0.0, 1.0, "").args[0]
    both = apply(frame_guided, picture, vae)
    inputs = recording_inputs(both)
    with caplog.at_level(logging.WARNING):
        out = sample(both)
    assert len(inputs) == 4 and torch.isfinite(out).all()
    assert "Temporal RefDrop" not in caplog.text  # both nodes' calls were understood in both forwards
    assert not torch.equal(out, sample(apply(t2v, picture, vae))) and not torch.equal(out, sample(frame_guided))


def test_the_wan22_5b_takes_a_picture_and_its_start_image_mask_stays_with_the_clip(vae, picture):
    """The 5B (WAN22_T2V, TI2V) is text-to-video: accepted (the tiny Wan 2.1 VAE has the wrong channel count, so
    the node says so after accepting the model). Its start image is a denoise mask over the clip's frames,
    which the one-frame picture row does not take: a real sampler run with a noise mask."""
    model = tiny_wan.tiny_wan("ti2v_5b", seed=0)
    family = model_family(model).dit
    assert family.clip_picture_problem("WAN22_T2V", model.model.diffusion_model) is None
    with pytest.raises(ValueError, match="Temporal RefDrop: the VAE makes 16-channel latents but the model samples 48"):
        apply(model, picture, vae)
    mask = torch.ones(1, 1, FRAMES, SIZE, SIZE)
    mask[:, :, 0] = 0.0  # the first latent frame is the start image
    policy = PictureReferencePolicy(C, EVERY_STEP)  # the node's patch, with a 48-channel picture latent
    patched = patch_dit(model, family, policy)
    latent = torch.randn(1, 48, 1, 5, 7, generator=torch.Generator().manual_seed(1))
    add_outermost(patched, ClipPictureRows(policy, latent, SEED, EVERY_STEP))
    inputs = recording_inputs(patched)
    out = sample(patched, noise_mask=mask, channels=48)
    assert out.shape == (1, 48, FRAMES, SIZE, SIZE) and torch.isfinite(out).all()
    assert "denoise_mask" in inputs[1].kw and "denoise_mask" not in inputs[0].kw
    assert not torch.equal(out, sample(model, noise_mask=mask, channels=48))


# ---- refusals ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["i2v", "i2v_22"])
def test_image_to_video_models_are_refused_with_reference_frame_named(vae, picture, variant):
    model = tiny_wan.tiny_wan(variant, seed=0)
    with pytest.raises(ValueError, match=r"image-to-video Wan model \(its input takes 36 channels.*`reference_frame`"):
        apply(model, picture, vae)
    TemporalRefDrop.execute(model, 0.3, 0, 0.0, 1.0, "")  # without a picture the node works as before


def test_image_without_vae_is_a_clear_error(t2v, picture):
    with pytest.raises(ValueError, match="`image` is connected but `vae` is not"):
        apply(t2v, picture, None)


def test_a_vae_of_another_rank_is_refused(t2v, picture):
    with pytest.raises(ValueError, match=r"Temporal RefDrop: the VAE is a image \(2-D\) VAE but the model samples "
                                         r"video \(3-D\) latents"):  # fmt: skip
        apply(t2v, picture, tiny_dits.tiny_flux_vae())


def test_more_than_one_picture_and_a_second_picture_node_are_refused(t2v, vae, picture):
    with pytest.raises(ValueError, match="a batch of 2 pictures; the clip takes ONE picture"):
        apply(t2v, picture.repeat(2, 1, 1, 1), vae)
    with pytest.raises(ValueError, match="already has a picture reference from another Temporal RefDrop node"):
        apply(apply(t2v, picture, vae), picture, vae)


def test_other_wan_variants_are_not_text_to_video(t2v):
    family = model_family(t2v).dit
    assert family.clip_pictures and family.clip_picture_problem("WAN21_T2V", t2v.model.diffusion_model) is None
    problem = family.clip_picture_problem("WAN21_FlowRVS", t2v.model.diffusion_model)
    assert problem == "this Wan model (WAN21_FlowRVS) is not a text-to-video model"


# ---- HunyuanVideo 1.0 / 1.5 (joint [text; video] sequences) ------------------------------------------------------


def tiny_hunyuan_video15_vae():
    """A real comfy.sd.VAE for HunyuanVideo 1.5 latents (32 channels, 16x): ComfyUI's TAEHV (lighttae_hv15) class,
    random weights, loaded from its state dict as a file would be."""
    model = TAEHV(latent_channels=32, latent_format=comfy.latent_formats.HunyuanVideo15)
    return comfy.sd.VAE(sd=tiny_models.init_module_(model, 3, scale=0.5).state_dict())


HUNYUAN = {"hunyuan_video": tiny_wan.tiny_wan_vae, "hunyuan_video15": tiny_hunyuan_video15_vae}


@pytest.fixture(scope="module", params=list(HUNYUAN))
def hunyuan(request):
    name = request.param
    return name, tiny_video_dits.tiny_video_dit(name, seed=1), HUNYUAN[name]()


def test_hunyuan_video_picture_guides_the_video_tokens_toward_the_picture_row_and_its_text(hunyuan, picture):
    """Joint attention: the clip's video queries attend to the picture row's whole sequence (its text and its one
    frame); the clip's text tokens stay as computed."""
    name, model, vae = hunyuan
    entry = tiny_video_dits.ENTRIES[name]
    per_chunk, order = 2, (1, 0)
    rows = per_chunk * len(order)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(rows, entry.latent_channels, FRAMES, SIZE, SIZE, generator=g)
    context = torch.randn(rows, TEXT_TOKENS, entry.context_width, generator=g)
    extras = entry.conditioning_extras(rows, g)
    chunk_sigmas = torch.tensor([0.8, 0.5])
    sigmas = chunk_sigmas.repeat_interleave(per_chunk)
    patched = apply(model, picture, vae)
    calls = recording(patched)
    inputs = recording_inputs(patched)
    out = model_call(patched, x, context, sigmas, order, **extras)
    assert out.shape == x.shape and len(inputs) == 2
    torch.testing.assert_close(inputs[0].x, noised_picture(model, vae, picture, SIZE, SIZE, chunk_sigmas),
                               rtol=1e-6, atol=1e-6)  # fmt: skip
    assert torch.equal(inputs[0].context, context[::per_chunk])
    per_frame = (SIZE // 2) ** 2
    blocks = [call for call in calls if call.q.shape[1] >= per_frame]  # not the token refiner (text only)
    pictures = [call for call in blocks if call.q.shape[0] == len(order)]
    clips = [call for call in blocks if call.q.shape[0] == rows]
    assert len(pictures) == len(clips) == entry.self_calls
    for clip in clips:
        picture_call = next(call for call in pictures if call.block == clip.block)
        assert picture_call.q.shape[1] == clip.q.shape[1] - (FRAMES - 1) * per_frame  # same text, one frame
        expected = expected_clip_output(clip, picture_call, C, per_chunk, video_tokens=FRAMES * per_frame)
        torch.testing.assert_close(clip.out.double(), expected, rtol=2e-4, atol=2e-4)
        text = clip.q.shape[1] - FRAMES * per_frame
        assert torch.equal(clip.out[:, :text], clip.plain[:, :text])


def test_hunyuan_video15_with_a_start_image_is_refused_when_sampled(picture):
    model = tiny_video_dits.tiny_video_dit("hunyuan_video15", seed=1)
    entry = tiny_video_dits.ENTRIES["hunyuan_video15"]
    patched = apply(model, picture, tiny_hunyuan_video15_vae())
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 32, FRAMES, SIZE, SIZE, generator=g)
    extras = entry.conditioning_extras(2, g)
    start = torch.zeros(1, 32, FRAMES, SIZE, SIZE)  # HunyuanVideo15ImageToVideo's concat_latent_image: frame 0
    start[:, :, 0] = torch.randn(1, 32, SIZE, SIZE, generator=g)
    with pytest.raises(ValueError, match=r"conditioned on a start image .* use\s+`reference_frame`"):
        model_call(patched, x, torch.randn(2, TEXT_TOKENS, 32, generator=g), torch.full((2,), 0.7), (0,),
                   concat_latent_image=start, **extras)  # fmt: skip


@pytest.mark.parametrize("config,in_channels", [("HunyuanVideoI2V", 33), ("HunyuanVideoSkyreelsI2V", 32)])
def test_hunyuan_video_image_to_video_models_are_refused(picture, config, in_channels):
    model_config = getattr(comfy.supported_models, config)(
        dict(tiny_video_dits.TINY_HUNYUAN_VIDEO, in_channels=in_channels)
    )
    model_config.set_inference_dtype(torch.float32, None)
    model = tiny_models._patcher(model_config.get_model({}))
    with pytest.raises(ValueError, match=r"image-to-video HunyuanVideo model .*`reference_frame`"):
        apply(model, picture, tiny_wan.tiny_wan_vae())


def test_hunyuan_video_real_sampler_with_cfg(hunyuan, picture):
    name, model, vae = hunyuan
    entry = tiny_video_dits.ENTRIES[name]
    shape = (1, entry.latent_channels, FRAMES, SIZE, SIZE)
    g = torch.Generator().manual_seed(8)
    positive = [[torch.randn(1, TEXT_TOKENS, entry.context_width, generator=g), entry.conditioning_extras(1, g)]]
    negative = [[torch.randn(1, TEXT_TOKENS, entry.context_width, generator=g), entry.conditioning_extras(1, g)]]
    noise = torch.randn(shape, generator=g)

    def run(patcher):
        return comfy.sample.sample(patcher, noise, 2, 3.0, "euler", "simple", positive, negative, torch.zeros(shape),
                                   seed=8, disable_pbar=True)  # fmt: skip

    patched = apply(model, picture, vae)
    inputs = recording_inputs(patched)
    guided = run(patched)
    assert guided.shape == shape and torch.isfinite(guided).all() and len(inputs) == 4
    assert all(seen.x.shape[0] == 2 for seen in inputs)  # cond and uncond: two picture rows, two clips
    assert (guided - run(model)).abs().mean() > 1e-4 * guided.abs().mean()


def test_video_families_without_picture_support_say_so(picture, vae):
    model = tiny_video_dits.tiny_video_dit("cogvideox_t2v", seed=1)
    assert not model_family(model).dit.clip_pictures
    with pytest.raises(
        ValueError, match=r"CogVideoX models do not take a picture as the clip's reference.*`reference_frame`"
    ):
        apply(model, picture, vae)


def test_picture_rows_take_each_chunks_first_row_of_per_row_inputs():
    rows, chunks = 4, 2
    per_row, shared = torch.arange(rows * 3.0).reshape(rows, 3), torch.ones(1, 5)
    taken = _first_rows([per_row, shared, 7, None], rows, chunks, "ref_latents")
    assert torch.equal(taken[0], per_row[[0, 2]]) and taken[1] is shared and taken[2:] == [7, None]
    assert _first_rows(torch.tensor(2.0), rows, chunks, "scale").ndim == 0
    with pytest.raises(ValueError, match=r"Temporal RefDrop: the model input 'guidance' of shape \(3,\) has no row"):
        _first_rows(torch.ones(3), rows, chunks, "guidance")
