"""RefDrop image nodes: "Apply RefDrop" (reference feature guidance on SD UNets and diffusion transformers) and per-image prompts."""

from __future__ import annotations

import logging
import math

import torch
from comfy_api.latest import io

from ..comfy_patches import model_blocks, model_families, reference_image_patch
from ..comfy_patches.attention_override import InBatchReferences, patch_dit
from ..comfy_patches.refdrop_patch import RefDropSettings, patch_self_attention
from ..comfy_patches.step_window import sigma_range
from .validation import check_window, widget_ranges, window_inputs

logger = logging.getLogger(__name__)

CATEGORY = "RefDrop"


def parse_strengths(text: str) -> list[float]:
    """'0.3, 0.2' -> [0.3, 0.2]; commas, semicolons or whitespace separate values."""
    parts = [p for p in text.replace(";", ",").replace("\n", ",").split(",")]
    values = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"reference_strengths: {part!r} is not a number (expected e.g. '0.3, 0.2')") from None
        if not math.isfinite(value):
            raise ValueError(f"reference_strengths: {part!r} is not a finite number (expected e.g. '0.3, 0.2')")
        values.append(value)
    return values


def parse_block_names(text: str) -> list[str]:
    """'output 0, input 8' -> ['output 0', 'input 8'] (normalised spacing and case)."""
    names = []
    for part in text.replace(";", ",").replace("\n", ",").split(","):
        words = part.strip().lower().replace("_", " ").split()
        if words:
            names.append(" ".join(words))
    return names


def coefficients_for(
    strength: float, reference_count: int, reference_strengths: str, counted: str | None = None
) -> list[float]:
    """One c_j per reference: the per-reference list when given (Eq. 6), else `strength` for each (Eq. 5).

    ``counted`` says where the reference count comes from in the error (default: the reference_count input).
    """
    if reference_strengths and reference_strengths.strip():
        values = parse_strengths(reference_strengths)
        if len(values) != reference_count:
            raise ValueError(
                f"reference_strengths has {len(values)} value(s) but "
                f"{counted or f'reference_count is {reference_count}'}: give one strength per reference (e.g. "
                f"'{', '.join(['0.3'] * reference_count)}') or clear the field to use `strength` for every reference."
            )
        return values
    return [strength] * reference_count


