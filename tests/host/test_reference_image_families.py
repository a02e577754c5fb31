"""Apply RefDrop (Reference Image) on every image diffusion-transformer family: tiny real ComfyUI DiTs and VAEs.

For each family of ``tiny_dits.ENTRIES`` (plus Flux Kontext, Flux 2 editing and Qwen-Image-Edit: their base class
with reference latents) one model call, made as the sampler makes it (the model's own extra_conds, process_cond,
apply_model with the clone's wrappers), equals in-batch Apply RefDrop on a batch with the noised reference rows in
front of each guidance chunk, where x_ref is computed here independently: VAE Encode of each picture, per-frame
common_upscale, comfy.sample.prepare_noise, process_latent_in and the model's noise_scaling; the reference rows
get the chunk's first row's conditioning. Then one real sampling run per family.
"""

from __future__ import annotations

import comfy.patcher_extension
import comfy.sample
import comfy.utils
import pytest
import torch
from refguide.comfy_patches.model_families import FAMILY_NAMES, IMAGE_DIT, model_family
from refguide.comfy_patches.reference_rows import _extend_cond, _extend_sigma
from refguide.nodes.refdrop import ApplyRefDrop, ApplyRefDropImage
from refguide_testing import tiny_dits

TOKENS = 8
# test case -> tiny model; Flux Kontext and Qwen-Image-Edit are their base class with reference latents
CASES = {name: name for name in tiny_dits.ENTRIES} | {"flux_kontext": "flux", "qwen_image_edit": "qwen_image"}
CASES["flux2_edit"] = "flux2"  # Flux 2 editing: reference latents appended after the image tokens ("index" method)
SEED, SIGMA = 3, 0.6


def apply_reference_image(model, vae, image, strength=0.4, reference_strengths="", seed=SEED):
    return ApplyRefDropImage.execute(model, vae, image, strength, seed, False, reference_strengths).args[0]


def apply_refdrop(model, strength=0.4, reference_count=1, reference_strengths=""):
    return ApplyRefDrop.execute(model, strength, reference_count, False, reference_strengths).args[0]


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    name = request.param
    base = CASES[name]
    return name, base, tiny_dits.tiny_dit(base, seed=6), tiny_dits.tiny_dit_vae(base)


def latent_shape(base, rows, size=16, frames=1):
    entry = tiny_dits.ENTRIES[base]
    channels = entry.latent_channels
    return (rows, channels, frames, size, size) if entry.five_d else (rows, channels, size, size)


def raw_inputs(name, base, rows, seed):
    """What a text encoder / conditioning node hands the model's extra_conds: ``rows`` rows of each per-row input."""
    entry = tiny_dits.ENTRIES[base]
    g = torch.Generator().manual_seed(seed)
    raw = {"cross_attn": torch.randn(rows, TOKENS, entry.context_width, generator=g)}
    raw.update(entry.conditioning_extras(rows, g))
    if base == "qwen_image":  # every row pads a different number of text tokens (integer mask, as the encoder's)
        raw["attention_mask"] = torch.ones(rows, TOKENS, dtype=torch.long)
        for row in range(rows):
            raw["attention_mask"][row, TOKENS - 1 - row % 3 :] = 0
    if base in ("lumina2", "zimage"):  # one mask for the prompt (num_tokens = its length)
        raw["attention_mask"] = torch.ones(1, TOKENS, dtype=torch.long)
        raw["attention_mask"][:, -2:] = 0
    if name == "flux_kontext":  # a different reference latent per row (the edit's input pictures)
        raw["reference_latents"] = [torch.randn(rows, 16, 8, 8, generator=g)]
    if name == "flux2_edit":  # 128-channel reference latents (Flux 2 latents: one token per latent pixel)
        raw["reference_latents"] = [torch.randn(rows, 128, 4, 4, generator=g)]
    if name == "qwen_image_edit":
        raw["reference_latents"] = [torch.randn(rows, 16, 1, 8, 8, generator=g)]
    return raw


def model_kwargs(patcher, raw, x, guidance=None):
    """The model call's keyword inputs as the sampler makes them: extra_conds, then process_cond per batch."""
    conds = patcher.model.extra_conds(noise=x, device=x.device, **raw)
    kwargs = {key: cond.process_cond(batch_size=x.shape[0], area=None).cond for key, cond in conds.items()}
    if guidance is not None:  # Flux: a per-row guidance tensor
        kwargs["guidance"] = guidance
    return kwargs


def call(patcher, x, kwargs, order):
    options = dict(patcher.model_options.get("transformer_options", {}), cond_or_uncond=list(order))
    options["wrappers"] = comfy.patcher_extension.copy_nested_dicts(patcher.wrappers)
    t = torch.full((x.shape[0],), SIGMA)
    with torch.no_grad():
        return patcher.model.apply_model(x, t, transformer_options=options, **kwargs)


