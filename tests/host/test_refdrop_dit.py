"""Apply RefDrop on diffusion transformers: tiny real ComfyUI DiTs, ComfyUI's real sampler, float64 references."""

from __future__ import annotations

import comfy.patcher_extension
import comfy.sample
import pytest
import torch
from refguide.comfy_patches.dit_override import OVERRIDE_KEY, ForwardState
from refguide.comfy_patches.model_families import IMAGE_DIT, model_family
from refguide.nodes.refdrop import ApplyRefDrop
from refguide_testing import tiny_dits


def apply_refdrop(model, strength=0.4, reference_count=1, skip_up1=False, reference_strengths="", exclude_blocks=""):
    return ApplyRefDrop.execute(model, strength, reference_count, skip_up1, reference_strengths, exclude_blocks).args[0]


def conditioning(name, rows, seed, tokens=8):
    entry = tiny_dits.ENTRIES[name]
    g = torch.Generator().manual_seed(seed)
    extras = entry.conditioning_extras(rows, g)
    return [torch.randn(rows, tokens, entry.context_width, generator=g), extras]


def sample(name, model, batch=3, cfg=1.0, steps=2, size=16):
    channels = model.model.latent_format.latent_channels
    shape = (batch, channels, 1, size, size) if tiny_dits.ENTRIES[name].five_d else (batch, channels, size, size)
    latent = torch.zeros(shape)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    positive, negative = [conditioning(name, batch, 1)], [conditioning(name, 1, 2)]
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive, negative, latent, seed=7,
                               disable_pbar=True)  # fmt: skip


@pytest.fixture(scope="module", params=list(tiny_dits.ENTRIES))
def family(request):
    return request.param, tiny_dits.tiny_dit(request.param)


def test_every_family_is_guided_on_the_real_sampler(family):
    name, model = family
    assert model_family(model).kind == IMAGE_DIT
    for cfg in (1.0, 3.0):  # cfg 1: one chunk [0]; cfg 3: negative and positive batched [1, 0]
        plain = sample(name, model, cfg=cfg)
        guided = sample(name, apply_refdrop(model), cfg=cfg)
        assert torch.isfinite(guided).all()
        torch.testing.assert_close(guided[0], plain[0], rtol=1e-5, atol=1e-5)  # the reference row is unguided
        assert (guided[1:] - plain[1:]).abs().mean() > 1e-4 * plain.abs().mean(), f"{name} cfg {cfg} not guided"


def test_strength_zero_is_bit_identical(family):
    name, model = family
    assert torch.equal(sample(name, apply_refdrop(model, strength=0.0)), sample(name, model))
    zeros = apply_refdrop(model, reference_count=2, reference_strengths="0, 0")
    assert torch.equal(sample(name, zeros, batch=3), sample(name, model, batch=3))


# ---- which calls are guided: a recording override below ours (it must see both our attentions) -------------


class Recorder:
    """An override another pack could have set: passes every call through and records it."""

    def __init__(self):
        self.calls = []

    def __call__(self, func, *args, **kwargs):
        options = kwargs.get("transformer_options", {})
        q = args[0] if args else kwargs["q"]
        k = args[1] if len(args) > 1 else kwargs["k"]
        self.calls.append(
            {
                "extra": bool(options.get("refguide_extra_attention")),
                "inside": kwargs.get("_inside_attn_wrapper", False),
                "k_storage": k.untyped_storage().data_ptr(),
                "k_shape": tuple(k.shape),
                "q_numel": q.numel(),
                "block": (options.get("block_type"), options.get("block_index")),
            }
        )
        return func(*args, **kwargs)

    def guided_plain_calls(self):
        """For every plain call: the extra (reference) attentions that followed it, as the share of the call's query
        tokens each covered, and whether they read its keys."""
        result = []
        for call in self.calls:
            if not call["extra"]:
                result.append([call, [], True])
            else:
                result[-1][1].append(call["q_numel"] / result[-1][0]["q_numel"])
                result[-1][2] &= call["k_storage"] == result[-1][0]["k_storage"]
        return result


def with_recorder(model):
    recorder = Recorder()
    base = model.clone()
    base.model_options.setdefault("transformer_options", {})[OVERRIDE_KEY] = recorder
    return base, recorder


