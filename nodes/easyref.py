"""EasyRef nodes, MLLM half: "Load EasyRef MLLM", "EasyRef Reference Group", "Encode Reference Group",
"Save EasyRef Embeds" and "Load EasyRef Embeds".

The math lives in ``easyref/`` (no ComfyUI import there); this module resolves model folders, wraps the
MLLM in a ModelPatcher so ComfyUI's model management loads and offloads it, and reports progress.
"""

from __future__ import annotations

import hashlib
import os
import re

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..comfy_patches import easyref_lora, easyref_patch, model_blocks
from ..comfy_patches.step_window import sigma_window
from ..easyref import checkpoint as ckpt
from ..easyref import embeds as embeds_mod
from ..easyref import encoder

CATEGORY = "EasyRef"
LLM_FOLDER = "LLM"
EASYREF_FOLDER = "easyref"
CHECKPOINT_EXTENSIONS = {".safetensors", ".sft", ".pt", ".pth", ".bin", ".ckpt"}
DEFAULT_MLLM = "Qwen2-VL-2B-Instruct"
QWEN_URL = f"https://huggingface.co/{encoder.QWEN2_VL_REPO}"
EASYREF_URL = f"https://huggingface.co/{encoder.EASYREF_REPO}"
DTYPES = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

EasyRefModelType = io.Custom("EASYREF_MODEL")
EasyRefEmbedsType = io.Custom("EASYREF_EMBEDS")
ReferencesType = io.Custom("EASYREF_REFERENCES")


def register_model_folders() -> None:
    """Register ``models/LLM`` and ``models/easyref``, keeping paths added by extra_model_paths.yaml."""
    for name, extensions in ((LLM_FOLDER, set()), (EASYREF_FOLDER, CHECKPOINT_EXTENSIONS)):
        paths, exts = folder_paths.folder_names_and_paths.get(name, ([], set()))
        paths = list(paths) or [os.path.join(folder_paths.models_dir, name)]
        folder_paths.folder_names_and_paths[name] = (paths, set(exts) | extensions)


register_model_folders()


# ---------------------------------------------------------------------------------------------
# Model files
# ---------------------------------------------------------------------------------------------


def llm_roots() -> list[str]:
    roots = list(folder_paths.get_folder_paths(LLM_FOLDER))
    lower = os.path.join(folder_paths.models_dir, "llm")  # case-sensitive file systems
    if os.path.isdir(lower) and not any(os.path.normcase(os.path.abspath(r)) == os.path.normcase(lower) for r in roots):
        roots.append(lower)
    return roots


def _is_qwen2_vl_folder(path: str) -> bool:
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return False
    try:
        return ckpt.read_json(config).get("model_type") == "qwen2_vl"
    except (OSError, ValueError):
        return False


def list_mllm_folders() -> list[str]:
    """Folders (up to two levels deep) under the LLM model folders that hold a Qwen2-VL config."""
    found = set()
    for root in llm_roots():
        if not os.path.isdir(root):
            continue
        for first in sorted(os.listdir(root)):
            p1 = os.path.join(root, first)
            if not os.path.isdir(p1):
                continue
            if _is_qwen2_vl_folder(p1):
                found.add(first)
                continue
            for second in sorted(os.listdir(p1)):
                if _is_qwen2_vl_folder(os.path.join(p1, second)):
                    found.add(f"{first}/{second}")
    return sorted(found)


def list_checkpoints() -> list[str]:
    return folder_paths.get_filename_list(EASYREF_FOLDER)


def _safe_relative(name: str) -> str | None:
    rel = os.path.normpath(name.replace("\\", "/"))
    if not name or os.path.isabs(rel) or rel == ".." or rel.startswith(".." + os.sep) or rel.startswith("../"):
        return None
    return rel


def mllm_missing_message(name: str) -> str:
    roots = llm_roots()
    return (
        f"Qwen2-VL folder '{name}' not found. Searched the LLM model folders: {', '.join(roots)}. "
        f"Expected a folder such as {os.path.join(roots[0], DEFAULT_MLLM)} holding config.json, the tokenizer "
        f"files and the *.safetensors weights; download it from {QWEN_URL}."
    )


