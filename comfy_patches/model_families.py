"""Which family a ComfyUI MODEL belongs to, and the one check every node uses to accept or refuse it.

A family has a user-facing name ("SDXL", "Stable Video Diffusion", ...) and a kind that decides which node
handles it. Refusals name the node to use instead, or the families the node supports.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import coverage, dit_families, unet_blocks
from .dit_families import DiTFamily
from .unet_blocks import TransformerBlock

IMAGE_UNET = "image UNet"
VIDEO_UNET = "video UNet"
IMAGE_DIT = "image diffusion transformer"
VIDEO_DIT = "video diffusion transformer"
OTHER = "other"

# The node that handles each kind, named in refusals ("use ... instead").
NODE_FOR_KIND = {
    IMAGE_UNET: "Apply RefDrop",
    VIDEO_UNET: "SVD Temporal RefDrop",
    IMAGE_DIT: "Apply RefDrop",
    VIDEO_DIT: "Temporal RefDrop",
}

SDXL = "SDXL"  # the one family Apply EasyRef accepts (EasyRef was trained on SDXL base 1.0)

# Families by kind, as refusals list them.
FAMILY_NAMES = {
    IMAGE_UNET: ("SD1.x", "SD2.x", SDXL),
    VIDEO_UNET: ("Stable Video Diffusion",),
    IMAGE_DIT: tuple(f.name for f in dit_families.FAMILIES if not f.video),
    VIDEO_DIT: tuple(f.name for f in dit_families.FAMILIES if f.video),
}

# UNet cross-attention width -> family name (the model config's context_dim).
_UNET_CONTEXT_FAMILY = {768: "SD1.x", 1024: "SD2.x", 2048: SDXL, 1280: "SDXL refiner"}


@dataclass(frozen=True)
class ModelFamily:
    """A model's family, looked up once per node and passed down: name, kind, and what the patches need.

    ``dit`` is the bound diffusion-transformer family (DiT kinds), ``unet_blocks`` the UNet's transformer blocks
    (UNet kinds), ``block_names`` the names ``exclude_blocks`` accepts, in model order.
    """

    name: str
    kind: str
    dit: DiTFamily | None = None
    unet_blocks: tuple[TransformerBlock, ...] = ()
    block_names: tuple[str, ...] = ()
    refusal: str | None = None  # why the pack refuses this model (``coverage.REFUSED``), for the node's message

    @property
    def is_dit(self) -> bool:
        return self.dit is not None


def model_family(model_patcher) -> ModelFamily:
    """The family of a ComfyUI ModelPatcher's model."""
    model = model_patcher.model
    refused = coverage.refusal(dit_families.config_names(model_patcher))
    if refused is not None:
        config, reason = refused
        return ModelFamily(config, OTHER, refusal=reason)
    dit = dit_families.dit_family(model_patcher)
    if dit is not None:
        labels = tuple(dit.block_labels(model_patcher.model.diffusion_model))
        return ModelFamily(dit.name, VIDEO_DIT if dit.video else IMAGE_DIT, dit=dit, block_names=labels)
    blocks = tuple(unet_blocks.transformer_blocks(model_patcher))
    labels = tuple(block.label for block in blocks)
    if unet_blocks.is_video_model(model_patcher):
        return ModelFamily("Stable Video Diffusion", VIDEO_UNET, unet_blocks=blocks, block_names=labels)
    if blocks:
        unet_config = getattr(getattr(model, "model_config", None), "unet_config", {}) or {}
        context = unet_config.get("context_dim")
        name = _UNET_CONTEXT_FAMILY.get(context, f"SD-family UNet, cross-attention width {context}")
        return ModelFamily(name, IMAGE_UNET, unet_blocks=blocks, block_names=labels)
    return ModelFamily(type(model).__name__, OTHER)


def require_family(
    model_patcher, node_name: str, kinds: tuple[str, ...], families: tuple[str, ...] | None = None
) -> ModelFamily:
    """The model's family when ``node_name`` supports it, else a ValueError that says what to use instead.

    ``kinds`` are the kinds the node accepts; ``families`` (optional) narrows them to named families.
    """
    family = model_family(model_patcher)
    supported = families or tuple(name for kind in kinds for name in FAMILY_NAMES.get(kind, ()))
    if family.kind in kinds and (families is None or family.name in families):
        return family
    listing = ", ".join(supported)
    if family.refusal:
        raise ValueError(
            f"{node_name} does not work with {family.name} models: {family.refusal}. It works with {listing} models."
        )
    other_node = NODE_FOR_KIND.get(family.kind)
    if family.kind != OTHER and other_node and other_node != node_name and family.kind not in kinds:
        raise ValueError(
            f"{node_name} works with {listing} models; this is a {family.name} model ({family.kind}): use the "
            f"'{other_node}' node instead."
        )
    raise ValueError(
        f"{node_name} works with {listing} models; this model ({family.name}) is not supported. Load a {listing} "
        "checkpoint."
    )