class ApplyRefDrop(io.ComfyNode):
    """Reference Feature Guidance on every self-attention layer of an SD UNet or call of a diffusion transformer."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ApplyRefDrop",
            display_name="Apply RefDrop",
            category=CATEGORY,
            description=(
                "RefDrop (reference feature guidance, NeurIPS 2024): the first images of the latent batch are "
                "references and every other image's self-attention becomes c*Attn(Q, K_ref, V_ref) + "
                "(1-c)*Attn(Q, K, V). Positive strength: consistent characters/objects across the batch; "
                "negative strength: more diverse images. Training-free; works with SD1.x, SD2.x, SDXL and the diffusion "
                "transformers Flux, Chroma, Qwen-Image, Lumina 2 / Z-Image, SD3 / SD3.5 and Cosmos Predict2. "
                "Each image can have its own prompt (RefDrop Prompt Batch)."
            ),
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip=(
                        "The model to patch (a clone is returned): SD1.x, SD2.x, SDXL, Flux, Chroma, Qwen-Image, "
                        "Lumina 2 / Z-Image, SD3 / SD3.5 or Cosmos Predict2."
                    ),
                ),
                io.Float.Input(
                    "strength",
                    default=0.3,
                    min=-1.0,
                    max=1.0,
                    step=0.01,
                    tooltip=(
                        "c of Eq. 5. Paper values: 0.3-0.4 for people, about 0.2 for toys/cartoons, -0.3 for more "
                        "diversity (lower hurts quality). 0 leaves the model untouched."
                    ),
                ),
                io.Int.Input(
                    "reference_count",
                    default=1,
                    min=1,
                    max=64,
                    tooltip="The first N images of the latent batch are references; the batch needs at least N+1 images.",
                ),
                io.Boolean.Input(
                    "skip_up1",
                    default=False,
                    tooltip=(
                        "Leave the first up-sampling transformer block (SDXL 'output 0', SD1.x 'output 3') "
                        "untouched: keeps the subject but lets layout and pose vary more (paper Table 2). UNets only: on a "
                        "diffusion transformer use exclude_blocks."
                    ),
                ),
                io.String.Input(
                    "reference_strengths",
                    default="",
                    optional=True,
                    tooltip=(
                        "Optional: one strength per reference, e.g. '0.3, 0.3' to blend two references (Eq. 6; "
                        "paper: 0.2-0.4 each). Overrides `strength`; must list exactly reference_count values."
                    ),
                ),
                io.String.Input(
                    "exclude_blocks",
                    default="",
                    optional=True,
                    tooltip=(
                        "Optional: more blocks to leave untouched, in ComfyUI block names separated by commas, "
                        "e.g. 'output 0, input 8'. SDXL: input 4,5,7,8 / middle 0 / output 0-5. Flux: double 0.., single 0..; "
                        "other diffusion transformers: see the README (an unknown name lists the valid ones)."
                    ),
                ),
                *window_inputs(),
            ],
            outputs=[io.Model.Output(tooltip="The model with RefDrop applied (a clone; the input is unchanged).")],
        )

    @classmethod
    def validate_inputs(
        cls,
        strength=0.3,
        reference_count=1,
        reference_strengths="",
        exclude_blocks="",
        start_percent=0.0,
        end_percent=1.0,
        **others,
    ):
        numbers = dict(others, strength=strength, reference_count=reference_count)
        problem = widget_ranges(cls, dict(numbers, start_percent=start_percent, end_percent=end_percent))
        if problem:
            return problem
        try:
            if isinstance(reference_count, int) and isinstance(reference_strengths, str):
                coefficients_for(float(strength), reference_count, reference_strengths)
            if isinstance(exclude_blocks, str):
                parse_block_names(exclude_blocks)
            check_window(start_percent, end_percent)
        except ValueError as error:
            return str(error)
        return True

    @classmethod
    def execute(
        cls,
        model,
        strength,
        reference_count,
        skip_up1,
        reference_strengths="",
        exclude_blocks="",
        start_percent=0.0,
        end_percent=1.0,
    ) -> io.NodeOutput:
        check_window(start_percent, end_percent)
        coefficients = coefficients_for(strength, reference_count, reference_strengths or "")
        family = model_families.require_family(
            model, "Apply RefDrop", (model_families.IMAGE_UNET, model_families.IMAGE_DIT)
        )
        excluded = excluded_blocks(model, family, skip_up1, exclude_blocks)
        if all(c == 0.0 for c in coefficients):
            return io.NodeOutput(model.clone())
        settings = RefDropSettings(
            tuple(range(reference_count)),
            tuple(coefficients),
            sigma_range=sigma_range(model, start_percent, end_percent),
        )
        if family.kind == model_families.IMAGE_DIT:
            return io.NodeOutput(patch_dit(model, InBatchReferences(settings), excluded))
        return io.NodeOutput(patch_self_attention(model, settings, unet_blocks(model, excluded)))


def excluded_blocks(model, family, skip_up1: bool, exclude_blocks: str) -> set[str]:
    """The block labels to leave untouched: `exclude_blocks` (unknown names refused) plus Up1 with `skip_up1`."""
    excluded = set(parse_block_names(exclude_blocks or ""))
    valid = model_families.block_labels(model)
    unknown = sorted(excluded - set(valid))
    if unknown:
        raise ValueError(
            f"exclude_blocks: {', '.join(repr(n) for n in unknown)} is not a transformer block of this model. "
            f"Valid names: {', '.join(valid)}."
        )
    if skip_up1 and family.kind == model_families.IMAGE_DIT:
        raise ValueError(
            f"skip_up1 names a UNet block (the first up-sampling block); {family.name} is a diffusion "
            f"transformer without one. Turn skip_up1 off and list the blocks to leave unguided in exclude_blocks "
            f"(this model's blocks: {', '.join(valid[:3])}, ...)."
        )
    if skip_up1:
        blocks = model_blocks.transformer_blocks(model)
        excluded.add(next(block.label for block in blocks if block.block_name == "output"))
    return excluded


def unet_blocks(model, excluded: set[str]) -> list:
    """The UNet transformer blocks to patch: every one whose label is not excluded."""
    return [block for block in model_blocks.transformer_blocks(model) if block.label not in excluded]


REFERENCE_IMAGE_DIT_FAMILIES = ("Flux",)


def check_reference_image_dit(family, mask) -> None:
    """Reference images on diffusion transformers: Flux, whole pictures (skip_up1 is refused by excluded_blocks)."""
    name = reference_image_patch.NODE_NAME
    if family.name not in REFERENCE_IMAGE_DIT_FAMILIES:
        raise ValueError(
            f"{name} works with SD1.x, SD2.x, SDXL and {', '.join(REFERENCE_IMAGE_DIT_FAMILIES)} models; this "
            f"{family.name} model is supported by Apply RefDrop (references in the latent batch) only."
        )
    if mask is not None:
        raise ValueError(
            f"{name}: subject masks work on UNets only for now; on {family.name} disconnect the mask (the whole "
            "reference picture guides)."
        )


class ApplyRefDropImage(io.ComfyNode):
    """RefDrop toward reference pictures (our extension of the paper): Eq. 5/6 with clean reference images."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ApplyRefDropImage",
            display_name="Apply RefDrop (Reference Image)",
            category=CATEGORY,
            description=(
                "RefDrop toward your own pictures: every image of `image` is a reference. At each sampling step the "
                "references are noised to the step's noise level and run as extra batch rows in front of each "
                "guidance branch; every generated image's self-attention becomes c*Attn(Q, K_ref, V_ref) + "
                "(1-c)*Attn(Q, K, V) (Eq. 5; Eq. 6 for several references). Keeps a character from one picture "
                "consistent across a whole batch or story. Optional subject masks restrict the reference to the "
                "subject. Works with SD1.x, SD2.x, SDXL and Flux (masks: UNets only); combines with Apply RefDrop."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The SD1.x, SD2.x, SDXL or Flux model to patch (a clone is returned)."),
                io.Vae.Input(
                    "vae", tooltip="The VAE of the same checkpoint: encodes the references once, when the node runs."
                ),
                io.Image.Input(
                    "image",
                    tooltip=(
                        "The reference picture(s): every image of the batch is one reference, of any size (each is "
                        "resized and centre-cropped to the latent size at sampling time)."
                    ),
                ),
                io.Float.Input(
                    "strength",
                    default=0.3,
                    min=-1.0,
                    max=1.0,
                    step=0.01,
                    tooltip=(
                        "c of Eq. 5. Paper values: 0.3-0.4 for people, about 0.2 for toys/cartoons, -0.3 to move "
                        "away from the reference. 0 leaves the model untouched."
                    ),
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    control_after_generate=True,
                    tooltip=(
                        "The fixed noise that carries the references through the steps (as a KSampler seed noises "
                        "a latent). Keep it fixed for the same guidance across runs."
                    ),
                ),
                io.Boolean.Input(
                    "skip_up1",
                    default=False,
                    tooltip=(
                        "Leave the first up-sampling transformer block (SDXL 'output 0', SD1.x 'output 3') "
                        "untouched: keeps the subject but lets layout and pose vary more (paper Table 2)."
                    ),
                ),
                io.String.Input(
                    "reference_strengths",
                    default="",
                    optional=True,
                    tooltip=(
                        "Optional: one strength per reference image, e.g. '0.3, 0.3' to blend two references (Eq. 6; "
                        "paper: 0.2-0.4 each). Overrides `strength`; must list one value per image of `image`."
                    ),
                ),
                io.String.Input(
                    "exclude_blocks",
                    default="",
                    optional=True,
                    tooltip=(
                        "Optional: more blocks to leave untouched, in ComfyUI block names separated by commas, "
                        "e.g. 'output 0, input 8'. SDXL: input 4,5,7,8 / middle 0 / output 0-5."
                    ),
                ),
                *window_inputs(),
                io.Mask.Input(
                    "mask",
                    optional=True,
                    tooltip=(
                        "Optional subject mask (white = subject), e.g. LoadImage's MASK output after drawing on the "
                        "reference in the mask editor: only the subject's tokens guide. One mask for all references "
                        "or one per reference. All white = no mask; all black = no guidance."
                    ),
                ),
            ],
            outputs=[
                io.Model.Output(tooltip="The model with reference-image RefDrop (a clone; the input is unchanged).")
            ],
        )

    @classmethod
    def validate_inputs(cls, reference_strengths="", exclude_blocks="", start_percent=0.0, end_percent=1.0, **others):
        problem = widget_ranges(cls, dict(others, start_percent=start_percent, end_percent=end_percent))
        if problem:
            return problem
        try:
            if isinstance(reference_strengths, str):
                parse_strengths(reference_strengths)
            if isinstance(exclude_blocks, str):
                parse_block_names(exclude_blocks)
            check_window(start_percent, end_percent)
        except ValueError as error:
            return str(error)
        return True

    @classmethod
    def execute(
        cls,
        model,
        vae,
        image,
        strength,
        seed,
        skip_up1,
        reference_strengths="",
        exclude_blocks="",
        start_percent=0.0,
        end_percent=1.0,
        mask=None,
    ) -> io.NodeOutput:
        name = reference_image_patch.NODE_NAME
        check_window(start_percent, end_percent)
        family = model_families.require_family(model, name, (model_families.IMAGE_UNET, model_families.IMAGE_DIT))
        dit = family.kind == model_families.IMAGE_DIT
        if dit:
            check_reference_image_dit(family, mask)
        reference_image_patch.check_vae(model, vae)
        reference_image_patch.check_images(image, vae)
        references = image.shape[0]
        coefficients = coefficients_for(
            strength, references, reference_strengths or "", f"the `image` batch has {references} reference image(s)"
        )
        excluded = excluded_blocks(model, family, skip_up1, exclude_blocks)
        masks = None
        if mask is not None:
            masks = reference_image_patch.subject_masks(mask, image.shape[0], tuple(image.shape[1:3]), vae)
        keep = []  # references that can change anything: c != 0 and some subject pixel
        for index, coefficient in enumerate(coefficients):
            if masks is not None and float(masks[index].max()) < 0.5:
                logger.warning("%s: the mask of reference %d is all black, so it does not guide.", name, index + 1)
            elif coefficient != 0.0:
                keep.append(index)
        if not keep:
            return io.NodeOutput(model.clone())
        latents = reference_image_patch.encode_references(model, vae, image)
        if masks is not None:
            masks = masks[keep]
            if bool((masks >= 0.5).all()):
                masks = None  # all white: the whole pictures
        guided = tuple(coefficients[i] for i in keep)
        window = sigma_range(model, start_percent, end_percent)
        selected = tuple(keep) if len(keep) < len(coefficients) else None
        if dit:
            patched = reference_image_patch.apply_reference_images_dit(
                model, latents, guided, seed, excluded, window, selected
            )
        else:
            patched = reference_image_patch.apply_reference_images(
                model, latents, guided, seed, masks, unet_blocks(model, excluded), window, selected
            )
        return io.NodeOutput(patched)