def checkpoint_missing_message(name: str) -> str:
    roots = folder_paths.get_folder_paths(EASYREF_FOLDER)
    return (
        f"EasyRef checkpoint '{name}' not found. Searched the easyref model folders: {', '.join(roots)}. "
        f"Expected a file such as {os.path.join(roots[0], 'easyref.safetensors')}; download it from {EASYREF_URL}."
    )


def resolve_mllm(name: str) -> str:
    rel = _safe_relative(name)
    if rel is not None:
        for root in llm_roots():
            path = os.path.join(root, rel)
            if _is_qwen2_vl_folder(path):
                return path
    raise FileNotFoundError(mllm_missing_message(name))


def resolve_checkpoint(name: str) -> str:
    rel = _safe_relative(name)
    path = folder_paths.get_full_path(EASYREF_FOLDER, rel) if rel is not None else None
    if path is None:
        raise FileNotFoundError(checkpoint_missing_message(name))
    return path


def auto_dtype(device: torch.device) -> torch.dtype:
    """bf16 where ComfyUI considers it supported on the text-encoder device, else fp32."""
    return torch.bfloat16 if mm.should_use_bf16(device) else torch.float32


# ---------------------------------------------------------------------------------------------
# Nodes
# ---------------------------------------------------------------------------------------------


class LoadEasyRefMLLM(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadEasyRefMLLM",
            display_name="Load EasyRef MLLM",
            category=CATEGORY,
            description=(
                "Loads Qwen2-VL-2B-Instruct and an EasyRef checkpoint once: the vision tower, 27 language layers, "
                "the trained final layer with its 64 reference tokens and the projector (for Encode Reference Group), "
                "plus the checkpoint's UNet weights (for Apply EasyRef). ComfyUI's model management moves the MLLM "
                "to the GPU only while it encodes."
            ),
            inputs=[
                io.Combo.Input(
                    "mllm",
                    options=list_mllm_folders(),
                    tooltip=f"Qwen2-VL folder under models/{LLM_FOLDER} (e.g. {DEFAULT_MLLM}, from {QWEN_URL}).",
                ),
                io.Combo.Input(
                    "checkpoint",
                    options=list_checkpoints(),
                    tooltip=f"EasyRef checkpoint under models/{EASYREF_FOLDER} (from {EASYREF_URL}).",
                ),
                io.Combo.Input(
                    "dtype",
                    options=list(DTYPES),
                    default="auto",
                    tooltip="Weight precision of the MLLM. auto: bf16 where the device supports it, else fp32 "
                    "(fp32 on CPU). fp32 is the most faithful and the slowest.",
                ),
            ],
            outputs=[io.Custom("EASYREF_MODEL").Output(display_name="easyref", tooltip="The loaded EasyRef model.")],
        )

    @classmethod
    def validate_inputs(cls, mllm):
        # Only the Qwen2-VL folder: ComfyUI reports a custom validation message on every input this function takes,
        # so it takes just the one it checks. The folder replaces ComfyUI's "value not in list" with where to put
        # and download it (the front end's missing-models dialog cannot download a folder). The checkpoint is a
        # file: ComfyUI's own list check reports it on `checkpoint`, and the workflows' properties.models give the
        # front end its download link; dtype is checked by ComfyUI against its list.
        try:
            resolve_mllm(mllm)
        except FileNotFoundError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, mllm, checkpoint, dtype) -> io.NodeOutput:
        mllm_dir = resolve_mllm(mllm)
        checkpoint_path = resolve_checkpoint(checkpoint)
        load_device = mm.text_encoder_device()
        offload_device = mm.text_encoder_offload_device()
        weight_dtype = DTYPES[dtype] or auto_dtype(load_device)
        model = encoder.load_easyref(mllm_dir, checkpoint_path, dtype=weight_dtype)
        model.patcher = comfy.model_patcher.ModelPatcher(
            model.mllm, load_device=load_device, offload_device=offload_device
        )
        return io.NodeOutput(model)


