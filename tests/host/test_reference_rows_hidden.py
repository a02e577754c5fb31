"""Apply RefDrop (Reference Image)'s rows stay hidden from every other node's per-row patch point.

The reference pictures run as extra rows in front of each guidance chunk (``reference_rows.ReferenceRows``).
Other nodes' attn1/attn2 replaces (UNets) and attention overrides (diffusion transformers) must get the latent
batch's own rows only, before or after the node in the chain, and the reference rows run there as the model runs
them without that patch. Expected outputs are computed independently: in-batch Apply RefDrop with the noised
reference rows in front (``refguide_testing.model_calls``) and the other patch written for that longer batch.
"""

from __future__ import annotations

import comfy.patcher_extension
import comfy.sample
import pytest
import torch
from refguide.comfy_patches.attention_calls import plain_attention
from refguide.comfy_patches.dit_override import EXTRA_CALL_KEY, OVERRIDE_KEY
from refguide.comfy_patches.easyref_patch import DecoupledCrossAttention
from refguide.comfy_patches.model_families import model_family
from refguide.comfy_patches.reference_rows import REFERENCE_ROWS_KEY
from refguide.nodes.refdrop import ApplyRefDrop, ApplyRefDropImage
from refguide_testing import tiny_dits, tiny_models
from refguide_testing.model_calls import in_front, model_call, noised_references, own_rows

SEED = 123
CONTEXT = 2048


def apply_image(model, vae, image, strength=0.4, seed=SEED, reference_strengths=""):
    return ApplyRefDropImage.execute(model, vae, image, strength, seed, False, reference_strengths, "", 0.0, 1.0,
                                     None).args[0]  # fmt: skip


def apply_inbatch(model, strength=0.4, reference_count=1, reference_strengths=""):
    return ApplyRefDrop.execute(model, strength, reference_count, False, reference_strengths, "").args[0]