@pytest.mark.parametrize("name", list(tiny_dits.ENTRIES))
def test_every_self_attention_call_is_guided_through_the_chained_override(name):
    """Every self-attention call (``self_calls`` of the entry: e.g. Flux double 0, 1, single 0, 1; Lumina's two
    refiners and layers; SD3.5 Medium's second attention) gets ONE extra attention through the chained override."""
    self_calls = tiny_dits.ENTRIES[name].self_calls
    model = tiny_dits.tiny_dit(name, seed=1)
    base, recorder = with_recorder(model)
    sample(name, apply_refdrop(base), batch=3, steps=1)
    guided = [(call, extras, own) for call, extras, own in recorder.guided_plain_calls() if extras]
    assert len(guided) == self_calls  # the other plain calls are cross-attention (Cosmos), never guided
    for call, extras, reads_own_keys in guided:
        # ONE extra attention: rows 1 and 2 (two thirds of the call's queries) attend to the reference row 0 together
        assert extras == [pytest.approx(2 / 3)], call
        assert reads_own_keys  # the reference K/V are views of this very call's keys
    assert all(call["inside"] for call in recorder.calls)  # _inside_attn_wrapper kept: the override never re-enters


def test_cross_attention_is_untouched_even_with_equal_token_counts():
    """Cosmos Predict2: self-attention then text cross-attention per block; 64 text tokens = 64 image tokens."""
    name = "cosmos_predict2"
    model = tiny_dits.tiny_dit(name, seed=2)
    base, recorder = with_recorder(model)
    channels = model.model.latent_format.latent_channels
    latent = torch.zeros(3, channels, 1, 16, 16)  # 8 x 8 patches = 64 image tokens
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(3))
    positive, negative = [conditioning(name, 3, 1, tokens=64)], [conditioning(name, 1, 2, tokens=64)]
    comfy.sample.sample(apply_refdrop(base), noise, 1, 1.0, "euler", "simple", positive, negative, latent, seed=3,
                        disable_pbar=True)  # fmt: skip
    plain_calls = recorder.guided_plain_calls()
    assert len(plain_calls) == 4 and len({call["k_shape"] for call, _, _ in plain_calls}) == 1  # equal shapes
    # self guided (one extra call over the two guided rows), cross untouched
    assert [len(extras) for _, extras, _ in plain_calls] == [1, 0, 1, 0]
    assert all(own for _, _, own in plain_calls)


def test_exclude_blocks_uses_the_model_names_and_skip_up1_is_refused():
    model = tiny_dits.tiny_dit("flux", seed=1)
    base, recorder = with_recorder(model)
    sample("flux", apply_refdrop(base, exclude_blocks="double 1, Single 0"), steps=1)
    guided = {call["block"]: len(extras) for call, extras, _ in recorder.guided_plain_calls()}
    assert guided == {("double", 0): 1, ("double", 1): 0, ("single", 0): 0, ("single", 1): 1}
    with pytest.raises(ValueError, match=r"'output 0'.*Valid names: double 0, double 1, single 0, single 1\."):
        apply_refdrop(model, exclude_blocks="output 0")
    with pytest.raises(ValueError, match="skip_up1.*Flux is a diffusion transformer.*exclude_blocks"):
        apply_refdrop(model, skip_up1=True)
    with pytest.raises(ValueError, match=r"'joint 9'.*Valid names: context refiner 0, context refiner 1, noise"):
        apply_refdrop(tiny_dits.tiny_dit("lumina2"), exclude_blocks="joint 9")


def test_too_few_images_says_how_many_are_needed():
    model = tiny_dits.tiny_dit("flux", seed=1)
    with pytest.raises(ValueError, match="has 2 image.*need 3"):
        sample("flux", apply_refdrop(model, reference_count=2, reference_strengths="0.3, 0.3"), batch=2, steps=1)


# ---- float64 references: one Flux double block, one Flux single block, one Qwen-Image block -----------------
# The blocks run in float32 (ComfyUI's rotary kernels take no float64); the reference attention is float64.


