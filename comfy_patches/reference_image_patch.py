"""Reference images for RefDrop on UNets: the attn1 side of "Apply RefDrop (Reference Image)".

The model-agnostic wrapper (``reference_rows.ReferenceRows``) puts the noised reference latents as extra rows
in front of every guidance chunk and publishes their count in ``transformer_options[REFERENCE_ROWS_KEY]``.
This attn1 replace reads it: the extra rows are the chunk's references for Eq. 5/6, applied on top of what
the inner self-attention computed (an in-batch Apply RefDrop included), with optional subject masks (our
extension). The extra rows themselves keep what the inner attention computed for them.
"""

from __future__ import annotations

import comfy.patcher_extension
import torch

from ..attention_patches.layout import ChunkLayout, chunk_layout
from ..attention_patches.rfg import subject_token_mask
from .attention_override import ReferenceImageRows, patch_dit
from .refdrop_patch import RefDropAttention, RefDropSettings, patch_self_attention
from .reference_rows import REFERENCE_MASKS_KEY, REFERENCE_ROWS_KEY, ReferenceRows

NODE_NAME = "Apply RefDrop (Reference Image)"
WRAPPER_KEY = "refguide_refdrop_reference_images"


class ReferenceImageAttention(RefDropAttention):
    """attn1 replace: inner self-attention, then Eq. 6 toward the reference-image rows in front of each chunk.

    Stays the outermost attn1 patch of its layer (an in-batch Apply RefDrop applied later goes inside it), so
    its guidance always applies on top of the in-batch guidance. Calls without reference rows (outside the
    step window) return the inner attention unchanged.
    """

    stays_outermost = True

    def with_inner(self, inner) -> ReferenceImageAttention:
        return type(self)(self.settings, self.notice, inner)

    def layout(self, q, k, v, extra_options) -> ChunkLayout | None:
        extra = extra_options.get(REFERENCE_ROWS_KEY)
        if not extra or not self.guidable_call(q, k, v, extra_options):
            return None
        if extra != len(self.settings.coefficients):
            self.notice.report(f"{extra} reference rows for {len(self.settings.coefficients)} reference images")
            return None
        chunks = self.chunk_count(q, extra_options)
        layout = chunk_layout(q.shape[0], chunks, tuple(range(extra)))
        if layout is None or layout.rows_per_chunk <= extra:
            self.notice.report(f"{q.shape[0]} rows do not split into {chunks} chunks with {extra} reference rows")
            return None
        if extra_options.get(REFERENCE_MASKS_KEY) is not None and len(extra_options.get("activations_shape", ())) != 4:
            self.notice.report("the feature map's grid is unknown, so the subject masks cannot be placed")
            return None
        return layout

    def reference_masks(self, extra_options, layout) -> torch.Tensor | None:
        masks = extra_options.get(REFERENCE_MASKS_KEY)
        if masks is None:
            return None
        height, width = extra_options["activations_shape"][2:]
        return subject_token_mask(masks, (height, width))


def apply_reference_images(
    model,
    latents: torch.Tensor,
    coefficients: tuple[float, ...],
    seed: int,
    masks: torch.Tensor | None,
    blocks,
    sigma_range: tuple[float, float] | None = None,
    selected: tuple[int, ...] | None = None,
):
    """A clone of a UNet ``model`` guided toward reference latents (E, C, H, W): attn1 patches plus the row wrapper.

    ``selected`` are the references that guide (one coefficient each; None = all of ``latents``).
    """
    settings = _settings(model, coefficients, sigma_range)
    blocks = list(blocks)
    patched = patch_self_attention(model, settings, blocks, ReferenceImageAttention)
    keys = tuple(key for block in blocks for key in block.keys())
    return _with_reference_rows(patched, ReferenceRows(latents, seed, masks, sigma_range, selected, keys))


def apply_reference_images_dit(
    model,
    latents: torch.Tensor,
    coefficients: tuple[float, ...],
    seed: int,
    excluded: set[str],
    sigma_range: tuple[float, float] | None = None,
    selected: tuple[int, ...] | None = None,
):
    """A clone of a diffusion transformer guided toward reference latents (E, C, H, W): the DiT attention override
    (``attention_override.ReferenceImageRows``) plus the same row wrapper as on UNets (no subject masks)."""
    settings = _settings(model, coefficients, sigma_range)
    patched = patch_dit(model, ReferenceImageRows(settings), excluded)
    return _with_reference_rows(patched, ReferenceRows(latents, seed, None, sigma_range, selected))