def picture(count=1, height=96, width=160, seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    base = torch.stack([xx, yy, 0.5 * (xx + yy)], -1)
    return (base + 0.2 * torch.rand(count, height, width, 3, generator=g)).clamp(0, 1)


def chunk_rows(extra_options: dict, rows: int, images: int) -> int:
    """The number of chunks of a call, after checking that every chunk holds exactly ``images`` rows: a per-image
    patch that met the reference rows would index a wrong image, so it fails loudly here instead."""
    chunks = len(extra_options.get("cond_or_uncond") or [0])
    if rows != chunks * images:
        raise AssertionError(f"{rows} rows in {chunks} chunk(s) for {images} images per chunk")
    return chunks


# ---- UNets: another node's attn2 replace with per-image masks --------------------------------------------------


class PerImageCrossAttention:
    """Another node's attn2 replace with one attention mask per image (as an IPAdapter with per-image masks):
    image i of every chunk gets its cross-attention output scaled by ``factors[i]``. Records what it was called
    with."""

    def __init__(self, factors):
        self.factors = torch.tensor(factors)
        self.calls = []

    def __call__(self, q, k, v, extra_options):
        self.calls.append(
            (q.shape[0], k.shape[0], v.shape[0], list(extra_options["activations_shape"]),
             extra_options.get(REFERENCE_ROWS_KEY))
        )  # fmt: skip
        chunks = chunk_rows(extra_options, q.shape[0], len(self.factors))
        out = plain_attention(q, k, v, extra_options)
        return out * self.factors.repeat(chunks).view(-1, 1, 1).to(out)


class PerImageBranch:
    """Another node's branch in Apply EasyRef's attn2 object (IPAdapter protocol): a per-image term
    ``gains[i] * out`` added for image i of every chunk."""

    def __init__(self, gains):
        self.gains = torch.tensor(gains)
        self.calls = []

    def __call__(self, out, q, k, v, extra_options, **kwargs):
        self.calls.append((out.shape[0], q.shape[0], extra_options.get(REFERENCE_ROWS_KEY)))
        chunks = chunk_rows(extra_options, q.shape[0], len(self.gains))
        return out * self.gains.repeat(chunks).view(-1, 1, 1).to(out)


def set_attn2(model, make_patch):
    """A clone of ``model`` with ``make_patch()`` as the attn2 replace of every cross-attention layer."""
    patched = model.clone()
    for block in model_family(model).unet_blocks:
        for key in block.keys():
            patched.set_model_attn2_replace(make_patch(), *key)
    return patched


def decoupled(factors, gains):
    """Apply EasyRef's attn2 object chaining another node's replace, with another node's branch added to it."""
    obj = DecoupledCrossAttention(inner=PerImageCrossAttention(factors))
    obj.add(PerImageBranch(gains))
    return obj


@pytest.fixture(scope="module")
def sdxl():
    return tiny_models.tiny_unet("sdxl", seed=0)


@pytest.fixture(scope="module")
def vae():
    return tiny_models.tiny_vae()


def unet_inputs(rows, seed=0, size=(16, 24)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 4, *size, generator=g) * 3
    context = torch.randn(rows, 8, CONTEXT, generator=g)
    y = torch.randn(rows, tiny_models.TINY_SDXL_UNET["adm_in_channels"], generator=g)
    return x, context, y


def recorded(model, kind):
    """The recording objects of the attn2 patches in ``model``'s options: (replaces, branches)."""
    replaces, branches = [], []
    for obj in model.model_options["transformer_options"]["patches_replace"]["attn2"].values():
        if kind == "decoupled":
            replaces.append(obj.inner)
            branches += [c for c in obj.callback if isinstance(c, PerImageBranch)]
        else:
            replaces.append(obj)
    return replaces, branches


@pytest.mark.parametrize("kind", ["replace", "decoupled"])
@pytest.mark.parametrize("foreign_first", [True, False])
@pytest.mark.parametrize("order,references", [([1, 0], 1), ([0], 2)])
def test_a_per_image_attn2_patch_sees_only_the_latent_batch(sdxl, vae, kind, foreign_first, order, references):
    """Before or after the node: the attn2 patch (and another node's branch in Apply EasyRef's attn2 object) gets
    the latent batch's rows, and the call equals in-batch RefDrop with the noised references in front where the
    patch treats those rows as the layer without it does (factor 1, no branch term)."""
    per_chunk, sigma, size = 2, 4.0, (16, 24)
    factors, gains = [0.5, 1.75], [0.25, -0.5]
    strengths = ", ".join(["0.35", "0.2"][:references])
    image = picture(references)
    x, context, y = unet_inputs(per_chunk * len(order), seed=len(order) + references, size=size)

    def make():
        return decoupled(factors, gains) if kind == "decoupled" else PerImageCrossAttention(factors)

    if foreign_first:
        patched = apply_image(set_attn2(sdxl, make), vae, image, reference_strengths=strengths)
    else:
        patched = set_attn2(apply_image(sdxl, vae, image, reference_strengths=strengths), make)
    out = model_call(patched, x, sigma, context, y, order)

    replaces, branches = recorded(patched, kind)
    rows = per_chunk * len(order)
    calls = [call for patch in replaces for call in patch.calls]
    assert calls and all(call[:3] == (rows, rows, rows) and call[3][0] == rows and not call[4] for call in calls)
    branch_calls = [call for branch in branches for call in branch.calls]
    assert len(branch_calls) == (len(calls) if kind == "decoupled" else 0)
    assert all(call == (rows, rows, 0) for call in branch_calls)

    # the model's options still hold the other node's own objects (they are made row-safe per call only)
    attn2 = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    if kind == "decoupled":
        assert all(isinstance(obj.inner, PerImageCrossAttention) for obj in attn2.values())
        assert all(isinstance(obj.callback[0], PerImageBranch) for obj in attn2.values())
    else:
        assert all(isinstance(obj, PerImageCrossAttention) for obj in attn2.values())

    chunks = len(order)
    x_ref = noised_references(sdxl, vae, image, size, sigma, SEED)
    in_front_factors, in_front_gains = [1.0] * references + factors, [0.0] * references + gains

    def make_in_front():
        if kind == "decoupled":
            return decoupled(in_front_factors, in_front_gains)
        return PerImageCrossAttention(in_front_factors)

    in_batch = apply_inbatch(set_attn2(sdxl, make_in_front), reference_count=references, reference_strengths=strengths)
    expected = model_call(in_batch, in_front(x, chunks, x_ref), sigma, in_front(context, chunks, references),
                          in_front(y, chunks, references), order)  # fmt: skip
    torch.testing.assert_close(out, own_rows(expected, chunks, references), rtol=1e-5, atol=1e-5)

    # the patch changes the result (it is not a no-op), and without reference images it runs as it did
    plain_patch = model_call(set_attn2(sdxl, make), x, sigma, context, y, order)
    assert not torch.allclose(out, plain_patch, atol=1e-4)


def test_apply_easyref_object_alone_is_left_as_it_is():
    """Apply EasyRef's own attn2 object without another node's parts reads the reference rows itself: it is not
    wrapped (its branches give those rows the first image's mask; see test_apply_easyref)."""
    from refguide.comfy_patches.reference_rows import (
        BranchWithoutReferenceRows,
        WithoutReferenceRows,
        hide_reference_rows,
        row_safe,
    )

    obj = DecoupledCrossAttention()
    assert row_safe(obj) is obj
    replaces = {"attn2": {("output", 1, 0): obj}}
    assert hide_reference_rows(replaces) is replaces
    chained = decoupled([1.0, 1.0], [0.0, 0.0])
    safe = row_safe(chained)
    assert safe is not chained and type(safe) is DecoupledCrossAttention  # a per-call fork ...
    assert type(safe.inner) is WithoutReferenceRows and type(safe.callback[0]) is BranchWithoutReferenceRows
    assert type(chained.inner) is PerImageCrossAttention  # ... the model's object untouched
    assert type(chained.callback[0]) is PerImageBranch


# ---- diffusion transformers: another node's optimized_attention_override ------------------------------------


class RecordingOverride:
    """An override another node could set: passes every call on (to the override it found, when it chains one, else
    to the backend) and records what it saw."""

    def __init__(self, previous=None):
        self.previous = previous
        self.calls = []

    def __call__(self, func, *args, **kwargs):
        options = kwargs.get("transformer_options") or {}
        q, k, v = args[:3]
        self.calls.append(
            {
                "rows": (q.shape[0], k.shape[0], v.shape[0]),
                "chunks": len(options.get("cond_or_uncond") or [0]),
                "extra": bool(options.get(EXTRA_CALL_KEY)),
                "reference_rows": options.get(REFERENCE_ROWS_KEY),
                "inside": kwargs.get("_inside_attn_wrapper", False),
            }
        )
        if self.previous is not None:
            return self.previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    def batch_calls(self):
        return [call for call in self.calls if not call["extra"]]


class PerImageOverride(RecordingOverride):
    """An override that scales image i's attention output of every chunk by ``factors[i]`` (a per-image patch). The
    pack's extra attentions (marked) pass through unscaled, as they are not images of the batch."""

    def __init__(self, factors, previous=None):
        super().__init__(previous)
        self.factors = torch.tensor(factors)

    def __call__(self, func, *args, **kwargs):
        out = super().__call__(func, *args, **kwargs)
        options = kwargs.get("transformer_options") or {}
        if options.get(EXTRA_CALL_KEY):
            return out
        chunks = chunk_rows(options, args[0].shape[0], len(self.factors))
        return out * self.factors.repeat(chunks).view(-1, *[1] * (out.ndim - 1)).to(out)


def set_override(model, make, chain=True):
    """A clone of ``model`` with ``make(previous)`` as its attention override (``previous``: the override it found
    when it chains, else None: it replaces that one)."""
    patched = model.clone()
    options = patched.model_options.setdefault("transformer_options", {})
    previous = options.get(OVERRIDE_KEY) if chain else None
    options[OVERRIDE_KEY] = make(previous)
    return patched, options[OVERRIDE_KEY]


@pytest.fixture(scope="module")
def flux():
    return tiny_dits.tiny_dit("flux", seed=6)


@pytest.fixture(scope="module")
def flux_vae():
    return tiny_dits.tiny_flux_vae()


def flux_image():
    return torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(1))


