"""One UNet model call as ComfyUI's sampler makes it, and the reference-image rows written out independently of the
pack (for tests of Apply RefDrop (Reference Image) and of patches that meet its rows)."""

from __future__ import annotations

import comfy.patcher_extension
import comfy.sample
import comfy.utils
import torch


def model_call(patcher, x, sigma, context, y, cond_or_uncond, control=None):
    """One model call as ComfyUI's sampler makes it (_calc_cond_batch -> apply_model), wrappers included."""
    options = dict(patcher.model_options.get("transformer_options", {}))
    options["wrappers"] = comfy.patcher_extension.copy_nested_dicts(patcher.wrappers)
    options["cond_or_uncond"] = list(cond_or_uncond)
    per_chunk = x.shape[0] // len(cond_or_uncond)
    options["sigmas"] = torch.full((per_chunk,), sigma)
    t = torch.full((x.shape[0],), sigma)
    with torch.no_grad():
        return patcher.model.apply_model(x, t, c_crossattn=context, control=control, y=y, transformer_options=options)


def noised_references(model, vae, image, size, sigma, seed):
    """x_ref written out from the issue: VAE Encode, common_upscale, prepare_noise, noise_scaling."""
    latent = vae.encode(image)
    z = comfy.utils.common_upscale(latent, size[1], size[0], "bilinear", "center")
    eps = comfy.sample.prepare_noise(z, seed)
    sampling = model.model.model_sampling
    return sampling.noise_scaling(torch.full((z.shape[0],), sigma), eps, model.model.process_latent_in(z))


def in_front(tensor, chunks, extra_rows):
    """``extra_rows`` (E, ...) or an int (E copies of each chunk's first row) in front of every chunk."""
    per = tensor.shape[0] // chunks
    parts = []
    for chunk in range(chunks):
        own = tensor[chunk * per : (chunk + 1) * per]
        parts += [own[:1].repeat(extra_rows, *[1] * (own.ndim - 1)) if isinstance(extra_rows, int) else extra_rows, own]
    return torch.cat(parts)


def own_rows(tensor, chunks, extra):
    """Each chunk's rows after its first ``extra``."""
    per = tensor.shape[0] // chunks
    return torch.cat([tensor[c * per + extra : (c + 1) * per] for c in range(chunks)])