def reference_override(reference_rows, coefficients):
    """Eq. 5 / 6 written out per row in float64: softmax(q k^T / sqrt(d) + key mask) v, weights materialised."""

    def attend(q, k, v, mask):
        q, k, v = q.double(), k.double(), v.double()
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        if mask is not None:
            scores = scores + mask.double()
        return torch.softmax(scores, dim=-1) @ v

    def override(func, q, k, v, heads, mask=None, transformer_options=None, **kwargs):
        assert kwargs.get("skip_reshape")  # (B, heads, L, dim), as Flux and Qwen-Image call it
        rows, per = q.shape[0], q.shape[0] // len(transformer_options["cond_or_uncond"])
        outputs = []
        for row in range(rows):
            base, index = row - row % per, row % per
            row_mask = None if mask is None else mask[row]
            own = attend(q[row], k[row], v[row], row_mask)
            if index in reference_rows:
                outputs.append(own)
                continue
            blended = (1 - sum(coefficients)) * own
            for ref, c in zip(reference_rows, coefficients, strict=True):
                ref_mask = None if mask is None else mask[base + ref]  # the reference row's own key mask
                blended = blended + c * attend(q[row], k[base + ref], v[base + ref], ref_mask)
            outputs.append(blended)
        out = torch.stack(outputs)  # (B, heads, L, dim)
        return out.transpose(1, 2).reshape(rows, q.shape[2], -1).to(q.dtype)

    return override


def block_options(model, order, block_type, index, override=None):
    options = dict(model.model_options.get("transformer_options", {}))
    if override is not None:
        options[OVERRIDE_KEY] = override
    ours = options.get(OVERRIDE_KEY)
    if hasattr(ours, "state_key"):
        options[ours.state_key] = ForwardState({})
    options.update(cond_or_uncond=list(order), block_type=block_type, block_index=index)
    return options


@pytest.fixture(scope="module")
def flux():
    return tiny_dits.tiny_dit("flux", seed=3)


@pytest.fixture(scope="module")
def qwen():
    return tiny_dits.tiny_dit("qwen_image", seed=4)


def flux_inputs(model, rows, seed, txt=4, img=16):
    dm = model.model.diffusion_model
    g = torch.Generator().manual_seed(seed)
    width = dm.hidden_size
    img_ids = torch.zeros(rows, img, 3)
    img_ids[..., 1] = torch.arange(img).div(4, rounding_mode="floor").float()
    img_ids[..., 2] = torch.arange(img).remainder(4).float()
    ids = torch.cat((torch.zeros(rows, txt, 3), img_ids), dim=1)
    pe = dm.pe_embedder(ids)
    return (
        torch.randn(rows, img, width, generator=g, dtype=torch.float32),
        torch.randn(rows, txt, width, generator=g, dtype=torch.float32),
        torch.randn(rows, width, generator=g, dtype=torch.float32),
        pe,
    )


def run_flux_block(model, kind, inputs, options):
    dm = model.model.diffusion_model
    img, txt, vec, pe = (t.clone() for t in inputs)
    with torch.no_grad():
        if kind == "double":
            img, txt = dm.double_blocks[0](img, txt, vec, pe, transformer_options=options)
            return torch.cat((txt, img), dim=1)
        return dm.single_blocks[0](torch.cat((txt, img), dim=1), vec, pe, transformer_options=options)


LAYOUTS = [[0], [1, 0], [0, 1]]
REFERENCES = [((0,), (0.4,), "0.4"), ((0, 1), (0.3, 0.2), "0.3, 0.2")]


@pytest.mark.parametrize("kind", ["double", "single"])
@pytest.mark.parametrize("order", LAYOUTS)
@pytest.mark.parametrize("refs,coefficients,text", REFERENCES)
def test_flux_block_matches_float64_reference(flux, kind, order, refs, coefficients, text):
    per = 3
    rows = per * len(order)
    inputs = flux_inputs(flux, rows, seed=len(order))
    patched = apply_refdrop(flux, reference_count=len(refs), reference_strengths=text)
    ours = run_flux_block(patched, kind, inputs, block_options(patched, order, kind, 0))
    expected = run_flux_block(flux, kind, inputs, block_options(flux, order, kind, 0,
                                                                  reference_override(refs, coefficients)))  # fmt: skip
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    plain = run_flux_block(flux, kind, inputs, block_options(flux, order, kind, 0))
    assert not torch.allclose(ours, plain, atol=1e-4)
    for chunk in range(len(order)):  # a split call (each chunk alone) gives the same rows
        sl = slice(chunk * per, (chunk + 1) * per)
        alone = run_flux_block(patched, kind, [t[sl] for t in inputs[:3]] + [inputs[3][sl]],
                               block_options(patched, [order[chunk]], kind, 0))  # fmt: skip
        torch.testing.assert_close(alone, ours[sl], rtol=1e-5, atol=1e-5)