def flux_inputs(rows, seed=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 16, 16, 16, generator=g)
    context = torch.randn(rows, 8, 32, generator=g)
    pooled = torch.randn(rows, 64, generator=g)
    guidance = torch.full((rows,), 3.5)
    return x, context, pooled, guidance


def flux_call(patcher, inputs, sigma, order):
    """One Flux model call as ComfyUI's sampler makes it (apply_model, the patcher's wrappers included)."""
    x, context, pooled, guidance = inputs
    options = dict(patcher.model_options["transformer_options"], cond_or_uncond=list(order))
    options["wrappers"] = comfy.patcher_extension.copy_nested_dicts(patcher.wrappers)
    t = torch.full((x.shape[0],), sigma)
    with torch.no_grad():
        return patcher.model.apply_model(x, t, c_crossattn=context, y=pooled, guidance=guidance,
                                         transformer_options=options)  # fmt: skip


def flux_in_front(flux, flux_vae, inputs, sigma, order):
    """The call's inputs with the noised reference row in front of every chunk (x_ref; the chunk's first row's
    conditioning), written out from the issue."""
    z = flux_vae.encode(flux_image())  # (1, 16, 16, 16): already the latent's size
    eps = comfy.sample.prepare_noise(z, 3)
    base = flux.model
    x_ref = base.model_sampling.noise_scaling(torch.tensor([sigma]), eps, base.process_latent_in(z))
    chunks = len(order)
    x, *conds = inputs
    return [in_front(x, chunks, x_ref)] + [in_front(c, chunks, 1) for c in conds]


