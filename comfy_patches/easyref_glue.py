"""EasyRef in ComfyUI: load the EasyRef model under ComfyUI's model management, encode a reference group with
progress and interruption, and patch a UNet's cross-attention (:func:`patch_cross_attention`, the counterpart of
RefDrop's ``refdrop_patch.patch_self_attention``).

What Apply EasyRef adds to a clone of an SDXL model (README, "Apply EasyRef"): the checkpoint's UNet LoRA as
ComfyUI weight patches (``easyref_lora``), one :class:`~.easyref_patch.ReferenceProjections` module wrapped in a
ModelPatcher and registered once as an additional model (so ComfyUI loads it with the UNet), and one attn2 object
per layer that adds the reference term of decoupled cross-attention (``easyref_patch``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import torch

from ..easyref import checkpoint as ckpt
from ..easyref import embeds as embeds_mod
from ..easyref import encoder
from . import easyref_lora, easyref_patch, model_families, unet_blocks
from .step_window import StepWindow

NODE_NAME = "Apply EasyRef"
# The additional-models key under which the reference K/V projections are registered with ComfyUI.
PROJECTIONS_KEY = "easyref_projections"
DTYPES = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# ---------------------------------------------------------------------------------------------
# The MLLM half
# ---------------------------------------------------------------------------------------------


def load_easyref_model(mllm_dir: str, checkpoint_path: str, dtype: str = "auto") -> encoder.EasyRefModel:
    """The EasyRef model with its MLLM wrapped in a ModelPatcher on ComfyUI's text-encoder devices.

    ``dtype`` is a key of :data:`DTYPES`; "auto" is bf16 where ComfyUI supports it on that device, else fp32.
    """
    load_device = mm.text_encoder_device()
    weight_dtype = DTYPES[dtype] or (torch.bfloat16 if mm.should_use_bf16(load_device) else torch.float32)
    model = encoder.load_easyref(mllm_dir, checkpoint_path, dtype=weight_dtype)
    model.patcher = comfy.model_patcher.ModelPatcher(
        model.mllm, load_device=load_device, offload_device=mm.text_encoder_offload_device()
    )
    return model


def encode_reference_group(easyref: encoder.EasyRefModel, images: list, prompt: str) -> embeds_mod.EasyRefEmbeds:
    """Reference tokens of ``images`` (any sizes) and ``prompt``, plus the unconditional tokens (computed once per
    loaded model), with ComfyUI's progress bar and interruption."""
    if not images:
        raise ValueError(
            "Encode Reference Group: the reference group is empty (nothing connected, or an image batch with no "
            "images): connect at least one reference image to 'images' or 'references'."
        )
    mm.load_models_gpu([easyref.patcher], force_full_load=True)
    needs_uncond = not easyref.has_unconditional
    pbar = comfy.utils.ProgressBar(len(images) + 1 + (1 if needs_uncond else 0))
    interrupt = mm.throw_exception_if_processing_interrupted
    cond = easyref.encode(images, prompt, on_image_done=lambda: pbar.update(1), check_interrupt=interrupt)
    pbar.update(1)
    uncond = easyref.unconditional(check_interrupt=interrupt)
    if needs_uncond:
        pbar.update(1)
    return embeds_mod.EasyRefEmbeds(
        cond=cond.cpu(),
        uncond=uncond.cpu(),
        num_references=len(images),
        prompt=prompt,
        fingerprint=easyref.fingerprint,
        checkpoint_name=easyref.checkpoint_name,
    )


# ---------------------------------------------------------------------------------------------
# The UNet half
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EasyRefSettings:
    """What one Apply EasyRef node asks for."""

    weight: float = 1.0  # scale of the reference attention (0: no reference branch)
    lora_strength: float = 1.0  # strength of the checkpoint's UNet LoRA (0: UNet weights untouched)
    start_percent: float = 0.0  # the node's start_at / end_at: the StepWindow where the reference branch acts
    end_percent: float = 1.0
    mask: torch.Tensor | None = field(default=None, compare=False)  # our extension: where the tokens act


def projection_dtype(model) -> torch.dtype:
    """The UNet's compute dtype for the reference K/V projections (its storage dtype unless that is fp8)."""
    dtype = model.model_dtype()
    if dtype in (torch.float32, torch.float16, torch.bfloat16):
        return dtype
    return getattr(model.model, "manual_cast_dtype", None) or torch.float16


def reference_projections(model, easyref, layout: easyref_lora.ProcessorMap) -> comfy.model_patcher.ModelPatcher:
    """The to_k_ip / to_v_ip of every attn2 layer in one module, in a ModelPatcher on the UNet's devices."""
    weights = {
        layer.name: ckpt.reference_projection_weights(easyref.unet_state_dict, layer.processor)
        for layer in layout.cross_layers
    }
    module = easyref_patch.ReferenceProjections(weights, dtype=projection_dtype(model))
    return comfy.model_patcher.ModelPatcher(module, load_device=model.load_device, offload_device=model.offload_device)


def patch_cross_attention(model, easyref, embeds, settings: EasyRefSettings):
    """A clone of the SDXL ``model`` with EasyRef's UNet LoRA and decoupled cross-attention on every attn2.

    Refuses other model families, embeds of another checkpoint and UNets whose layers do not fit the checkpoint's
    processors, each with a message that says why. An attn2 object already there is joined (IPAdapter protocol)
    or chained, never overwritten; the input model is never changed.
    """
    embeds_mod.check_fingerprint(embeds, easyref.fingerprint, easyref.checkpoint_name)
    model_families.require_family(model, NODE_NAME, (model_families.IMAGE_UNET,), (model_families.SDXL,))
    if embeds.cond.shape[-1] != easyref.cross_dim:
        raise ValueError(
            f"The EasyRef embeds have width {embeds.cond.shape[-1]}, the EasyRef model {easyref.cross_dim}."
        )
    layout = easyref_lora.map_processors(model, easyref.unet_state_dict, easyref.cross_dim)
    patched = model.clone()
    if settings.lora_strength != 0.0:
        patched.add_patches(easyref_lora.lora_patches(easyref.unet_state_dict, layout), settings.lora_strength)
    if settings.weight == 0.0:
        return patched

    projections = reference_projections(model, easyref, layout)
    patched.set_additional_models(
        PROJECTIONS_KEY, patched.get_additional_models_with_key(PROJECTIONS_KEY) + [projections]
    )
    window = StepWindow.from_percents(model, settings.start_percent, settings.end_percent)
    kwargs = easyref_patch.window_kwargs(window)
    mask = settings.mask.float().cpu() if settings.mask is not None else None
    notice = easyref_patch.fallback_notice(NODE_NAME)
    for layer in layout.cross_layers:
        branch = easyref_patch.EasyRefBranch(
            projections.model, layer.name, embeds.cond, embeds.uncond, settings.weight, mask=mask, notice=notice
        )
        existing = unet_blocks.existing_replace(patched, "attn2", layer.block_key)
        patched.set_model_attn2_replace(easyref_patch.attach(existing, branch, kwargs), *layer.block_key)
    easyref_patch.install_fork_on_clone(patched)
    return patched