class EasyRefReferenceGroup(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EasyRefReferenceGroup",
            display_name="EasyRef Reference Group",
            category=CATEGORY,
            description=(
                "Collects reference images of different sizes and aspect ratios into one group (a ComfyUI image "
                "batch shares one size). Chain several of these nodes; every image keeps its own aspect ratio."
            ),
            inputs=[
                io.Image.Input("images", tooltip="One image or a batch of same-sized images to add to the group."),
                io.Custom("EASYREF_REFERENCES").Input(
                    "references", optional=True, tooltip="A group from another EasyRef Reference Group node to extend."
                ),
            ],
            outputs=[io.Custom("EASYREF_REFERENCES").Output(display_name="references", tooltip="The reference group.")],
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
            category=CATEGORY,
            description=(
                "Turns a group of reference images (any number, any sizes) and a prompt into EasyRef's 64 reference "
                "tokens with the MLLM, plus the unconditional tokens (black image, bare instruction; computed once per "
                "loaded model) for the negative branch."
            ),
            inputs=[
                io.Custom("EASYREF_MODEL").Input("easyref", tooltip="From Load EasyRef MLLM."),
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
                io.Custom("EASYREF_REFERENCES").Input(
                    "references",
                    optional=True,
                    tooltip="Reference images of different sizes from EasyRef Reference Group; added after 'images'.",
                ),
            ],
            outputs=[
                io.Custom("EASYREF_EMBEDS").Output(display_name="embeds", tooltip="Reference tokens for Apply EasyRef.")
            ],
        )

    @classmethod
    def execute(cls, easyref, prompt, images=None, references=None) -> io.NodeOutput:
        group = [img for img in images] if images is not None else []
        group += list(references or ())
        if not group:
            raise ValueError("Encode Reference Group: connect reference images to 'images' or 'references'.")
        mm.load_models_gpu([easyref.patcher], force_full_load=True)
        needs_uncond = not easyref.has_unconditional
        pbar = comfy.utils.ProgressBar(len(group) + 1 + (1 if needs_uncond else 0))
        interrupt = mm.throw_exception_if_processing_interrupted
        cond = easyref.encode(group, prompt, on_image_done=lambda: pbar.update(1), check_interrupt=interrupt)
        pbar.update(1)
        uncond = easyref.unconditional(check_interrupt=interrupt)
        if needs_uncond:
            pbar.update(1)
        result = embeds_mod.EasyRefEmbeds(
            cond=cond.cpu(),
            uncond=uncond.cpu(),
            num_references=len(group),
            prompt=prompt,
            fingerprint=easyref.fingerprint,
            checkpoint_name=easyref.checkpoint_name,
        )
        return io.NodeOutput(result)


_UNSAFE = re.compile(r"[^A-Za-z0-9._\- /]")


def sanitize_prefix(prefix: str) -> str:
    """A file-name prefix that stays inside the output folder: no absolute paths, no '..', plain characters."""
    parts = [p for p in _UNSAFE.sub("_", prefix.replace("\\", "/")).split("/") if p not in ("", ".", "..")]
    parts = [p.strip() or "_" for p in parts]
    return "/".join(parts) or "easyref_embeds"


def list_embeds_files() -> list[str]:
    root = folder_paths.get_input_directory()
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            if f.endswith(".safetensors"):
                out.append(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
    return sorted(out)


def resolve_embeds_file(name: str) -> str:
    root = os.path.realpath(folder_paths.get_input_directory())
    path = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, path]) != root or not os.path.isfile(path):
        raise FileNotFoundError(f"EasyRef embeds file '{name}' not found in the input folder {root}.")
    return path