def flux_reference_image(model, flux_vae):
    return apply_image(model, flux_vae, flux_image(), strength=0.4, seed=3)


def assert_batch_rows_only(override, rows, images):
    calls = override.batch_calls()
    assert calls, "the override was never called"
    for call in calls:
        assert call["rows"] == (rows, rows, rows) and rows == call["chunks"] * images and not call["reference_rows"]
    assert all(call["inside"] for call in override.calls)  # _inside_attn_wrapper kept: nothing re-enters


@pytest.mark.parametrize("placement", ["before", "after", "both"])
@pytest.mark.parametrize("order", [[0], [1, 0]])
def test_a_recording_override_sees_only_the_latent_batch_on_flux(flux, flux_vae, placement, order):
    """Set before the node (chained by the pack's override), after it (chaining the pack's override it found), or
    one of each: every call of the other override has the latent batch's rows only, and a pass-through override
    leaves the output exactly as without it."""
    images, sigma = 2, 0.6
    inputs = flux_inputs(images * len(order))
    alone = flux_call(flux_reference_image(flux, flux_vae), inputs, sigma, order)
    recorders, base = [], flux
    if placement in ("before", "both"):
        base, before = set_override(flux, RecordingOverride)
        recorders.append(before)
    patched = flux_reference_image(base, flux_vae)
    if placement in ("after", "both"):
        patched, after = set_override(patched, RecordingOverride)
        recorders.append(after)
    out = flux_call(patched, inputs, sigma, order)
    recorded_plain, plain_recorder = set_override(flux, RecordingOverride)
    flux_call(recorded_plain, inputs, sigma, order)
    assert len(plain_recorder.calls) == 4  # double 0, 1, single 0, 1
    for recorder in recorders:
        assert_batch_rows_only(recorder, images * len(order), images)
        assert len(recorder.batch_calls()) == 4  # every attention call of the model reached it once ...
        # ... and the pack's extra attentions only when it is below the pack's override (the backend role)
        assert any(call["extra"] for call in recorder.calls) == (recorder is recorders[0] and placement != "after")
    torch.testing.assert_close(out, alone, rtol=1e-6, atol=1e-6)
    plain = flux_call(flux, inputs, sigma, order)
    assert not torch.allclose(out, plain, atol=1e-4)  # the reference image still guides


@pytest.mark.parametrize("foreign_first", [True, False])
@pytest.mark.parametrize("order", [[0], [1, 0]])
def test_a_per_image_override_with_reference_image_equals_in_batch_on_flux(flux, flux_vae, foreign_first, order):
    """A per-image override before the node scales the plain attention that the guidance blends with; after the
    node it scales the guided output. Both equal in-batch Apply RefDrop with the noised reference in front and the
    same override written for that batch (factor 1 for the reference row), in the same order."""
    images, sigma, factors = 2, 0.6, [0.5, 1.5]
    inputs = flux_inputs(images * len(order), seed=5)

    def per_image(values):
        return lambda previous: PerImageOverride(values, previous)

    if foreign_first:
        patched = flux_reference_image(set_override(flux, per_image(factors))[0], flux_vae)
        override = patched.model_options["transformer_options"][OVERRIDE_KEY].previous
    else:
        patched, override = set_override(flux_reference_image(flux, flux_vae), per_image(factors))
    out = flux_call(patched, inputs, sigma, order)
    assert_batch_rows_only(override, images * len(order), images)

    with_reference = [1.0] + factors
    if foreign_first:
        in_batch = apply_inbatch(set_override(flux, per_image(with_reference))[0], strength=0.4)
    else:
        in_batch = set_override(apply_inbatch(flux, strength=0.4), per_image(with_reference))[0]
    expected = flux_call(in_batch, flux_in_front(flux, flux_vae, inputs, sigma, order), sigma, order)
    torch.testing.assert_close(out, own_rows(expected, len(order), 1), rtol=1e-5, atol=1e-5)
    guided_only = flux_call(flux_reference_image(flux, flux_vae), inputs, sigma, order)
    assert not torch.allclose(out, guided_only, atol=1e-4)  # the override did act


