"""Diffusion-transformer families: which model classes, their block names, and which attention call is which.

Each family knows, for one forward of its model, the order of its attention calls: ``call_site(key, ordinal,
call)`` gets ``key = (transformer_options["block_type"], transformer_options["block_index"])`` (``None`` where
the model does not set them), the position of the call among the calls with that key in this forward, and
the call itself, and says which block it belongs to and whether it is self-attention. Block labels are the
names ``exclude_blocks`` accepts (lower case, words separated by single spaces).

Each call site also says where the call's image tokens are (``image_layout``), from which
:meth:`DiTFamily.with_image_tokens` places them (:class:`~..attention_patches.tokens.ImageTokens`: start, grid,
patch) for subject masks and regions: the grid is the model input's latent padded up to whole patches.

Families are matched by the exact class of ``model.diffusion_model`` (a subclass may call attention
differently: it is listed only once tested); :func:`dit_family` returns the family bound to one model (its
patch size, call plan).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import comfy.ldm.chroma.model
import comfy.ldm.cosmos.predict2
import comfy.ldm.flux.model
import comfy.ldm.lumina.model
import comfy.ldm.modules.diffusionmodules.mmdit
import comfy.ldm.qwen_image.model
import comfy.ldm.wan.model

from ..attention_patches.tokens import ImageTokens, patch_grid

# Where a self-attention call's image tokens are (CallSite.image_layout):
IMAGE_ONLY = "image only"  # the call's sequence starts with the image tokens (padding may follow)
TEXT_THEN_IMAGE = "text, image"  # [text (the model's context tokens); image; appended condition tokens]
IMAGE_LAST = "..., image"  # [other tokens; image (padded to the family's token multiple)]
NO_IMAGE = "no image"  # text only (a caption refiner)


@dataclass(frozen=True)
class CallSite:
    """What a family says an attention call is: block label, self-attention or not, or why it is not understood."""

    label: str | None
    self_attention: bool
    problem: str | None = None
    image_layout: str = NO_IMAGE
    image: ImageTokens | None = None  # placed by DiTFamily.with_image_tokens for guided calls


def _unexpected(key, ordinal) -> CallSite:
    return CallSite(None, False, f"an attention call this model family does not make (block {key}, call {ordinal})")


class DiTFamily:
    """One family: its name, model classes, block labels and call order. Subclasses fill the three methods."""

    name: str = ""
    video: bool = False  # video families are handled by the video nodes
    model_classes: tuple[type, ...] = ()
    # README: how guidance chunks and blocks are named.
    naming: str = ""
    patch: tuple[int, int, int] = (1, 2, 2)  # latent pixels per token (frames, height, width); bound per model
    token_multiple: int | None = None  # the image tokens are padded to a multiple of this (Z-Image)

    def matches(self, diffusion_model) -> bool:
        return type(diffusion_model) in self.model_classes

    def bind(self, diffusion_model) -> DiTFamily:
        """This family for one model: its patch size (and, in subclasses, its call plan)."""
        bound = copy.copy(self)
        bound.patch = self.patch_of(diffusion_model)
        return bound

    def patch_of(self, diffusion_model) -> tuple[int, int, int]:
        size = getattr(diffusion_model, "patch_size", 2)
        if isinstance(size, (tuple, list)):
            return (1, *size[-2:]) if len(size) == 2 else tuple(size)
        return (1, int(size), int(size))

    def with_image_tokens(self, site: CallSite, call) -> CallSite:
        """``site`` with its image tokens placed (``site.image``), or a problem when the sequence does not fit."""
        forward = call.forward
        if site.image_layout == NO_IMAGE or forward is None or forward.latent_shape is None:
            return site
        latent = forward.latent_shape[2:]
        if len(latent) == 2:
            frames, (height, width) = 1, patch_grid(latent, self.patch[1:])
        else:
            frames, height, width = patch_grid(latent[-3:], self.patch)
        image = ImageTokens(0, frames, height, width, tuple(latent[-2:]), self.patch[1:])
        tokens = call.q_tokens
        if site.image_layout == TEXT_THEN_IMAGE:
            start = forward.context_tokens or 0
        elif site.image_layout == IMAGE_LAST:
            multiple = self.token_multiple
            padded = image.count if not multiple else -(-image.count // multiple) * multiple
            start = tokens - padded
        else:
            start = 0
        if start < 0 or start + image.count > tokens:
            problem = (
                f"{site.label}: the {image.count} image tokens of a {'x'.join(map(str, latent))} latent do not fit "
                f"the call's {tokens} tokens"
            )
            return replace(site, image=None, problem=problem)
        return replace(site, image=replace(image, start=start))

    def block_labels(self, diffusion_model) -> list[str]:
        raise NotImplementedError

    def call_site(self, key, ordinal: int, call) -> CallSite:
        raise NotImplementedError


class FluxFamily(DiTFamily):
    """Flux / Chroma: double-stream blocks (joint [txt; img] attention), then single-stream blocks (one sequence)."""

    name = "Flux"
    model_classes = (comfy.ldm.flux.model.Flux,)
    naming = "`double 0`.. (double-stream), `single 0`.. (single-stream); joint text+image self-attention"

    def block_labels(self, diffusion_model) -> list[str]:
        return [f"double {i}" for i in range(len(diffusion_model.double_blocks))] + [
            f"single {i}" for i in range(len(diffusion_model.single_blocks))
        ]

    def call_site(self, key, ordinal, call) -> CallSite:
        block_type, index = key
        if block_type in ("double", "single") and index is not None and ordinal == 0:
            return CallSite(f"{block_type} {index}", True, image_layout=TEXT_THEN_IMAGE)
        return _unexpected(key, ordinal)


class ChromaFamily(FluxFamily):
    name = "Chroma"
    model_classes = (comfy.ldm.chroma.model.Chroma,)


class QwenImageFamily(DiTFamily):
    """Qwen-Image: one joint [txt; img] attention per transformer block (masked for text padding)."""

    name = "Qwen-Image"
    model_classes = (comfy.ldm.qwen_image.model.QwenImageTransformer2DModel,)
    naming = "`block 0`..; joint text+image self-attention (text padding mask: the reference row's own)"

    def block_labels(self, diffusion_model) -> list[str]:
        return [f"block {i}" for i in range(len(diffusion_model.transformer_blocks))]

    def call_site(self, key, ordinal, call) -> CallSite:
        block_type, index = key
        if block_type == "double" and index is not None and ordinal == 0:
            return CallSite(f"block {index}", True, image_layout=TEXT_THEN_IMAGE)
        return _unexpected(key, ordinal)


class LuminaFamily(DiTFamily):
    """Lumina 2 / Z-Image (NextDiT): caption refiner, noise refiner, then the main layers; all self-attention.

    The refiners run before the model sets ``block_index``; they are told apart by their order in the forward.
    Z-Image "omni" calls (reference latents / SigLIP features) change the batch layout: they run unguided.
    """

    name = "Lumina 2 / Z-Image"
    model_classes = (comfy.ldm.lumina.model.NextDiT,)
    naming = (
        "`context refiner 0`.. (caption tokens), `noise refiner 0`.. (image tokens), `layer 0`.. (joint caption+image)"
    )

    def block_labels(self, diffusion_model) -> list[str]:
        return (
            [f"context refiner {i}" for i in range(len(diffusion_model.context_refiner))]
            + [f"noise refiner {i}" for i in range(len(diffusion_model.noise_refiner))]
            + [f"layer {i}" for i in range(len(diffusion_model.layers))]
        )

    def __init__(self, context_refiners: int = 0, noise_refiners: int = 0):
        self.context_refiners = context_refiners
        self.noise_refiners = noise_refiners

    def call_site(self, key, ordinal, call) -> CallSite:
        if call.forward is not None and call.forward.inputs.get("ref_latents"):
            return CallSite(None, False, "Z-Image omni inputs (reference latents) are not guided")
        block_type, index = key
        if block_type == "double" and index is not None and ordinal == 0:
            return CallSite(f"layer {index}", True, image_layout=IMAGE_LAST)
        if key == (None, None):
            if ordinal < self.context_refiners:
                return CallSite(f"context refiner {ordinal}", True, image_layout=NO_IMAGE)
            if ordinal < self.context_refiners + self.noise_refiners:
                return CallSite(f"noise refiner {ordinal - self.context_refiners}", True, image_layout=IMAGE_ONLY)
        return _unexpected(key, ordinal)


class SD3Family(DiTFamily):
    """SD3 / SD3.5 (MMDiT): one joint [context; x] attention per joint block; SD3.5 Medium's x-only second
    self-attention (``x_block_self_attn`` blocks) follows it. No block index is set: order in the forward."""

    name = "SD3 / SD3.5"
    model_classes = (comfy.ldm.modules.diffusionmodules.mmdit.OpenAISignatureMMDITWrapper,)
    naming = "`joint 0`..; joint context+image self-attention (+ SD3.5 Medium's image-only self-attention)"

    def block_labels(self, diffusion_model) -> list[str]:
        return [f"joint {i}" for i in range(len(diffusion_model.joint_blocks))]

    def __init__(self, plan: tuple[str, ...] = ()):
        self.plan = plan

    def call_site(self, key, ordinal, call) -> CallSite:
        if key == (None, None) and ordinal < len(self.plan):
            return CallSite(self.plan[ordinal], True, image_layout=IMAGE_LAST)
        return _unexpected(key, ordinal)


class CosmosPredict2Family(DiTFamily):
    """Cosmos Predict2 text-to-image (MiniTrainDIT): per block a self-attention over the image tokens, then a
    cross-attention to the text (never touched, whatever the token counts)."""

    name = "Cosmos Predict2"
    model_classes = (comfy.ldm.cosmos.predict2.MiniTrainDIT,)
    naming = "`block 0`..; image self-attention (the text cross-attention is untouched)"

    def block_labels(self, diffusion_model) -> list[str]:
        return [f"block {i}" for i in range(len(diffusion_model.blocks))]

    def patch_of(self, diffusion_model) -> tuple[int, int, int]:
        spatial = int(diffusion_model.patch_spatial)
        return (int(diffusion_model.patch_temporal), spatial, spatial)

    def call_site(self, key, ordinal, call) -> CallSite:
        block_type, index = key
        if block_type is None and index is not None and ordinal in (0, 1):
            return CallSite(f"block {index}", ordinal == 0, image_layout=IMAGE_ONLY if ordinal == 0 else NO_IMAGE)
        return _unexpected(key, ordinal)


class WanFamily(DiTFamily):
    """Wan 2.1 / 2.2 (t2v, i2v, the 5B TI2V, each 14B expert): per block one self-attention over all frames'
    tokens (frame-major, ``grid_sizes`` = frames, height, width), then the cross-attention(s): the text, and
    for Wan 2.1 image-to-video first the CLIP-image one. Cross-attention is never touched, whatever the token
    counts; only the order of the calls in each block (``block_index``) says which is which."""

    name = "Wan 2.1 / 2.2"
    video = True
    model_classes = (comfy.ldm.wan.model.WanModel,)
    naming = "`block 0`..; self-attention over every frame's tokens (text / CLIP-image cross-attention untouched)"

    def __init__(self, cross_calls: int = 1):
        self.cross_calls = cross_calls

    def block_labels(self, diffusion_model) -> list[str]:
        return [f"block {i}" for i in range(len(diffusion_model.blocks))]

    def call_site(self, key, ordinal, call) -> CallSite:
        block_type, index = key
        if block_type == "double" and index is not None and ordinal <= self.cross_calls:
            return CallSite(f"block {index}", ordinal == 0, image_layout=IMAGE_ONLY if ordinal == 0 else NO_IMAGE)
        return _unexpected(key, ordinal)


FAMILIES: tuple[DiTFamily, ...] = (
    FluxFamily(),
    ChromaFamily(),
    QwenImageFamily(),
    LuminaFamily(),
    SD3Family(),
    CosmosPredict2Family(),
    WanFamily(),
)


def _diffusion_model(model_patcher):
    return getattr(model_patcher.model, "diffusion_model", None)


def dit_family(model_patcher) -> DiTFamily | None:
    """The family of a ModelPatcher's diffusion transformer, bound to this model's layout; None if unsupported."""
    diffusion_model = _diffusion_model(model_patcher)
    for family in FAMILIES:
        if family.matches(diffusion_model):
            if isinstance(family, LuminaFamily):
                bound = LuminaFamily(len(diffusion_model.context_refiner), len(diffusion_model.noise_refiner))
                bound.token_multiple = getattr(diffusion_model, "pad_tokens_multiple", None)
                family = bound
            elif isinstance(family, SD3Family):
                plan = []
                for i, block in enumerate(diffusion_model.joint_blocks):
                    plan.append(f"joint {i}")
                    if block.x_block.x_block_self_attn:
                        plan.append(f"joint {i}")
                family = SD3Family(tuple(plan))
            elif isinstance(family, WanFamily):
                i2v = isinstance(diffusion_model.blocks[0].cross_attn, comfy.ldm.wan.model.WanI2VCrossAttention)
                family = WanFamily(cross_calls=2 if i2v else 1)
            return family.bind(diffusion_model)
    return None


def block_labels(model_patcher) -> list[str]:
    """Every block label of a supported diffusion transformer (what ``exclude_blocks`` accepts)."""
    family = dit_family(model_patcher)
    return family.block_labels(_diffusion_model(model_patcher)) if family else []
