"""Apply RefDrop (Reference Image) on real ComfyUI UNets (tiny, random weights) and ComfyUI's real sampler."""

from __future__ import annotations

import comfy.patcher_extension
import comfy.sample
import comfy.utils
import pytest
import torch
from refguide.comfy_patches.attention_calls import FallbackNotice, plain_attention
from refguide.comfy_patches.refdrop.settings import RefDropSettings
from refguide.comfy_patches.refdrop.unet import RefDropAttention, ReferenceImageAttention
from refguide.comfy_patches.reference_rows import REFERENCE_MASKS_KEY, REFERENCE_ROWS_KEY
from refguide.nodes.refdrop import ApplyRefDrop, ApplyRefDropImage
from refguide_testing import model_calls, reference, tiny_models
from refguide_testing.model_calls import in_front, model_call, own_rows

CONTEXT = 2048
SEED = 123


@pytest.fixture(scope="module")
def sdxl():
    return tiny_models.tiny_unet("sdxl", seed=0)


@pytest.fixture(scope="module")
def vae():
    return tiny_models.tiny_vae()


def picture(count=1, height=96, width=160, seed=0):
    """Reference pictures (IMAGE, B x H x W x 3 in 0..1), not the latent's size nor its aspect ratio."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    base = torch.stack([xx, yy, 0.5 * (xx + yy)], -1)
    return (base + 0.2 * torch.rand(count, height, width, 3, generator=g)).clamp(0, 1)


def apply_image(model, vae, image, strength=0.4, seed=SEED, skip_up1=False, reference_strengths="",
                exclude_blocks="", start_percent=0.0, end_percent=1.0, mask=None):  # fmt: skip
    return ApplyRefDropImage.execute(model, vae, image, strength, seed, skip_up1, reference_strengths,
                                     exclude_blocks, start_percent, end_percent, mask).args[0]  # fmt: skip


def apply_inbatch(model, strength=0.3, reference_count=1, reference_strengths=""):
    return ApplyRefDrop.execute(model, strength, reference_count, False, reference_strengths, "").args[0]


def inputs(rows, seed=0, size=(16, 24)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 4, *size, generator=g) * 3
    context = torch.randn(rows, 8, CONTEXT, generator=g)
    y = torch.randn(rows, tiny_models.TINY_SDXL_UNET["adm_in_channels"], generator=g)
    return x, context, y


def noised_references(model, vae, image, size, sigma, seed=SEED):
    return model_calls.noised_references(model, vae, image, size, sigma, seed)


# ---- one model call: the definition, computed independently -------------------------------------


@pytest.mark.parametrize(
    "order,references",
    [([1, 0], 1), ([0, 1], 1), ([0], 1), ([1, 0, 0], 1), ([1, 0], 2)],  # Eq. 5; Eq. 6
)
def test_model_call_equals_in_batch_refdrop_with_noised_references_in_front(sdxl, vae, order, references):
    per_chunk, sigma, size = 2, 4.0, (16, 24)
    image = picture(references)
    strengths = ", ".join(["0.35", "0.2"][:references])
    x, context, y = inputs(per_chunk * len(order), seed=len(order) + references, size=size)
    patched = apply_image(sdxl, vae, image, reference_strengths=strengths)
    out = model_call(patched, x, sigma, context, y, order)
    assert out.shape == x.shape  # the reference rows never reach the sampler

    x_ref = noised_references(sdxl, vae, image, size, sigma)
    chunks = len(order)
    in_batch = apply_inbatch(sdxl, reference_count=references, reference_strengths=strengths)
    expected = model_call(in_batch, in_front(x, chunks, x_ref), sigma, in_front(context, chunks, references),
                          in_front(y, chunks, references), order)  # fmt: skip
    torch.testing.assert_close(out, own_rows(expected, chunks, references), rtol=1e-5, atol=1e-5)

    # split calls (low memory: one chunk per call) give the same rows
    for chunk, kind in enumerate(order):
        rows = slice(chunk * per_chunk, (chunk + 1) * per_chunk)
        alone = model_call(patched, x[rows], sigma, context[rows], y[rows], [kind])
        torch.testing.assert_close(alone, out[rows], rtol=1e-5, atol=1e-5)


def test_every_per_row_input_is_extended_for_the_reference_rows(sdxl, vae):
    """What the diffusion model sees: x_ref in front, the chunk's first text context / SDXL y / timestep."""
    seen = {}

    def record(executor, x, timesteps, context, y, control=None, transformer_options={}, **kwargs):
        seen.update(
            x=x,
            t=timesteps,
            context=context,
            y=y,
            control={name: list(values) for name, values in control.items()},  # the UNet pops these lists
            rows=transformer_options.get(REFERENCE_ROWS_KEY),
        )
        return executor(x, timesteps, context, y, control, transformer_options, **kwargs)  # fmt: skip

    patched = apply_image(sdxl, vae, picture(2), reference_strengths="0.3, 0.3")
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test", record)
    x, context, y = inputs(6)
    control = {"output": [torch.randn(6, 192, 4, 6)], "middle": [None], "input": [torch.randn(1, 64, 16, 24)]}
    out = model_call(patched, x, 3.0, context, y, [1, 0], control=control)
    assert out.shape == x.shape and seen["rows"] == 2
    assert seen["x"].shape[0] == 10 and seen["t"].shape == (10,) and torch.all(seen["t"] == seen["t"][0])
    for chunk in range(2):
        front, first = chunk * 5, chunk * 3
        for e in range(2):
            assert torch.equal(seen["context"][front + e], context[first])
            assert torch.equal(seen["y"][front + e], y[first])  # SDXL's pooled + size vector of the chunk's first row
        assert torch.equal(seen["y"][front + 2 : front + 5], y[first : first + 3])
        assert torch.equal(seen["control"]["output"][0][front : front + 2], torch.zeros(2, 192, 4, 6))
        assert torch.equal(seen["control"]["output"][0][front + 2 : front + 5], control["output"][0][first : first + 3])
        assert torch.equal(seen["control"]["input"][0][front : front + 2], torch.zeros(2, 64, 16, 24))
        assert torch.equal(
            seen["control"]["input"][0][front + 2 : front + 5], control["input"][0].expand(3, -1, -1, -1)
        )
    assert seen["control"]["middle"] == [None]


