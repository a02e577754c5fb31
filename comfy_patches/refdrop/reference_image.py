"""Apply RefDrop (Reference Image)'s glue: your own pictures as RefDrop references (our extension).

The model-agnostic wrapper (``..reference_rows.ReferenceRows``) puts the noised reference latents as extra rows
in front of every guidance chunk; on UNets the attn1 replace ``unet.ReferenceImageAttention`` and on diffusion
transformers the policy ``dit.ReferenceImageRows`` make those rows the chunk's references for Eq. 5 / 6.
"""

from __future__ import annotations

import logging

import comfy.patcher_extension
import torch

from ...attention_patches.tokens import TokenMasks
from .. import model_families
from ..dit_override import patch_dit
from ..reference_rows import ReferenceRows
from ..step_window import StepWindow
from .blocks import excluded_blocks, guided_unet_blocks
from .dit import ReferenceImageRows
from .regions import region_masks
from .settings import REFERENCE_IMAGE, RefDropSettings, coefficients_for
from .unet import ReferenceImageAttention, patch_self_attention

logger = logging.getLogger(__name__)

NODE_NAME = REFERENCE_IMAGE
WRAPPER_KEY = "refguide_refdrop_reference_images"


def apply_reference_image(
    model,
    vae,
    image: torch.Tensor,
    strength: float,
    seed: int,
    skip_up1: bool = False,
    reference_strengths: str = "",
    exclude_blocks: str = "",
    start_percent: float = 0.0,
    end_percent: float = 1.0,
    mask: torch.Tensor | None = None,
    regions: torch.Tensor | None = None,
):
    """A clone of ``model`` guided toward the pictures of ``image`` (every image one reference, E of them), each
    within its region of the generated images when ``regions`` (MASK, one per reference) is given.

    References with strength 0 or an all-black subject mask add no row; the others keep the noise the seed
    draws for the whole reference batch. All inputs are checked here; nothing guides -> a plain clone.
    """
    window = StepWindow.from_percents(model, start_percent, end_percent)
    family = model_families.require_family(model, NODE_NAME, (model_families.IMAGE_UNET, model_families.IMAGE_DIT))
    check_vae(model, vae)
    check_images(image, vae)
    references = image.shape[0]
    coefficients = coefficients_for(
        strength, references, reference_strengths or "", f"the `image` batch has {references} reference image(s)"
    )
    excluded = excluded_blocks(family, NODE_NAME, exclude_blocks, skip_up1)
    masks = subject_masks(mask, references, tuple(image.shape[1:3]), vae) if mask is not None else None
    placed = region_masks(regions, references, NODE_NAME)
    keep = []  # references that can change anything: c != 0 and some subject pixel
    for index, coefficient in enumerate(coefficients):
        if masks is not None and float(masks[index].max()) < 0.5:
            logger.warning("%s: the mask of reference %d is all black, so it does not guide.", NODE_NAME, index + 1)
        elif coefficient != 0.0:
            keep.append(index)
    if not keep:
        return model.clone()
    _check_single(model)
    latents = encode_references(model, vae, image)
    if masks is not None:
        masks = masks[keep]
        if bool((masks >= 0.5).all()):
            masks = None  # all white: the whole pictures
    if placed is not None and len(placed) > 1:
        placed = TokenMasks(placed.masks[keep])
    settings = RefDropSettings(tuple(range(len(keep))), tuple(coefficients[i] for i in keep), NODE_NAME, window, placed)
    selected = tuple(keep) if len(keep) < len(coefficients) else None
    if family.is_dit:
        patched = patch_dit(model, family.dit, ReferenceImageRows(settings), excluded)
        rows = ReferenceRows(latents, seed, masks, window, selected)
    else:
        blocks = guided_unet_blocks(family, excluded)
        patched = patch_self_attention(model, settings, blocks, ReferenceImageAttention)
        keys = tuple(key for block in blocks for key in block.keys())
        rows = ReferenceRows(latents, seed, masks, window, selected, keys)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY, rows)
    return patched