def with_reference_rows(tensor, chunks, inserted):
    """``inserted`` (E rows, or an int E: copies of the chunk's first row) in front of each chunk of ``tensor``."""
    per = tensor.shape[0] // chunks
    parts = []
    for chunk in range(chunks):
        own = tensor[chunk * per : (chunk + 1) * per]
        parts += [own[:1].repeat_interleave(inserted, 0) if isinstance(inserted, int) else inserted, own]
    return torch.cat(parts)


def noised_references(model, vae, image, x_shape, seed):
    """x_ref written out: each picture VAE-encoded, resized frame by frame, noised the sampler's way."""
    base = model.model
    z = torch.cat([vae.encode(image[i : i + 1]) for i in range(image.shape[0])])  # VAE Encode of each picture
    height, width = x_shape[-2:]
    if z.ndim == 5:  # per frame: common_upscale on the (E*T, C, h, w) view, then back
        e, c, t = z.shape[:3]
        frames = z.movedim(2, 1).reshape(e * t, c, *z.shape[-2:])
        frames = comfy.utils.common_upscale(frames, width, height, "bilinear", "center")
        z = frames.reshape(e, t, c, height, width).movedim(1, 2)
        z = z.repeat(1, 1, x_shape[2] // t, 1, 1)  # a still picture over the call's frames
    else:
        z = comfy.utils.common_upscale(z, width, height, "bilinear", "center")
    eps = comfy.sample.prepare_noise(z, seed)
    sigma = torch.full((z.shape[0],), SIGMA)
    return base.model_sampling.noise_scaling(sigma, eps, base.process_latent_in(z))


def test_every_image_dit_family_is_allowed_and_tested_here():
    """Apply RefDrop (Reference Image) accepts every image DiT family (the node's family check: the image kinds),
    and this file tests each of them."""
    assert {model_family(tiny_dits.tiny_dit(base)).name for base in set(CASES.values())} == set(FAMILY_NAMES[IMAGE_DIT])


def test_one_model_call_equals_in_batch_refdrop_with_the_noised_references_in_front(case):
    name = case[0]
    for references in (1, 2) if name in ("qwen_image", "sd3") else (1,):  # Eq. 6: one 2-D and one 3-D VAE family
        check_one_model_call(*case, references)


def check_one_model_call(name, base, model, vae, references):
    g = torch.Generator().manual_seed(11)
    image = torch.rand(references, 80, 112, 3, generator=g)  # 10x14 latent: resized and centre-cropped to 16x16
    strengths = "0.3, 0.2" if references == 2 else ""
    patched = apply_reference_image(model, vae, image, strength=0.4, reference_strengths=strengths)
    frames = 2 if name == "cosmos_predict2" and references == 1 else 1  # a 2-frame call: the still is repeated
    order, per = [1, 0], 2  # two guidance chunks (uncond, cond) of two rows each
    rows = per * len(order)
    x = torch.randn(latent_shape(base, rows, frames=frames), generator=g)
    raw = raw_inputs(name, base, rows, seed=5)
    guidance = torch.tensor([3.5, 2.0, 4.0, 1.0]) if base == "flux" else None
    ours = call(patched, x, model_kwargs(model, raw, x, guidance), order)

    x_ref = noised_references(model, vae, image, x.shape, SEED)
    big_x = with_reference_rows(x, len(order), x_ref)
    big_raw = {
        key: (
            with_reference_rows(value, len(order), references)
            if torch.is_tensor(value) and value.shape[0] == rows
            else [with_reference_rows(item, len(order), references) for item in value]
            if isinstance(value, list)
            else value
        )
        for key, value in raw.items()
    }
    big_guidance = None if guidance is None else with_reference_rows(guidance, len(order), references)
    in_batch = apply_refdrop(model, 0.4, references, strengths)
    expected = call(in_batch, big_x, model_kwargs(model, big_raw, big_x, big_guidance), order)
    own = [row for row in range(big_x.shape[0]) if row % (per + references) >= references]
    assert ours.shape == x.shape
    torch.testing.assert_close(ours, expected[own], rtol=1e-5, atol=1e-5)
    plain = call(model, x, model_kwargs(model, raw, x, guidance), order)
    assert (ours - plain).abs().mean() > 1e-4 * plain.abs().mean(), f"{name}: not guided"
    zero = apply_reference_image(model, vae, image, strength=0.0, reference_strengths="0, 0" if strengths else "")
    assert torch.equal(call(zero, x, model_kwargs(model, raw, x, guidance), order), plain)


def conditioning(name, base, rows, seed):
    raw = raw_inputs(name, base, rows, seed)
    extras = {key: value for key, value in raw.items() if key != "cross_attn"}
    if "attention_mask" in extras:
        extras["attention_mask"] = extras["attention_mask"][:1]
    if "reference_latents" in extras:
        extras["reference_latents"] = [latent[:1] for latent in extras["reference_latents"]]
    return [[raw["cross_attn"], extras]]


def test_the_real_sampler_runs_with_reference_images(case):
    name, base, model, vae = case
    image = torch.rand(1, 64, 96, 3, generator=torch.Generator().manual_seed(2))
    shape = latent_shape(base, 2)
    latent = torch.zeros(shape)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    positive, negative = conditioning(name, base, 2, 1), conditioning(name, base, 1, 2)

    def run(patcher):
        return comfy.sample.sample(patcher, noise, 2, 2.0, "euler", "simple", positive, negative, latent, seed=7,
                                   disable_pbar=True)  # fmt: skip

    plain, guided = run(model), run(apply_reference_image(model, vae, image, strength=0.4))
    assert guided.shape == shape and torch.isfinite(guided).all()
    assert (guided - plain).abs().mean() > 1e-4 * plain.abs().mean(), f"{name}: not guided"


def test_a_vae_of_another_rank_is_refused():
    image = torch.rand(1, 64, 64, 3)
    with pytest.raises(ValueError, match=r"video \(3-D\) VAE but the model samples image \(2-D\) latents"):
        apply_reference_image(tiny_dits.tiny_dit("sd3"), tiny_dits.tiny_dit_vae("qwen_image"), image)
    with pytest.raises(ValueError, match=r"image \(2-D\) VAE but the model samples video \(3-D\) latents"):
        apply_reference_image(tiny_dits.tiny_dit("qwen_image"), tiny_dits.tiny_dit_vae("flux"), image)


def test_an_input_that_cannot_be_extended_is_an_error_naming_it():
    model, vae = tiny_dits.tiny_dit("flux", seed=6), tiny_dits.tiny_dit_vae("flux")
    patched = apply_reference_image(model, vae, torch.rand(1, 64, 64, 3))
    x = torch.randn(latent_shape("flux", 4))
    kwargs = model_kwargs(model, raw_inputs("flux", "flux", 4, seed=1), x, guidance=torch.full((3,), 3.5))
    with pytest.raises(ValueError, match=r"the model input 'guidance' of shape \(3,\) cannot be extended"):
        call(patched, x, kwargs, [1, 0])
    kwargs = model_kwargs(model, raw_inputs("flux", "flux", 4, seed=1), x)
    kwargs["ref_latents"] = [torch.randn(1, 16, 8, 8), torch.randn(2, 16, 8, 8)]
    with pytest.raises(ValueError, match=r"'ref_latents\[1\]' of shape \(2, 16, 8, 8\)"):
        call(patched, x, kwargs, [1, 0])


def test_per_row_inputs_of_any_shape_are_extended_and_shared_ones_kept():
    rows, chunks, extra = 4, 2, 1
    per_row = torch.arange(rows * 3.0).reshape(rows, 3)
    shared = torch.ones(1, 5)
    extended = _extend_cond([per_row, shared, 7, None, "index"], rows, chunks, extra, "ref_latents")
    assert torch.equal(extended[0], per_row[[0, 0, 1, 2, 2, 3]]) and extended[1] is shared
    assert extended[2:] == [7, None, "index"]
    assert _extend_cond(torch.tensor(2.0), rows, chunks, extra).ndim == 0
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]], dtype=torch.bool)
    assert torch.equal(_extend_cond(mask, rows, chunks, extra), mask[[0, 0, 1, 2, 2, 3]])
    # timesteps: (rows,), (rows, 1) and one sigma for the call; several values a row cannot noise a reference
    for t in (torch.tensor([0.9, 0.9, 0.5, 0.5]), torch.tensor([[0.9], [0.9], [0.5], [0.5]])):
        sigmas, longer = _extend_sigma(t, rows, chunks, 2)
        assert torch.equal(sigmas, torch.tensor([[0.9, 0.9], [0.5, 0.5]]))
        assert torch.equal(longer.flatten(), torch.tensor([0.9, 0.9, 0.9, 0.9, 0.5, 0.5, 0.5, 0.5]))
    sigmas, same = _extend_sigma(torch.tensor([0.7]), rows, chunks, 2)
    assert torch.equal(sigmas, torch.full((2, 2), 0.7)) and same.shape == (1,)
    with pytest.raises(ValueError, match=r"'t \(sigma\)' of shape \(4, 2\)"):
        _extend_sigma(torch.rand(4, 2), rows, chunks, 1)
