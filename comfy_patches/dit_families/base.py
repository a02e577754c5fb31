"""The shape of a diffusion-transformer family entry (shared by every family module of this package).

Each family knows, for one forward of its model, the order of its attention calls: ``call_site(key, ordinal,
call)`` gets ``key = (transformer_options["block_type"], transformer_options["block_index"])`` (``None`` where
the model does not set them), the position of the call among the calls with that key in this forward, and
the call itself, and says which block it belongs to and whether it is self-attention. Block labels are the
names ``exclude_blocks`` accepts (lower case, words separated by single spaces).

Each call site also says where the call's image tokens are (``image_layout``), from which
:meth:`DiTFamily.with_image_tokens` places them (:class:`~..attention_patches.tokens.ImageTokens`: start, grid,
patch) for subject masks and regions: the grid is the model input's latent padded up to whole patches.

A family is matched by the ComfyUI model configuration it was written for (``configs``: class names in
``comfy.supported_models``, looked up along the configuration's class hierarchy) AND the exact class of
``model.diffusion_model`` (``model_classes``: a subclass may call attention differently, so it is listed only
once tested). :meth:`DiTFamily.bind` returns the family bound to one model (patch size, call plan).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

from ...attention_patches.tokens import ImageTokens, patch_grid

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


def numbered(name: str, blocks) -> list[str]:
    """Block labels ``"<name> 0"``, ``"<name> 1"``, .. for a sequence of blocks (a ModuleList)."""
    return [f"{name} {i}" for i in range(len(blocks))]


def unexpected_call(key, ordinal) -> CallSite:
    """The call site of an attention call a family does not make (it runs plain, reported once)."""
    return CallSite(None, False, f"an attention call this model family does not make (block {key}, call {ordinal})")


class DiTFamily:
    """One family: its name, model classes, block labels and call order. Subclasses fill the three methods."""

    name: str = ""
    video: bool = False  # video families are handled by the video nodes
    clip_pictures: bool = False  # video: a picture can be a text-to-video clip's reference (Temporal RefDrop)
    configs: tuple[str, ...] = ()  # the comfy.supported_models classes (by name) this entry covers
    model_classes: tuple[type, ...] = ()  # the exact diffusion-model classes of those configurations
    # README: how guidance chunks and blocks are named.
    naming: str = ""
    patch: tuple[int, int, int] = (1, 2, 2)  # latent pixels per token (frames, height, width); bound per model
    token_multiple: int | None = None  # the image tokens are padded to a multiple of this (Z-Image)

    def bind(self, diffusion_model) -> DiTFamily:
        """This family for one model: its patch size and :meth:`plan` (its call plan, read off the model)."""
        bound = copy.copy(self)
        bound.patch = self.patch_of(diffusion_model)
        bound.plan(diffusion_model)
        return bound

    def plan(self, diffusion_model) -> None:
        """Read what the call order depends on off one model (block counts, variants); on the bound copy."""

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

    def clip_picture_problem(self, config: str, diffusion_model) -> str | None:
        """Why a picture cannot be this model's clip reference (Temporal RefDrop's ``image``), None when it can.

        ``config`` is the model's ``comfy.supported_models`` class name. Families with ``clip_pictures`` say per
        model: an image-to-video model (its clip already starts from a picture) is refused."""
        return None if self.clip_pictures else f"{self.name} models do not take a picture as the clip's reference"

    def block_labels(self, diffusion_model) -> list[str]:
        raise NotImplementedError

    def call_site(self, key, ordinal: int, call) -> CallSite:
        raise NotImplementedError