def _check_single(model) -> None:
    """One Reference Image node per model (a second one is refused)."""
    if model.get_wrappers(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY):
        raise ValueError(
            f"{NODE_NAME}: this model already has reference images from another {NODE_NAME} node. Use one node "
            "with all references in its `image` batch (Batch Images; each reference is resized to the latent "
            "size anyway) and one strength each in `reference_strengths`."
        )


def _latent_dimensions(model) -> int:
    """2 for image latents (B, C, H, W), 3 for the (B, C, T, H, W) latents of 3-D VAEs (Qwen-Image, Cosmos)."""
    return int(getattr(model.get_model_object("latent_format"), "latent_dimensions", 2))


def check_vae(model, vae, node_name: str = NODE_NAME) -> None:
    """A clear error when the VAE's latents do not fit the model (another checkpoint's VAE): channels and rank."""
    model_channels = model.get_model_object("latent_format").latent_channels
    vae_channels = getattr(vae, "latent_channels", None)
    if vae_channels is not None and vae_channels != model_channels:
        raise ValueError(
            f"{node_name}: the VAE makes {vae_channels}-channel latents but the model samples {model_channels}-channel "
            "latents. Connect the VAE of the same checkpoint as the model (the loader's VAE output)."
        )
    model_dims, vae_dims = _latent_dimensions(model), getattr(vae, "latent_dim", None)
    if isinstance(vae_dims, int) and vae_dims != model_dims:
        kinds = {2: "image (2-D)", 3: "video (3-D)"}
        raise ValueError(
            f"{node_name}: the VAE is a {kinds.get(vae_dims, f'{vae_dims}-D')} VAE but the model samples "
            f"{kinds.get(model_dims, f'{model_dims}-D')} latents. Connect the VAE of the same checkpoint as the model "
            "(the loader's VAE output)."
        )


def check_images(images: torch.Tensor, vae, node_name: str = NODE_NAME) -> None:
    """A clear error for a reference batch the VAE cannot encode: no images, or smaller than one latent pixel."""
    if images.shape[0] == 0:
        raise ValueError(f"{node_name}: `image` is an empty batch (0 images): connect at least one reference picture.")
    ratio = vae.spacial_compression_encode()
    height, width = images.shape[1:3]
    if height < ratio or width < ratio:
        raise ValueError(
            f"{node_name}: `image` is {width}x{height} pixels, smaller than one latent pixel of the VAE "
            f"({ratio}x{ratio}): use a reference picture of at least {ratio}x{ratio} pixels (a few hundred a side works best)."
        )


def encode_references(model, vae, images: torch.Tensor, node_name: str = NODE_NAME) -> torch.Tensor:
    """The references' latents (E, C, h, w), or (E, C, 1, h, w) for a model with a 3-D VAE (Qwen-Image, Cosmos),
    each exactly as the VAE Encode node makes it for that picture (the VAE was checked by :func:`check_vae`).

    A 3-D VAE reads an image batch as the frames of one video, so its pictures are encoded one at a time."""
    if getattr(vae, "latent_dim", 2) == 3 and not getattr(vae, "not_video", False) and images.shape[0] > 1:
        latents = torch.cat([vae.encode(images[i : i + 1]) for i in range(images.shape[0])])
    else:
        latents = vae.encode(images)
    model_channels = model.get_model_object("latent_format").latent_channels
    rank = _latent_dimensions(model) + 2
    frames_ok = rank == 4 or (latents.ndim == 5 and latents.shape[2] == 1)
    if latents.ndim != rank or latents.shape[1] != model_channels or not frames_ok:
        raise ValueError(
            f"{node_name}: the VAE encoded the references to a latent of shape {tuple(latents.shape)}, but the model "
            f"samples {model_channels}-channel {rank}-D latents (one frame a picture). Connect the VAE of the same "
            "checkpoint as the model."
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