def test_zero_strength_and_calls_outside_the_window_are_bit_identical(sdxl, vae):
    x, context, y = inputs(4)
    plain = model_call(sdxl, x, 2.0, context, y, [1, 0])
    assert torch.equal(model_call(apply_image(sdxl, vae, picture(), strength=0.0), x, 2.0, context, y, [1, 0]), plain)
    zeros = apply_image(sdxl, vae, picture(2), reference_strengths="0, 0")
    assert torch.equal(model_call(zeros, x, 2.0, context, y, [1, 0]), plain)
    late = apply_image(sdxl, vae, picture(), start_percent=0.6, end_percent=1.0)  # sigma 2.0 is early: outside
    sigma_start = late.get_model_object("model_sampling").percent_to_sigma(0.6)
    assert sigma_start < 2.0
    assert torch.equal(model_call(late, x, 2.0, context, y, [1, 0]), plain)
    assert not torch.allclose(model_call(late, x, sigma_start * 0.5, context, y, [1, 0]),
                              model_call(sdxl, x, sigma_start * 0.5, context, y, [1, 0]), atol=1e-4)  # fmt: skip


def test_reference_latent_is_resized_once_per_size(sdxl, vae):
    patched = apply_image(sdxl, vae, picture())
    (rows,) = patched.get_wrappers(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "refguide_refdrop_reference_images")
    first = None
    for size in [(16, 24), (16, 24), (8, 8), (16, 24), (8, 8)]:
        x, context, y = inputs(2, size=size)
        model_call(patched, x, 2.0, context, y, [0])
        if first is None:
            first = rows.references_for(patched.model, 16, 24, x.device, x.dtype)
    assert sorted(key[:2] for key in rows._by_size) == [(8, 8), (16, 24)]  # one entry per size, not per step
    clean, eps, _ = rows.references_for(patched.model, 16, 24, torch.device("cpu"), torch.float32)
    assert clean is first[0] and eps is first[1]  # reused, not recomputed
    z = comfy.utils.common_upscale(vae.encode(picture()), 24, 16, "bilinear", "center")
    assert torch.equal(eps, comfy.sample.prepare_noise(z, SEED))
    assert torch.equal(clean, patched.model.process_latent_in(z))