def _settings(model, coefficients: tuple[float, ...], sigma_range) -> RefDropSettings:
    """The references' settings; one Reference Image node per model (a second one is refused)."""
    if model.get_wrappers(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY):
        raise ValueError(
            f"{NODE_NAME}: this model already has reference images from another {NODE_NAME} node. Use one node "
            "with all references in its `image` batch (Batch Images; each reference is resized to the latent "
            "size anyway) and one strength each in `reference_strengths`."
        )
    return RefDropSettings(tuple(range(len(coefficients))), tuple(coefficients), NODE_NAME, sigma_range)


def _with_reference_rows(patched, rows: ReferenceRows):
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY, rows)
    return patched


def check_vae(model, vae) -> None:
    """A clear error when the VAE's latents do not fit the model (another checkpoint's VAE)."""
    model_channels = model.get_model_object("latent_format").latent_channels
    vae_channels = getattr(vae, "latent_channels", None)
    if vae_channels is not None and vae_channels != model_channels:
        raise ValueError(
            f"{NODE_NAME}: the VAE makes {vae_channels}-channel latents but the model samples {model_channels}-channel "
            "latents. Connect the VAE of the same checkpoint as the model (the loader's VAE output)."
        )


def check_images(images: torch.Tensor, vae) -> None:
    """A clear error for a reference batch the VAE cannot encode: no images, or smaller than one latent pixel."""
    if images.shape[0] == 0:
        raise ValueError(f"{NODE_NAME}: `image` is an empty batch (0 images): connect at least one reference picture.")
    ratio = vae.spacial_compression_encode()
    height, width = images.shape[1:3]
    if height < ratio or width < ratio:
        raise ValueError(
            f"{NODE_NAME}: `image` is {width}x{height} pixels, smaller than one latent pixel of the VAE "
            f"({ratio}x{ratio}): use a reference picture of at least {ratio}x{ratio} pixels (a few hundred a side works best)."
        )


def encode_references(model, vae, images: torch.Tensor) -> torch.Tensor:
    """The references' latents (E, C, h, w), each at its own size, exactly as the VAE Encode node makes them."""
    check_vae(model, vae)
    latents = vae.encode(images)
    model_channels = model.get_model_object("latent_format").latent_channels
    if latents.ndim != 4 or latents.shape[1] != model_channels:
        raise ValueError(
            f"{NODE_NAME}: the VAE encoded the references to a latent of shape {tuple(latents.shape)}, but the model "
            f"samples {model_channels}-channel image latents. Connect the VAE of the same checkpoint as the model."
        )
    return latents


def subject_masks(mask: torch.Tensor, references: int, image_size: tuple[int, int], vae) -> torch.Tensor:
    """Subject masks (references, H', W') in [0, 1] on the pixels VAE Encode keeps (our extension).

    ``mask`` is a ComfyUI MASK (one for every reference, or one per reference); a mask of another size than
    the images is stretched to them first. The VAE's own crop to whole latent pixels is applied, so mask and
    reference latent cover the same area.
    """
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.shape[0] not in (1, references):
        raise ValueError(
            f"{NODE_NAME}: {mask.shape[0]} masks for {references} reference image(s). Give one mask for all "
            f"references or exactly one per reference (in the order of the `image` batch)."
        )
    mask = mask.float().clamp(0.0, 1.0).expand(references, *mask.shape[1:])
    height, width = image_size
    if tuple(mask.shape[-2:]) != (height, width):
        mask = torch.nn.functional.interpolate(mask.unsqueeze(1), size=(height, width), mode="bilinear").squeeze(1)
    if getattr(vae, "crop_input", False):
        ratio = vae.spacial_compression_encode()
        for dim, size in ((1, height), (2, width)):
            kept = size // ratio * ratio
            if kept != size:
                mask = mask.narrow(dim, (size % ratio) // 2, kept)
    return mask.contiguous()