def qwen_inputs(model, rows, seed, txt=6, img=16):
    dm = model.model.diffusion_model
    g = torch.Generator().manual_seed(seed)
    width = dm.inner_dim
    img_ids = torch.zeros(rows, img, 3)
    img_ids[..., 1] = torch.arange(img).div(4, rounding_mode="floor").float()
    img_ids[..., 2] = torch.arange(img).remainder(4).float()
    txt_ids = torch.arange(4, 4 + txt).reshape(1, -1, 1).repeat(rows, 1, 3).float()
    pe = dm.pe_embedder(torch.cat((txt_ids, img_ids), dim=1)).float().contiguous()
    text_mask = torch.zeros(rows, txt, dtype=torch.float32)
    for row in range(rows):  # every row pads a different number of text tokens (additive -inf-like mask)
        text_mask[row, txt - row % 3 :] = -1e4 if row % 3 else 0.0
    return (
        torch.randn(rows, img, width, generator=g, dtype=torch.float32),
        torch.randn(rows, txt, width, generator=g, dtype=torch.float32),
        text_mask,
        torch.randn(rows, width, generator=g, dtype=torch.float32),
        pe,
    )


def run_qwen_block(model, inputs, options):
    block = model.model.diffusion_model.transformer_blocks[0]
    img, txt, mask, temb, pe = (t.clone() for t in inputs)
    with torch.no_grad():
        txt, img = block(img, txt, mask, temb, pe, transformer_options=options)
    return torch.cat((txt, img), dim=1)


@pytest.mark.parametrize("order", LAYOUTS)
@pytest.mark.parametrize("refs,coefficients,text", REFERENCES)
def test_qwen_image_block_matches_float64_reference_with_key_masks(qwen, order, refs, coefficients, text):
    per = 3
    inputs = qwen_inputs(qwen, per * len(order), seed=len(order))
    patched = apply_refdrop(qwen, reference_count=len(refs), reference_strengths=text)
    ours = run_qwen_block(patched, inputs, block_options(patched, order, "double", 0))
    expected = run_qwen_block(qwen, inputs, block_options(qwen, order, "double", 0,
                                                            reference_override(refs, coefficients)))  # fmt: skip
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    for chunk in range(len(order)):
        sl = slice(chunk * per, (chunk + 1) * per)
        alone = run_qwen_block(patched, [t[sl] for t in inputs], block_options(patched, [order[chunk]], "double", 0))
        torch.testing.assert_close(alone, ours[sl], rtol=1e-5, atol=1e-5)


def test_two_apply_refdrop_nodes_stack():
    """A second Apply RefDrop chains the first one's override; the reference row still comes out unguided."""
    model = tiny_dits.tiny_dit("flux", seed=5)
    once = apply_refdrop(model, strength=0.2)
    twice = apply_refdrop(once, strength=0.2)
    plain, single, double = (sample("flux", m, steps=1) for m in (model, once, twice))
    torch.testing.assert_close(double[0], plain[0], rtol=1e-5, atol=1e-5)
    assert (double[1:] - single[1:]).abs().mean() > 1e-5  # the outer node blends on top of the inner one


# ---- Apply RefDrop (Reference Image) on Flux ------------------------------------------------------------------


def apply_reference_image(model, image, vae, strength=0.4, seed=3, skip_up1=False, exclude_blocks="", mask=None):
    from refguide.nodes.refdrop import ApplyRefDropImage

    return ApplyRefDropImage.execute(model, vae, image, strength, seed, skip_up1, "", exclude_blocks, 0.0, 1.0,
                                     mask).args[0]  # fmt: skip