def test_a_patched_model_call_leaves_the_global_rng_state_alone(sdxl, vae):
    """The references' noise comes from a private generator: sampling code that draws from the global RNG (ancestral
    samplers, ComfyUI's other nodes) sees the same random stream with and without the node."""
    patched = apply_image(sdxl, vae, picture(2), seed=77)
    x, context, y = inputs(4, size=(16, 24))
    torch.manual_seed(1234)
    before = torch.random.get_rng_state()
    model_call(patched, x, 3.0, context, y, [1, 0])  # the first call at this size draws the references' noise
    assert torch.equal(torch.random.get_rng_state(), before)
    (rows,) = patched.get_wrappers(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "refguide_refdrop_reference_images")
    _, eps, _ = rows.references_for(patched.model, 16, 24, torch.device("cpu"), torch.float32)
    z = comfy.utils.common_upscale(vae.encode(picture(2)), 24, 16, "bilinear", "center")
    assert torch.equal(eps, comfy.sample.prepare_noise(z, 77))  # the same values prepare_noise gives


def test_reference_rows_built_concurrently_from_two_threads_are_identical(sdxl, vae):
    """ComfyUI's multi-GPU CFG split runs the cond and uncond chunks on pool threads at once: both threads must get
    the same reference rows (with the global RNG seeded per call, they raced: different noise in 8 of 30 trials)."""
    import threading

    for trial in range(12):
        patched = apply_image(sdxl, vae, picture(), seed=trial)
        (rows,) = patched.get_wrappers(
            comfy.patcher_extension.WrappersMP.APPLY_MODEL, "refguide_refdrop_reference_images"
        )
        start, results = threading.Barrier(2), [None, None]

        def build(index, rows=rows, start=start, results=results, patched=patched):
            start.wait()
            # a thread that also uses the global RNG meanwhile (the other chunk's sampler code)
            torch.manual_seed(1000 + index)
            torch.randn(64)
            results[index] = rows.references_for(patched.model, 16, 24, torch.device("cpu"), torch.float32)

        threads = [threading.Thread(target=build, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        z = comfy.utils.common_upscale(vae.encode(picture()), 24, 16, "bilinear", "center")
        assert torch.equal(results[0][1], results[1][1]) and torch.equal(results[0][0], results[1][0])
        assert torch.equal(results[0][1], comfy.sample.prepare_noise(z, trial))


def test_a_zero_strength_reference_adds_no_row_and_leaves_the_others_noise_as_defined(sdxl, vae):
    """eps = prepare_noise(z, seed) over the whole reference batch, also when a reference with c = 0 is dropped."""
    per_chunk, sigma, size, order = 2, 4.0, (16, 24), [1, 0]
    image = picture(2)
    x, context, y = inputs(per_chunk * len(order), seed=3, size=size)
    patched = apply_image(sdxl, vae, image, reference_strengths="0, 0.3")
    (rows,) = patched.get_wrappers(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "refguide_refdrop_reference_images")
    assert rows.count == 1  # the zero-strength reference costs nothing
    out = model_call(patched, x, sigma, context, y, order)

    x_ref = noised_references(sdxl, vae, image, size, sigma)[1:]  # noise drawn for both, the second kept
    in_batch = apply_inbatch(sdxl, strength=0.3)
    expected = model_call(in_batch, in_front(x, 2, x_ref), sigma, in_front(context, 2, 1), in_front(y, 2, 1), order)
    torch.testing.assert_close(out, own_rows(expected, 2, 1), rtol=1e-5, atol=1e-5)


# ---- attention level: image guidance on top of in-batch guidance --------------------------------------


def test_image_guidance_applies_on_top_of_in_batch_guidance_at_one_layer():
    g = torch.Generator().manual_seed(5)
    chunks, extra, own = 2, 1, 3
    q, k, v = (torch.randn(chunks * (extra + own), 16, 128, generator=g) for _ in range(3))
    options = {"n_heads": 2, "dim_head": 64, "attn_precision": None, "cond_or_uncond": [1, 0],
               "activations_shape": [q.shape[0], 128, 4, 4], REFERENCE_ROWS_KEY: extra}  # fmt: skip
    in_batch = RefDropAttention(RefDropSettings((0,), (0.3,)), FallbackNotice("t"))
    both = ReferenceImageAttention(RefDropSettings((0,), (0.25,)), FallbackNotice("t"), inner=in_batch)
    out = both(q, k, v, options).double()
    qd, kd, vd = q.double(), k.double(), v.double()

    def attn(i, j):
        return reference.direct_attention(qd[i : i + 1], kd[j : j + 1], vd[j : j + 1], heads=2)

    for chunk in range(chunks):
        front = chunk * (extra + own)
        torch.testing.assert_close(out[front : front + 1], attn(front, front).float().double(), rtol=1e-5, atol=1e-6)
        latent_ref = front + 1  # the latent batch's own reference image: in-batch guidance leaves it alone
        for i in range(front + 1, front + 1 + own):
            in_batch_part = attn(i, i) if i == latent_ref else 0.7 * attn(i, i) + 0.3 * attn(i, latent_ref)
            expected = 0.75 * in_batch_part + 0.25 * attn(i, front)
            torch.testing.assert_close(out[i : i + 1], expected, rtol=1e-5, atol=1e-6)


def test_order_of_the_two_nodes_does_not_matter(sdxl, vae):
    image = picture()
    first = apply_image(apply_inbatch(sdxl), vae, image)
    second = apply_inbatch(apply_image(sdxl, vae, image))
    patch = second.model_options["transformer_options"]["patches_replace"]["attn1"][("middle", 0, 0)]
    assert isinstance(patch, ReferenceImageAttention) and isinstance(patch.inner, RefDropAttention)
    x, context, y = inputs(6)
    a = model_call(first, x, 3.0, context, y, [1, 0])
    b = model_call(second, x, 3.0, context, y, [1, 0])
    assert torch.equal(a, b)
    only_image = model_call(apply_image(sdxl, vae, image), x, 3.0, context, y, [1, 0])
    assert not torch.allclose(a, only_image, atol=1e-4)


# ---- subject masks ---------------------------------------------------------------------------------------


def test_masks_at_the_model_call_follow_the_reference_crop(sdxl, vae):
    """A mask in the picture's right half survives the centre crop to a square latent as the right half of the crop."""
    seen = {}

    def record(q, k, v, extra_options):
        if REFERENCE_MASKS_KEY in extra_options:
            seen["masks"] = extra_options[REFERENCE_MASKS_KEY]
        return plain_attention(q, k, v, extra_options)

    record.knows_reference_rows = True  # sees the reference rows and masks, as the pack's own patches do
    image = picture(height=64, width=128)  # 2:1 picture, latent 8 x 16
    mask = torch.zeros(1, 64, 128)
    mask[:, :, 80:] = 1.0  # subject at the right, inside the centre square (pixels 32..96) from 80 on
    patched = apply_image(sdxl, vae, image, mask=mask)
    inner = patched.clone()
    for key, patch in list(inner.model_options["transformer_options"]["patches_replace"]["attn1"].items()):
        inner.set_model_attn1_replace(ReferenceImageAttention(patch.settings, patch.notice, record), *key)
    x, context, y = inputs(2, size=(8, 8))
    model_call(inner, x, 2.0, context, y, [0])
    masks = seen["masks"]
    assert masks.shape == (1, 64, 64)  # the centre 64 x 64 pixels of the 64 x 128 picture
    assert torch.equal(masks[0], mask[0, :, 32:96])


def test_all_white_mask_equals_no_mask_and_all_black_equals_strength_zero(sdxl, vae):
    image = picture(2)
    x, context, y = inputs(4)
    none = model_call(apply_image(sdxl, vae, image), x, 3.0, context, y, [1, 0])
    white = model_call(apply_image(sdxl, vae, image, mask=torch.ones(1, 96, 160)), x, 3.0, context, y, [1, 0])
    assert torch.equal(white, none)
    black = model_call(apply_image(sdxl, vae, image, mask=torch.zeros(2, 96, 160)), x, 3.0, context, y, [1, 0])
    assert torch.equal(black, model_call(sdxl, x, 3.0, context, y, [1, 0]))
    # one black mask out of two: the same as that reference at strength 0
    mixed = torch.stack([torch.ones(96, 160), torch.zeros(96, 160)])
    one = model_call(apply_image(sdxl, vae, image, mask=mixed), x, 3.0, context, y, [1, 0])
    second_off = model_call(apply_image(sdxl, vae, image, reference_strengths="0.4, 0"), x, 3.0, context, y, [1, 0])
    assert torch.equal(one, second_off)


def test_one_mask_for_all_references_equals_the_same_mask_per_reference(sdxl, vae):
    image = picture(2)
    mask = torch.zeros(96, 160)
    mask[20:80, 40:120] = 1.0
    x, context, y = inputs(4)
    shared = model_call(apply_image(sdxl, vae, image, mask=mask), x, 3.0, context, y, [1, 0])
    each = model_call(apply_image(sdxl, vae, image, mask=mask.expand(2, -1, -1)), x, 3.0, context, y, [1, 0])
    unmasked = model_call(apply_image(sdxl, vae, image), x, 3.0, context, y, [1, 0])
    assert torch.equal(shared, each) and not torch.allclose(shared, unmasked, atol=1e-5)
    # a mask at another size than the pictures (LoadImage's 64 x 64 default) is stretched to them
    small = torch.zeros(1, 48, 80)
    small[:, 10:40, 20:60] = 1.0
    stretched = model_call(apply_image(sdxl, vae, image, mask=small), x, 3.0, context, y, [1, 0])
    torch.testing.assert_close(stretched, shared, rtol=1e-5, atol=1e-5)


# ---- bad input ------------------------------------------------------------------------------------------


def test_bad_inputs_get_clear_errors(sdxl, vae):
    with pytest.raises(ValueError, match="3 masks for 2 reference"):
        apply_image(sdxl, vae, picture(2), mask=torch.ones(3, 96, 160))
    with pytest.raises(ValueError, match="reference_strengths has 1 value.*2 reference image"):
        apply_image(sdxl, vae, picture(2), reference_strengths="0.3")
    message = ApplyRefDropImage.validate_inputs(reference_strengths="0.3, abc")
    assert isinstance(message, str) and "'abc' is not a number" in message
    assert "swap them" in ApplyRefDropImage.validate_inputs(start_percent=0.8, end_percent=0.2)
    assert ApplyRefDropImage.validate_inputs(reference_strengths="0.3, 0.2", exclude_blocks="output 0") is True
    with pytest.raises(ValueError, match="'output 9'.*Valid names"):
        apply_image(sdxl, vae, picture(), exclude_blocks="output 9")
    with pytest.raises(ValueError, match="SVD Temporal RefDrop"):
        apply_image(tiny_models.tiny_unet("svd"), vae, picture())
    with pytest.raises(ValueError, match="already has reference images"):
        apply_image(apply_image(sdxl, vae, picture()), vae, picture())


def test_a_vae_of_another_latent_width_is_refused(sdxl):
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    config = {"params": {"ddconfig": dict(tiny_models.TINY_VAE_DDCONFIG, z_channels=16), "embed_dim": 16}}
    wide = AutoencoderKL(**config["params"])
    tiny_models.init_module_(wide, 0)
    vae16 = comfy.sd.VAE(sd=wide.state_dict(), config=config)
    with pytest.raises(ValueError, match=r"\(1, 16, 12, 20\).*4-channel.*same checkpoint"):
        apply_image(sdxl, vae16, picture())


# ---- ComfyUI's real sampler -----------------------------------------------------------------------------


def conditioning(batch_rows, seed, **extras):
    g = torch.Generator().manual_seed(seed)
    extras["pooled_output"] = torch.randn(batch_rows, tiny_models.TINY_POOLED_DIM, generator=g)
    return [torch.randn(batch_rows, 8, CONTEXT, generator=g), extras]


def sample(model, sampler="euler", cfg=5.0, positive=None, batch=2, steps=2, size=(16, 16)):
    latent = torch.zeros(batch, 4, *size)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(11))
    positive = positive or [conditioning(batch, 1)]
    return comfy.sample.sample(model, noise, steps, cfg, sampler, "normal", positive, [conditioning(1, 2)], latent,
                               seed=11, disable_pbar=True)  # fmt: skip


@pytest.mark.parametrize(
    "sampler,cfg,positive",
    [
        ("euler", 5.0, None),
        ("heun", 1.0, None),  # two model calls per step; cfg 1: one chunk
        ("euler", 5.0, [conditioning(2, 1), conditioning(2, 4, area=(8, 8, 0, 0))]),  # area cond: smaller latent
    ],
)
def test_real_sampler_runs_and_guides(sdxl, vae, sampler, cfg, positive):
    plain = sample(sdxl, sampler, cfg, positive)
    guided = sample(apply_image(sdxl, vae, picture()), sampler, cfg, positive)
    assert guided.shape == plain.shape and torch.isfinite(guided).all()
    assert (guided - plain).abs().mean() > 1e-3


def test_window_outside_every_step_is_bit_identical_in_sampling(sdxl, vae):
    plain = sample(sdxl, steps=3)  # model calls at sigma 14.6, 1.6, 0.03; the window 0.1 .. 0.3 is sigma 8.3 .. 3.3
    window = apply_image(sdxl, vae, picture(), start_percent=0.1, end_percent=0.3)
    assert torch.equal(sample(window, steps=3), plain)
    assert torch.equal(sample(apply_image(sdxl, vae, picture(), strength=0.0), steps=3), plain)


def test_in_batch_refdrop_window_inputs(sdxl):
    plain = sample(sdxl, batch=3, steps=3)
    late = ApplyRefDrop.execute(sdxl, 0.4, 1, False, "", "", 0.1, 0.3).args[0]  # no call of 3 steps inside
    assert torch.equal(sample(late, batch=3, steps=3), plain)
    guided = ApplyRefDrop.execute(sdxl, 0.4, 1, False, "", "", 0.0, 0.3).args[0]  # the first call only
    assert (sample(guided, batch=3, steps=3)[1:] - plain[1:]).abs().mean() > 1e-3
    assert "swap them" in ApplyRefDrop.validate_inputs(start_percent=0.7, end_percent=0.3)


def test_controlnet_on_the_same_model_still_runs(sdxl, vae):
    from refguide_testing import tiny_easyref

    control = tiny_easyref.tiny_controlnet("sdxl").copy().set_cond_hint(torch.rand(1, 3, 128, 128), 1.0, (0.0, 1.0))
    positive = [conditioning(2, 1, control=control)]
    plain = sample(sdxl, positive=positive, steps=2)
    guided = sample(apply_image(sdxl, vae, picture()), positive=positive, steps=2)
    assert torch.isfinite(guided).all() and (guided - plain).abs().mean() > 1e-4


# ---- other nodes' self-attention patches never see the reference rows ---------------------------------------


class RowRecorder:
    """Another node's attn1 replace (as Self-Attention Guidance registers one): plain attention, recording what it
    was called with."""

    def __init__(self):
        self.calls = []

    def __call__(self, q, k, v, extra_options):
        self.calls.append((q.shape[0], list(extra_options["activations_shape"]), extra_options.get(REFERENCE_ROWS_KEY)))
        return plain_attention(q, k, v, extra_options)


@pytest.mark.parametrize("foreign_first", [True, False])
def test_another_nodes_attn1_patch_sees_only_the_latent_batch(sdxl, vae, foreign_first):
    """Before the node (chained inside its patch) or after it (replacing its patch on that layer): the other patch
    gets the latent batch's rows, and a plain-attention patch leaves the call's output exactly as without it."""
    order, per_chunk, sigma = [1, 0], 2, 4.0
    x, context, y = inputs(per_chunk * len(order), seed=3)
    image = picture(2)
    recorder = RowRecorder()
    if foreign_first:
        foreign = sdxl.clone()
        for index in (0, 1):  # both transformer blocks of output block 1 (depth 2)
            foreign.set_model_attn1_replace(recorder, "output", 1, index)
        patched = apply_image(foreign, vae, image, reference_strengths="0.3, 0.2")
        assert (
            patched.model_options["transformer_options"]["patches_replace"]["attn1"][("output", 1, 0)].inner is recorder
        )
    else:
        patched = apply_image(sdxl, vae, image, reference_strengths="0.3, 0.2").clone()
        for index in (0, 1):
            patched.set_model_attn1_replace(recorder, "output", 1, index)
    out = model_call(patched, x, sigma, context, y, order)
    assert len(recorder.calls) == 2 and all(call[0] == per_chunk * len(order) for call in recorder.calls)
    assert all(call[1][0] == per_chunk * len(order) and not call[2] for call in recorder.calls)
    if not foreign_first:  # the model's options still hold the other node's own object (wrapped per call only)
        assert patched.model_options["transformer_options"]["patches_replace"]["attn1"][("output", 1, 0)] is recorder

    # the same model without the other patch; when the other patch replaced the node's own patch on that layer,
    # that layer runs without the reference image (as ComfyUI's replace means), so compare with that layer excluded
    plain = apply_image(
        sdxl, vae, image, reference_strengths="0.3, 0.2", exclude_blocks="" if foreign_first else "output 1"
    )
    torch.testing.assert_close(out, model_call(plain, x, sigma, context, y, order), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sag_first", [True, False])
def test_self_attention_guidance_samples_with_reference_images(sdxl, vae, sag_first, caplog):
    """ComfyUI's Self-Attention Guidance (records the uncond chunk's middle-block attention and reshapes it by the
    latent batch size) works in either order; applied after, it replaces one layer's patch, which is reported."""
    from comfy_extras.nodes_sag import SelfAttentionGuidance

    def sag(model):
        return SelfAttentionGuidance.execute(model, 0.5, 2.0).args[0]

    image = picture(1)
    plain_sag = sample(sag(sdxl))
    reference_only = sample(apply_image(sdxl, vae, image))
    both = sag(apply_image(sdxl, vae, image)) if not sag_first else apply_image(sag(sdxl), vae, image)
    with caplog.at_level("WARNING"):
        out = sample(both)
    assert torch.isfinite(out).all()
    assert (out - plain_sag).abs().max() > 1e-3 and (out - reference_only).abs().max() > 1e-3
    replaced = [
        r for r in caplog.records if "replaced its self-attention patch on 1 layer(s) (middle 0 0)" in r.message
    ]
    assert len(replaced) == (0 if sag_first else 1)
