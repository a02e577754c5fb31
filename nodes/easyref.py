"""EasyRef nodes: "Load EasyRef MLLM", "EasyRef Reference Group", "Encode Reference Group", "Save EasyRef Embeds",
"Load EasyRef Embeds" and "Apply EasyRef".

Declarations and validation only: the files are found by ``comfy_patches/easyref_files.py``, the model is loaded,
encoded with and applied to a UNet by ``comfy_patches/easyref_glue.py``, and the math lives in ``easyref/`` and
``attention_patches/decoupled.py``.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..comfy_patches import easyref_files as files
from ..comfy_patches import easyref_glue as glue
from ..easyref import embeds as embeds_mod
from .validation import EASYREF_CATEGORY, widget_ranges

EasyRefModelType = io.Custom("EASYREF_MODEL")
EasyRefEmbedsType = io.Custom("EASYREF_EMBEDS")
ReferencesType = io.Custom("EASYREF_REFERENCES")


class LoadEasyRefMLLM(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadEasyRefMLLM",
            display_name="Load EasyRef MLLM",
            category=EASYREF_CATEGORY,
            description=(
                "Loads Qwen2-VL-2B-Instruct and an EasyRef checkpoint once: the vision tower, 27 language layers, "
                "the trained final layer with its 64 reference tokens and the projector (for Encode Reference Group), "
                "plus the checkpoint's UNet weights (for Apply EasyRef). ComfyUI's model management moves the MLLM "
                "to the GPU only while it encodes."
            ),
            inputs=[
                io.Combo.Input(
                    "mllm",
                    options=files.list_mllm_folders(),
                    tooltip=f"Qwen2-VL folder under models/{files.LLM_FOLDER} (e.g. {files.DEFAULT_MLLM}, from {files.QWEN_URL}).",
                ),
                io.Combo.Input(
                    "checkpoint",
                    options=files.list_checkpoints(),
                    tooltip=f"EasyRef checkpoint under models/{files.EASYREF_FOLDER} (from {files.EASYREF_URL}).",
                ),
                io.Combo.Input(
                    "dtype",
                    options=list(glue.DTYPES),
                    default="auto",
                    tooltip="Weight precision of the MLLM. auto: bf16 where the device supports it, else fp32 "
                    "(fp32 on CPU). fp32 is the most faithful and the slowest.",
                ),
            ],
            outputs=[EasyRefModelType.Output(display_name="easyref", tooltip="The loaded EasyRef model.")],
        )

    @classmethod
    def validate_inputs(cls, mllm):
        # Only the Qwen2-VL folder: ComfyUI reports a custom validation message on every input this function takes,
        # so it takes just the one it checks. The folder replaces ComfyUI's "value not in list" with where to put
        # and download it (the front end's missing-models dialog cannot download a folder). The checkpoint is a
        # file: ComfyUI's own list check reports it on `checkpoint`, and the workflows' properties.models give the
        # front end its download link; dtype is checked by ComfyUI against its list.
        try:
            files.resolve_mllm(mllm)
        except FileNotFoundError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, mllm, checkpoint, dtype) -> io.NodeOutput:
        model = glue.load_easyref_model(files.resolve_mllm(mllm), files.resolve_checkpoint(checkpoint), dtype)
        return io.NodeOutput(model)


class EasyRefReferenceGroup(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EasyRefReferenceGroup",
            display_name="EasyRef Reference Group",
            category=EASYREF_CATEGORY,
            description=(
                "Collects reference images of different sizes and aspect ratios into one group (a ComfyUI image "
                "batch shares one size). Chain several of these nodes; every image keeps its own aspect ratio."
            ),
            inputs=[
                io.Image.Input("images", tooltip="One image or a batch of same-sized images to add to the group."),
                ReferencesType.Input(
                    "references", optional=True, tooltip="A group from another EasyRef Reference Group node to extend."
                ),
            ],
            outputs=[ReferencesType.Output(display_name="references", tooltip="The reference group.")],
        )

    @classmethod
    def execute(cls, images, references=None) -> io.NodeOutput:
        group = tuple(references or ()) + tuple(img for img in images)
        return io.NodeOutput(group)


class EncodeReferenceGroup(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EncodeReferenceGroup",
            display_name="Encode Reference Group",
            category=EASYREF_CATEGORY,
            description=(
                "Turns a group of reference images (any number, any sizes) and a prompt into EasyRef's 64 reference "
                "tokens with the MLLM, plus the unconditional tokens (black image, bare instruction; computed once per "
                "loaded model) for the negative branch."
            ),
            inputs=[
                EasyRefModelType.Input("easyref", tooltip="From Load EasyRef MLLM."),
                io.String.Input(
                    "prompt",
                    multiline=True,
                    default="",
                    tooltip="What the image should show; the MLLM reads it together with the references. "
                    "Non-empty prompts help.",
                ),
                io.Image.Input(
                    "images",
                    optional=True,
                    tooltip="Reference images (a batch). More than two references work best; for identity use square face crops.",
                ),
                ReferencesType.Input(
                    "references",
                    optional=True,
                    tooltip="Reference images of different sizes from EasyRef Reference Group; added after 'images'.",
                ),
            ],
            outputs=[EasyRefEmbedsType.Output(display_name="embeds", tooltip="Reference tokens for Apply EasyRef.")],
        )

    @classmethod
    def execute(cls, easyref, prompt, images=None, references=None) -> io.NodeOutput:
        group = [img for img in images] if images is not None else []
        group += list(references or ())
        return io.NodeOutput(glue.encode_reference_group(easyref, group, prompt))


class SaveEasyRefEmbeds(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SaveEasyRefEmbeds",
            display_name="Save EasyRef Embeds",
            category=EASYREF_CATEGORY,
            description=(
                "Saves encoded reference tokens (conditional and unconditional, with the prompt, reference count and "
                "checkpoint fingerprint) as a .safetensors file in ComfyUI's output folder. Copy it to the input folder "
                "to reuse it with Load EasyRef Embeds."
            ),
            inputs=[
                EasyRefEmbedsType.Input("embeds", tooltip="From Encode Reference Group."),
                io.String.Input(
                    "filename_prefix",
                    default="easyref/embeds",
                    tooltip="File name prefix inside the output folder; sub-folders allowed, nothing outside it.",
                ),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, filename_prefix):
        return files.prefix_problem(filename_prefix) or True

    @classmethod
    def execute(cls, embeds, filename_prefix) -> io.NodeOutput:
        return io.NodeOutput(ui={"easyref_embeds": [files.save_embeds_file(embeds, filename_prefix)]})


class LoadEasyRefEmbeds(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadEasyRefEmbeds",
            display_name="Load EasyRef Embeds",
            category=EASYREF_CATEGORY,
            description=(
                "Loads reference tokens saved by Save EasyRef Embeds from ComfyUI's input folder. Connect the loaded "
                "EasyRef model to refuse files made with another checkpoint."
            ),
            inputs=[
                io.Combo.Input(
                    "embeds_file", options=files.list_embeds_files(), tooltip="A .safetensors file in the input folder."
                ),
                EasyRefModelType.Input(
                    "easyref",
                    optional=True,
                    tooltip="The loaded EasyRef model; the file must come from its checkpoint.",
                ),
            ],
            outputs=[EasyRefEmbedsType.Output(display_name="embeds", tooltip="Reference tokens for Apply EasyRef.")],
        )

    @classmethod
    def fingerprint_inputs(cls, embeds_file, easyref=None):
        return files.embeds_file_fingerprint(embeds_file)

    @classmethod
    def execute(cls, embeds_file, easyref=None) -> io.NodeOutput:
        result = embeds_mod.load_embeds(files.resolve_embeds_file(embeds_file))
        if easyref is not None:
            embeds_mod.check_fingerprint(result, easyref.fingerprint, easyref.checkpoint_name)
        return io.NodeOutput(result)


# ---------------------------------------------------------------------------------------------
# Apply EasyRef (the diffusion half)
# ---------------------------------------------------------------------------------------------


class ApplyEasyRef(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ApplyEasyRef",
            display_name="Apply EasyRef",
            category=EASYREF_CATEGORY,
            description=(
                "Conditions an SDXL model on a reference group: the 64 reference tokens from Encode Reference Group "
                "enter every cross-attention layer through decoupled cross-attention (out = text attention + weight * "
                "reference attention, separate softmaxes; the negative branch uses the unconditional tokens), and the "
                "checkpoint's UNet LoRA is applied through ComfyUI's weight patching. Stacks with other Apply EasyRef "
                "nodes, IPAdapter and LoRAs. Paper settings: 1024x1024, 30 steps, cfg 5, weight 1."
            ),
            inputs=[
                io.Model.Input(
                    "model", tooltip="An SDXL model (EasyRef was trained on SDXL base 1.0); a clone is returned."
                ),
                EasyRefModelType.Input("easyref", tooltip="From Load EasyRef MLLM: holds the UNet-side weights."),
                EasyRefEmbedsType.Input(
                    "embeds",
                    tooltip="Reference tokens from Encode Reference Group (or Load EasyRef Embeds), same checkpoint.",
                ),
                io.Float.Input(
                    "weight",
                    default=1.0,
                    min=-1.0,
                    max=3.0,
                    step=0.05,
                    tooltip="Scale of the reference attention (the paper's scale; trained and evaluated at 1.0). Lower "
                    "it to let the prompt win, 0 turns the reference branch off.",
                ),
                io.Float.Input(
                    "lora_strength",
                    default=1.0,
                    min=-1.0,
                    max=2.0,
                    step=0.05,
                    tooltip="Strength of the checkpoint's rank-128 UNet LoRA, independent of weight (trained at 1.0 "
                    "together with the reference branch). 0 leaves the UNet weights untouched.",
                ),
                io.Float.Input(
                    "start_at",
                    default=0.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    advanced=True,
                    tooltip="Fraction of the sampling schedule where the reference branch starts acting (0 = first step).",
                ),
                io.Float.Input(
                    "end_at",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    advanced=True,
                    tooltip="Fraction of the sampling schedule where the reference branch stops (1 = last step). The "
                    "LoRA stays on for the whole run.",
                ),
                io.Mask.Input(
                    "attn_mask",
                    optional=True,
                    tooltip="Optional (this pack's extension, not in the EasyRef paper): where the reference tokens act "
                    "(white = full effect), at image resolution; it is averaged onto each layer's token grid. One "
                    "mask per image of the latent batch, or one for all.",
                ),
            ],
            outputs=[io.Model.Output(tooltip="The model with EasyRef applied (a clone; the input is unchanged).")],
        )

    @classmethod
    def validate_inputs(cls, start_at=0.0, end_at=1.0, **others):
        problem = widget_ranges(cls, dict(others, start_at=start_at, end_at=end_at))
        if problem:
            return problem
        if isinstance(start_at, (int, float)) and isinstance(end_at, (int, float)) and start_at > end_at:
            return f"start_at ({start_at}) must not be after end_at ({end_at})."
        return True

    @classmethod
    def execute(cls, model, easyref, embeds, weight, lora_strength, start_at, end_at, attn_mask=None) -> io.NodeOutput:
        # start_at / end_at keep their shipped input ids; they are the step window's start/end percents.
        settings = glue.EasyRefSettings(weight, lora_strength, start_at, end_at, attn_mask)
        return io.NodeOutput(glue.patch_cross_attention(model, easyref, embeds, settings))


NODES = [
    LoadEasyRefMLLM,
    EasyRefReferenceGroup,
    EncodeReferenceGroup,
    SaveEasyRefEmbeds,
    LoadEasyRefEmbeds,
    ApplyEasyRef,
]