class SaveEasyRefEmbeds(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SaveEasyRefEmbeds",
            display_name="Save EasyRef Embeds",
            category=CATEGORY,
            description=(
                "Saves encoded reference tokens (conditional and unconditional, with the prompt, reference count and "
                "checkpoint fingerprint) as a .safetensors file in ComfyUI's output folder. Copy it to the input folder "
                "to reuse it with Load EasyRef Embeds."
            ),
            inputs=[
                io.Custom("EASYREF_EMBEDS").Input("embeds", tooltip="From Encode Reference Group."),
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
    def execute(cls, embeds, filename_prefix) -> io.NodeOutput:
        output_dir = folder_paths.get_output_directory()
        prefix = sanitize_prefix(filename_prefix)
        full_folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, output_dir)
        os.makedirs(full_folder, exist_ok=True)
        name = f"{filename}_{counter:05}_.safetensors"
        embeds_mod.save_embeds(embeds, os.path.join(full_folder, name))
        return io.NodeOutput(ui={"easyref_embeds": [{"filename": name, "subfolder": subfolder, "type": "output"}]})


class LoadEasyRefEmbeds(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadEasyRefEmbeds",
            display_name="Load EasyRef Embeds",
            category=CATEGORY,
            description=(
                "Loads reference tokens saved by Save EasyRef Embeds from ComfyUI's input folder. Connect the loaded "
                "EasyRef model to refuse files made with another checkpoint."
            ),
            inputs=[
                io.Combo.Input(
                    "embeds_file", options=list_embeds_files(), tooltip="A .safetensors file in the input folder."
                ),
                io.Custom("EASYREF_MODEL").Input(
                    "easyref",
                    optional=True,
                    tooltip="The loaded EasyRef model; the file must come from its checkpoint.",
                ),
            ],
            outputs=[
                io.Custom("EASYREF_EMBEDS").Output(display_name="embeds", tooltip="Reference tokens for Apply EasyRef.")
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, embeds_file, easyref=None):
        path = resolve_embeds_file(embeds_file)
        st = os.stat(path)
        return hashlib.sha256(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()

    @classmethod
    def execute(cls, embeds_file, easyref=None) -> io.NodeOutput:
        result = embeds_mod.load_embeds(resolve_embeds_file(embeds_file))
        if easyref is not None:
            embeds_mod.check_fingerprint(result, easyref.fingerprint, easyref.checkpoint_name)
        return io.NodeOutput(result)


# ---------------------------------------------------------------------------------------------
# Apply EasyRef (the diffusion half)
# ---------------------------------------------------------------------------------------------

PROJECTIONS_KEY = "easyref_projections"


def check_sdxl_model(model, easyref) -> None:
    """Refuse models EasyRef's UNet weights cannot fit, with the reason (video model, not a UNet, context width)."""
    if model_blocks.is_video_model(model):
        raise ValueError("Apply EasyRef works with SDXL image models; this is a video model (Stable Video Diffusion).")
    if not model_blocks.transformer_blocks(model):
        raise ValueError(
            f"Apply EasyRef works with SDXL UNet models; this model ({type(model.model).__name__}) has no UNet "
            "transformer blocks."
        )
    context = model.model.model_config.unet_config.get("context_dim")
    if context != easyref.cross_dim:
        raise ValueError(
            f"Apply EasyRef needs an SDXL model (cross-attention width {easyref.cross_dim}); this model's "
            f"cross-attention width is {context} (SD1.x: 768, SD2.x: 1024, SDXL refiner: 1280). EasyRef was trained "
            "on SDXL base 1.0: load an SDXL checkpoint."
        )


def projection_dtype(model) -> torch.dtype:
    """The UNet's compute dtype for the reference K/V projections (its storage dtype unless that is fp8)."""
    dtype = model.model_dtype()
    if dtype in (torch.float32, torch.float16, torch.bfloat16):
        return dtype
    return getattr(model.model, "manual_cast_dtype", None) or torch.float16


def apply_easyref(model, easyref, embeds, weight, lora_strength, start_at=0.0, end_at=1.0, attn_mask=None):
    """A clone of ``model`` with EasyRef's UNet LoRA (weight patches) and decoupled cross-attention on every attn2."""
    embeds_mod.check_fingerprint(embeds, easyref.fingerprint, easyref.checkpoint_name)
    check_sdxl_model(model, easyref)
    if embeds.cond.shape[-1] != easyref.cross_dim:
        raise ValueError(
            f"The EasyRef embeds have width {embeds.cond.shape[-1]}, the EasyRef model {easyref.cross_dim}."
        )
    layout = easyref_lora.map_processors(model, easyref.unet_state_dict, easyref.cross_dim)
    patched = model.clone()
    if lora_strength != 0.0:
        patched.add_patches(easyref_lora.lora_patches(easyref.unet_state_dict, layout), lora_strength)
    if weight == 0.0:
        return patched

    ip = easyref.unet_state_dict
    projections = easyref_patch.ReferenceProjections(
        {
            layer.name: (ip[f"{layer.processor}.to_k_ip.weight"], ip[f"{layer.processor}.to_v_ip.weight"])
            for layer in layout.cross_layers
        },
        dtype=projection_dtype(model),
    )
    projections_patcher = comfy.model_patcher.ModelPatcher(
        projections, load_device=model.load_device, offload_device=model.offload_device
    )
    patched.set_additional_models(
        PROJECTIONS_KEY, patched.get_additional_models_with_key(PROJECTIONS_KEY) + [projections_patcher]
    )
    sigma_start, sigma_end = sigma_window(model, start_at, end_at)
    kwargs = {"sigma_start": sigma_start, "sigma_end": sigma_end, PROJECTIONS_KEY: projections_patcher}
    mask = attn_mask.float().cpu() if attn_mask is not None else None
    notice = easyref_patch.fallback_notice()
    for layer in layout.cross_layers:
        branch = easyref_patch.EasyRefBranch(
            projections, layer.name, embeds.cond, embeds.uncond, weight, mask=mask, notice=notice
        )
        existing = model_blocks.existing_replace(patched, "attn2", layer.block_key)
        patched.set_model_attn2_replace(easyref_patch.attach(existing, branch, kwargs), *layer.block_key)
    return patched


class ApplyEasyRef(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ApplyEasyRef",
            display_name="Apply EasyRef",
            category=CATEGORY,
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
                io.Custom("EASYREF_MODEL").Input(
                    "easyref", tooltip="From Load EasyRef MLLM: holds the UNet-side weights."
                ),
                io.Custom("EASYREF_EMBEDS").Input(
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
                    tooltip="Fraction of the sampling schedule where the reference branch starts acting (0 = first step).",
                ),
                io.Float.Input(
                    "end_at",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Fraction of the sampling schedule where the reference branch stops (1 = last step). The "
                    "LoRA stays on for the whole run.",
                ),
                io.Mask.Input(
                    "attn_mask",
                    optional=True,
                    tooltip="Optional: where the reference tokens act (white = full effect), at image resolution; it is "
                    "averaged onto each layer's token grid. One mask per image of the latent batch, or one for all.",
                ),
            ],
            outputs=[io.Model.Output(tooltip="The model with EasyRef applied (a clone; the input is unchanged).")],
        )

    @classmethod
    def validate_inputs(cls, start_at=0.0, end_at=1.0, **_):
        if isinstance(start_at, (int, float)) and isinstance(end_at, (int, float)) and start_at > end_at:
            return f"start_at ({start_at}) must not be after end_at ({end_at})."
        return True

    @classmethod
    def execute(cls, model, easyref, embeds, weight, lora_strength, start_at, end_at, attn_mask=None) -> io.NodeOutput:
        return io.NodeOutput(
            apply_easyref(model, easyref, embeds, weight, lora_strength, start_at, end_at, attn_mask=attn_mask)
        )


NODES = [
    LoadEasyRefMLLM,
    EasyRefReferenceGroup,
    EncodeReferenceGroup,
    SaveEasyRefEmbeds,
    LoadEasyRefEmbeds,
    ApplyEasyRef,
]