def _lcm_tokens(lengths: list[int]) -> int:
    result = 1
    for length in lengths:
        result = result * length // math.gcd(result, length)
    return result


def batch_conditioning(encoded: list[tuple[torch.Tensor, dict]]) -> list:
    """Stack per-image (cond [1, L_i, C], extras) into one CONDITIONING with batch rows in order.

    Prompts of different token lengths are repeated to the least common multiple of the lengths, as
    ComfyUI does when it batches conditionings: repeating a whole key/value sequence leaves
    cross-attention unchanged, so every row still sees exactly its own prompt.
    """
    target = _lcm_tokens([cond.shape[1] for cond, _ in encoded])
    rows = [cond.repeat(1, target // cond.shape[1], 1) for cond, _ in encoded]
    extras: dict = {}
    pooled = [extra.get("pooled_output") for _, extra in encoded]
    if all(p is not None for p in pooled):
        extras["pooled_output"] = torch.cat(pooled, dim=0)
    return [[torch.cat(rows, dim=0), extras]]


class RefDropPromptBatch(io.ComfyNode):
    """One prompt per image of the latent batch, references first, as one batched CONDITIONING."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RefDropPromptBatch",
            display_name="RefDrop Prompt Batch",
            category=CATEGORY,
            description=(
                "Encodes one prompt per line into one CONDITIONING whose batch rows follow the latent batch: "
                "the first lines describe the reference image(s), the next lines the other images (RefDrop "
                "gives every image its own prompt). Use it as the positive conditioning of the sampler."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder of the checkpoint."),
                io.String.Input(
                    "prompts",
                    multiline=True,
                    default=(
                        "a photo of a red-haired woman in a green coat, portrait\n"
                        "a photo of a red-haired woman in a green coat, reading in a cafe\n"
                        "a photo of a red-haired woman in a green coat, walking on a beach"
                    ),
                    tooltip=(
                        "One prompt per line, in latent batch order: reference prompt(s) first. Empty lines are "
                        "ignored. Use as many lines as the latent batch has images (ComfyUI repeats the list "
                        "if the batch is larger)."
                    ),
                ),
            ],
            outputs=[io.Conditioning.Output(tooltip="Batched conditioning: row i is the prompt of image i.")],
        )

    @classmethod
    def execute(cls, clip, prompts) -> io.NodeOutput:
        lines = [line.strip() for line in prompts.splitlines() if line.strip()]
        if not lines:
            raise ValueError("RefDrop Prompt Batch: write at least one prompt (one line per image).")
        if clip is None:
            raise RuntimeError("RefDrop Prompt Batch: the CLIP input is empty (the checkpoint has no text encoder).")
        encoded = []
        for line in lines:
            cond, pooled = clip.encode_from_tokens(clip.tokenize(line), return_pooled=True)
            encoded.append((cond, {"pooled_output": pooled} if pooled is not None else {}))
        return io.NodeOutput(batch_conditioning(encoded))


NODES = [ApplyRefDrop, ApplyRefDropImage, RefDropPromptBatch]