def test_an_override_that_replaces_the_nodes_own_is_reported_and_sees_only_the_batch(flux, flux_vae, caplog):
    """Set after the node without calling the override it found: ComfyUI's replace semantics (no reference
    guidance), the other override still gets only the batch's rows, and the node says so once."""
    images, sigma, order = 2, 0.6, [1, 0]
    inputs = flux_inputs(images * len(order), seed=7)
    patched, recorder = set_override(flux_reference_image(flux, flux_vae), RecordingOverride, chain=False)
    with caplog.at_level("WARNING"):
        out = flux_call(patched, inputs, sigma, order)
        flux_call(patched, inputs, sigma, order)
    assert_batch_rows_only(recorder, images * len(order), images)
    torch.testing.assert_close(out, flux_call(flux, inputs, sigma, order), rtol=1e-5, atol=1e-5)
    reports = [r for r in caplog.records if "set its own attention override without calling the node's" in r.message]
    assert len(reports) == 1


def flux_sample(model, steps=2, cfg=3.0, batch=2):
    latent = torch.zeros(batch, 16, 16, 16)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(1)
    positive = [[torch.randn(batch, 8, 32, generator=g), {"pooled_output": torch.randn(batch, 64, generator=g)}]]
    negative = [[torch.randn(1, 8, 32, generator=g), {"pooled_output": torch.randn(1, 64, generator=g)}]]
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive, negative, latent, seed=7,
                               disable_pbar=True)  # fmt: skip


@pytest.mark.parametrize("foreign_first", [True, False])
def test_sampling_with_a_recording_override_is_unchanged(flux, flux_vae, foreign_first):
    """ComfyUI's real sampler (cfg 3: negative and positive chunks): same samples with and without a pass-through
    override in either order, and the override never saw the reference rows."""
    batch = 2
    alone = flux_sample(flux_reference_image(flux, flux_vae), batch=batch)
    if foreign_first:
        base, recorder = set_override(flux, RecordingOverride)
        patched = flux_reference_image(base, flux_vae)
    else:
        patched, recorder = set_override(flux_reference_image(flux, flux_vae), RecordingOverride)
    out = flux_sample(patched, batch=batch)
    calls = recorder.batch_calls()
    assert calls and all(call["rows"][0] == call["chunks"] * batch and not call["reference_rows"] for call in calls)
    torch.testing.assert_close(out, alone, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("placement", ["before", "after"])
@pytest.mark.parametrize("order", [[0], [1, 0]])
def test_a_recording_override_sees_only_the_latent_batch_on_a_unet(sdxl, vae, placement, order):
    """On a UNet every attention call (the pack's attn1 replace, cross-attention, another node's attn1 patch) goes
    through the override: it sees the latent batch's rows only, and the output is exactly Reference Image's."""
    images, sigma = 2, 3.0
    x, context, y = unet_inputs(images * len(order), seed=5)
    image = picture()
    alone = model_call(apply_image(sdxl, vae, image), x, sigma, context, y, order)
    if placement == "before":
        base, recorder = set_override(sdxl, RecordingOverride)
        patched = apply_image(base, vae, image)
    else:
        patched, recorder = set_override(apply_image(sdxl, vae, image), RecordingOverride)
    out = model_call(patched, x, sigma, context, y, order)
    assert_batch_rows_only(recorder, images * len(order), images)
    assert any(call["extra"] for call in recorder.calls)  # the pack's extra attentions pass through, marked
    # (the reference rows' attention runs as its own call: float32 rounding of another batch split only)
    torch.testing.assert_close(out, alone, rtol=1e-5, atol=1e-5)


def test_a_per_image_override_on_a_unet_equals_in_batch_with_the_pictures_in_front(sdxl, vae):
    images, sigma, order = 2, 3.0, [1, 0]
    x, context, y = unet_inputs(images * len(order), seed=6)
    image = picture()
    patched, _ = set_override(apply_image(sdxl, vae, image), lambda previous: PerImageOverride([1.1, 0.8], previous))
    out = model_call(patched, x, sigma, context, y, order)
    x_ref = noised_references(sdxl, vae, image, (16, 24), sigma, SEED)
    in_batch, _ = set_override(apply_inbatch(sdxl), lambda previous: PerImageOverride([1.0, 1.1, 0.8], previous))
    expected = model_call(in_batch, in_front(x, 2, x_ref), sigma, in_front(context, 2, 1), in_front(y, 2, 1), order)
    torch.testing.assert_close(out, own_rows(expected, 2, 1), rtol=1e-5, atol=1e-5)