def test_reference_image_on_flux_equals_an_in_batch_reference_made_the_samplers_way():
    """One model call: the picture, VAE-encoded, put through the model's own process_latent_in and flow noise
    scaling, guides exactly as the same latent would as row 0 of the batch with in-batch Apply RefDrop."""
    model, vae = tiny_dits.tiny_dit("flux", seed=6), tiny_dits.tiny_flux_vae()
    image = torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(1))
    patched = apply_reference_image(model, image, vae, strength=0.4, seed=3)
    base = model.model
    g = torch.Generator().manual_seed(4)
    rows, sigma = 2, 0.6
    x = torch.randn(rows, 16, 16, 16, generator=g)
    context = torch.randn(rows, 8, 32, generator=g)
    pooled = torch.randn(rows, 64, generator=g)
    guidance = torch.full((rows,), 3.5)

    def call(patcher, x, context, pooled, guidance):
        options = dict(patcher.model_options["transformer_options"], cond_or_uncond=[0])
        options["wrappers"] = comfy.patcher_extension.copy_nested_dicts(patcher.wrappers)
        t = torch.full((x.shape[0],), sigma)
        with torch.no_grad():
            return base.apply_model(x, t, c_crossattn=context, y=pooled, guidance=guidance,
                                    transformer_options=options)  # fmt: skip

    ours = call(patched, x, context, pooled, guidance)
    z = vae.encode(image)  # (1, 16, 16, 16): already the latent's size
    eps = comfy.sample.prepare_noise(z, 3)
    x_ref = base.model_sampling.noise_scaling(torch.tensor([sigma]), eps, base.process_latent_in(z))
    in_batch = apply_refdrop(model, strength=0.4)
    expected = call(in_batch, torch.cat((x_ref, x)), torch.cat((context[:1], context)),
                    torch.cat((pooled[:1], pooled)), torch.cat((guidance[:1], guidance)))[1:]  # fmt: skip
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    plain = call(model, x, context, pooled, guidance)
    assert not torch.allclose(ours, plain, atol=1e-4)


def test_reference_image_on_flux_samples_and_refuses_what_it_cannot_do():
    model, vae = tiny_dits.tiny_dit("flux", seed=6), tiny_dits.tiny_flux_vae()
    image = torch.rand(1, 96, 160, 3, generator=torch.Generator().manual_seed(2))  # another size than the latent
    plain = sample("flux", model, steps=2)
    guided = sample("flux", apply_reference_image(model, image, vae, exclude_blocks="single 1"), steps=2)
    assert torch.isfinite(guided).all() and (guided - plain).abs().mean() > 1e-4 * plain.abs().mean()
    assert torch.equal(sample("flux", apply_reference_image(model, image, vae, strength=0.0), steps=2), plain)
    # stacked with in-batch Apply RefDrop, in either order: the reference-image override stays outermost
    first = apply_refdrop(apply_reference_image(model, image, vae), strength=0.3)
    second = apply_reference_image(apply_refdrop(model, strength=0.3), image, vae)
    torch.testing.assert_close(sample("flux", first, steps=1), sample("flux", second, steps=1))
    with pytest.raises(ValueError, match="skip_up1.*exclude_blocks"):
        apply_reference_image(model, image, vae, skip_up1=True)
    whole = sample("flux", apply_reference_image(model, image, vae), steps=1)
    white = apply_reference_image(model, image, vae, mask=torch.ones(1, 96, 160))  # all white = no mask
    torch.testing.assert_close(sample("flux", white, steps=1), whole)
    half = torch.zeros(1, 96, 160)
    half[:, :, :80] = 1.0  # a subject mask: only the left half of the picture's image tokens (and its text) guide
    assert not torch.allclose(sample("flux", apply_reference_image(model, image, vae, mask=half), steps=1), whole)
    with pytest.raises(ValueError, match="Valid names: double 0"):
        apply_reference_image(model, image, vae, exclude_blocks="output 0")
    from refguide_testing.tiny_wan import tiny_wan  # every image DiT family is accepted; video DiTs are not

    with pytest.raises(ValueError, match="Wan 2.1 / 2.2 model .*use the 'Temporal RefDrop' node instead"):
        apply_reference_image(tiny_wan("t2v", num_layers=1), image, vae)
