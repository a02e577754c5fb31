"""RefDrop image nodes: "Apply RefDrop" (reference feature guidance on SD UNets and diffusion transformers) and per-image prompts."""

from __future__ import annotations

from comfy_api.latest import io

from ..comfy_patches import refdrop as glue
from ..comfy_patches.refdrop.settings import coefficients_for, parse_block_names, parse_strengths
from .validation import REFDROP_CATEGORY, check_window, widget_ranges, window_inputs


def regions_input() -> io.Mask.Input:
    """The optional `regions` input of both image nodes (our extension: where each reference guides)."""
    return io.Mask.Input(
        "regions",
        optional=True,
        tooltip=(
            "Optional regions (this pack's extension): where in the GENERATED image each reference guides "
            "(white = guide here), one mask for all references or one per reference in reference order. "
            "Two references with a left and a right region give two different characters in one image. "
            "Drawn at the generated image's size (other sizes are centre-cropped to its aspect)."
        ),
    )


class ApplyRefDrop(io.ComfyNode):
    """Reference Feature Guidance on every self-attention layer of an SD UNet or call of a diffusion transformer."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ApplyRefDrop",
            display_name="Apply RefDrop",
            category=REFDROP_CATEGORY,
            description=(
                "RefDrop (reference feature guidance, NeurIPS 2024): the first images of the latent batch are "
                "references and every other image's self-attention becomes c*Attn(Q, K_ref, V_ref) + "
                "(1-c)*Attn(Q, K, V). Positive strength: consistent characters/objects across the batch; "
                "negative strength: more diverse images. Training-free; works with SD1.x, SD2.x, SDXL and every image "
                "diffusion transformer of the README's family table (Flux 1 / 2, Chroma, Qwen-Image, Z-Image, SD3, "
                "HiDream, HunyuanImage 2.1, Kandinsky 5, ...; refused models say why). "
                "Each image can have its own prompt (RefDrop Prompt Batch)."
            ),
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip=(
                        "The model to patch (a clone is returned): SD1.x, SD2.x, SDXL or an image diffusion "
                        "transformer (Flux 1 / 2 (Kontext, Klein), Chroma (Radiance), Qwen-Image (Edit), Z-Image, Lumina 2, SD3, HiDream, HunyuanImage 2.1, Kandinsky 5, Cosmos Predict2, AuraFlow, LongCat, Lens, JoyImage, Krea 2, Ideogram 4, ...; the README's family table lists them all)."
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
                    advanced=True,
                    tooltip=(
                        "Optional: one strength per reference, e.g. '0.3, 0.3' to blend two references (Eq. 6; "
                        "paper: 0.2-0.4 each). Overrides `strength`; must list exactly reference_count values."
                    ),
                ),
                io.String.Input(
                    "exclude_blocks",
                    default="",
                    optional=True,
                    advanced=True,
                    tooltip=(
                        "Optional: more blocks to leave untouched, in ComfyUI block names separated by commas, "
                        "e.g. 'output 0, input 8'. SDXL: input 4,5,7,8 / middle 0 / output 0-5. Flux: double 0.., single 0..; "
                        "other diffusion transformers: see the README (an unknown name lists the valid ones)."
                    ),
                ),
                *window_inputs(),
                regions_input(),
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
        regions=None,
    ) -> io.NodeOutput:
        patched = glue.apply_refdrop(
            model, strength, reference_count, skip_up1, reference_strengths, exclude_blocks, start_percent,
            end_percent, regions,
        )  # fmt: skip
        return io.NodeOutput(patched)


class ApplyRefDropImage(io.ComfyNode):
    """RefDrop toward reference pictures (our extension of the paper): Eq. 5/6 with clean reference images."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ApplyRefDropImage",
            display_name="Apply RefDrop (Reference Image)",
            category=REFDROP_CATEGORY,
            description=(
                "RefDrop toward your own pictures: every image of `image` is a reference. At each sampling step the "
                "references are noised to the step's noise level and run as extra batch rows in front of each "
                "guidance branch; every generated image's self-attention becomes c*Attn(Q, K_ref, V_ref) + "
                "(1-c)*Attn(Q, K, V) (Eq. 5; Eq. 6 for several references). Keeps a character from one picture "
                "consistent across a whole batch or story. Optional subject masks restrict the reference to the "
                "subject. Works with SD1.x, SD2.x, SDXL and every image diffusion transformer of the README's family "
                "table (Flux 1 / 2 incl. Kontext, Chroma, Qwen-Image incl. Edit, Z-Image, SD3, HiDream, HunyuanImage "
                "2.1, Kandinsky 5, ...; subject masks and regions on all of them); combines with Apply RefDrop."
            ),
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip=(
                        "The model to patch (a clone is returned): SD1.x, SD2.x, SDXL or an image diffusion "
                        "transformer (Flux 1 / 2 (Kontext, Klein), Chroma (Radiance), Qwen-Image (Edit), Z-Image, Lumina 2, SD3, HiDream, HunyuanImage 2.1, Kandinsky 5, Cosmos Predict2, AuraFlow, LongCat, Lens, JoyImage, Krea 2, Ideogram 4, ...; the README's family table lists them all)."
                    ),
                ),
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
                    advanced=True,
                    tooltip=(
                        "Optional: one strength per reference image, e.g. '0.3, 0.3' to blend two references (Eq. 6; "
                        "paper: 0.2-0.4 each). Overrides `strength`; must list one value per image of `image`."
                    ),
                ),
                io.String.Input(
                    "exclude_blocks",
                    default="",
                    optional=True,
                    advanced=True,
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
                regions_input(),
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
        regions=None,
    ) -> io.NodeOutput:
        patched = glue.apply_reference_image(
            model, vae, image, strength, seed, skip_up1, reference_strengths, exclude_blocks, start_percent,
            end_percent, mask, regions,
        )  # fmt: skip
        return io.NodeOutput(patched)


class RefDropPromptBatch(io.ComfyNode):
    """One prompt per image of the latent batch, references first, as one batched CONDITIONING."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RefDropPromptBatch",
            display_name="RefDrop Prompt Batch",
            category=REFDROP_CATEGORY,
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
        return io.NodeOutput(glue.encode_prompt_batch(clip, prompts))


NODES = [ApplyRefDrop, ApplyRefDropImage, RefDropPromptBatch]
