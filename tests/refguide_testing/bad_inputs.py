"""Bad inputs for the live-server reliability test, and the README table made from them.

Each case is one prompt with one bad input; the test (tests/e2e/test_reliability_bad_inputs.py) queues it and
checks that ComfyUI answers with the expected message (a verbatim excerpt, in the prompt's validation error or
execution error) and keeps serving. ``render_table`` writes the README's table from the same cases
(`python3 scripts/bad_input_table.py`; a test checks that the README is current). Cases with ``stage``
"accepted" are inputs that look odd but are valid: they must run.

The files the cases name are made by the test's fixture (``FILES``). Cases with ``server`` "transformers-too-old"
run on a second server whose PYTHONPATH puts a real transformers 4.49.0 (one release older than the pack supports)
first; ``scripts/host.sh`` installs it (pins in ``scripts/transformers-too-old.txt``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

SDXL, SD15, FLUX, WAN = (
    "sd_xl_base_1.0.safetensors",
    "v1-5-pruned-emaonly.safetensors",
    "flux1-dev.safetensors",
    "wan2.1_t2v_1.3B.safetensors",
)
SVD = "svd_xt_1_1.safetensors"
MLLM, CHECKPOINT = "Qwen2-VL-2B-Instruct", "easyref.safetensors"

# Files in the test server's folders (made by the test's fixture), by role.
FILES = {
    "truncated": "easyref/truncated.safetensors",  # models/: the first half of a valid checkpoint
    "pickle": "easyref/pickled.safetensors",  # models/: a torch pickle renamed .safetensors
    "wrong_shapes": "easyref/wrong_shapes.safetensors",  # models/: the right keys, one projector matrix 65 wide
    "no_weights": "LLM/Qwen2-VL-no-weights",  # models/: config and tokenizer, no weight files
    "other_embeds": "embeds_other_checkpoint.safetensors",  # input/: embeds whose fingerprint is another file's
    "escaping_embeds": "escaping_link.safetensors",  # input/: a symlink to an embeds file outside the input folder
    "outside_mllm": "qwen_outside",  # base dir: a valid Qwen2-VL folder outside the model folders
}


@dataclass(frozen=True)
class Case:
    id: str
    node: str  # the node that answers (display name)
    bad_input: str  # what is wrong, as the README table says it
    stage: str  # "validation" (refused when queued), "execution" (the prompt fails) or "accepted" (it runs)
    expect: tuple[str, ...]  # verbatim excerpts of the message (none for accepted cases)
    build: Callable[[dict], dict]  # context (paths) -> API prompt
    server: str = "main"  # "main", or "transformers-too-old": a server whose Python finds transformers 4.49.0 first


# ---- prompt pieces ------------------------------------------------------------------------------------------


def _loader(name: str) -> dict:
    if name in (FLUX, WAN):
        return {"class_type": "RefGuideTestUNETLoader", "inputs": {"unet_name": name, "weight_dtype": "default"}}
    if "svd" in name:
        return {"class_type": "RefGuideTestImageOnlyCheckpointLoader", "inputs": {"ckpt_name": name}}
    return {"class_type": "RefGuideTestCheckpointLoader", "inputs": {"ckpt_name": name}}


def _patch_only(model: str, node: str, **inputs) -> dict:
    """model loader -> node -> a probe output node (the node runs, nothing is sampled)."""
    return {
        "1": _loader(model),
        "2": {"class_type": node, "inputs": {"model": ["1", 0], **inputs}},
        "3": {"class_type": "RefGuideTestInspectModel", "inputs": {"model": ["2", 0]}},
    }


def _with_regions(prompt: dict, count: int, size: int) -> dict:
    """``prompt``'s node "2" with a `regions` MASK of ``count`` white masks of ``size`` x ``size`` pixels."""
    prompt["8"] = {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": count,
                                                          "color": 0xFFFFFF}}  # fmt: skip
    prompt["9"] = {"class_type": "ImageToMask", "inputs": {"image": ["8", 0], "channel": "red"}}
    prompt["2"]["inputs"]["regions"] = ["9", 0]
    return prompt


def _sample(model: str, node: str, batch: int = 2, latent: str = "EmptyLatentImage", **inputs) -> dict:
    """model loader -> node -> KSampler (1 step, 64x64, ``batch`` images) -> SaveLatent."""
    text = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "x"}}
    if model in (FLUX, WAN):
        clip = "RefGuideTestDualCLIPLoader" if model == FLUX else "RefGuideTestCLIPLoader"
        clip_inputs = (
            {"clip_name1": "a", "clip_name2": "b", "type": "flux"}
            if model == FLUX
            else {"clip_name": "u", "type": "wan"}
        )
        text = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["6", 0], "text": "x"}}
    prompt = {
        "1": _loader(model),
        "2": {"class_type": node, "inputs": {"model": ["1", 0], **inputs}},
        "3": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "seed": 0, "steps": 1, "cfg": 1.0,
              "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0, "positive": ["4", 0],
              "negative": ["4", 0], "latent_image": ["5", 0]}},
        "4": text,
        "5": {"class_type": latent, "inputs": {"width": 64, "height": 64, "batch_size": batch}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "bad_input"}},
    }  # fmt: skip
    if model in (FLUX, WAN):
        prompt["6"] = {"class_type": clip, "inputs": clip_inputs}
    return prompt


def _wan_video(reference_frame: int) -> dict:
    prompt = _sample(WAN, "TemporalRefDrop", strength=0.2, reference_frame=reference_frame)
    prompt["5"] = {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 64, "height": 64, "length": 5,
                                                                        "batch_size": 1}}  # fmt: skip
    return prompt


def _svd_video(reference_frame: int) -> dict:
    return {
        "1": _loader("svd_xt_1_1.safetensors"),
        "2": {"class_type": "SVDTemporalRefDrop", "inputs": {"model": ["1", 0], "strength": 0.2,
              "reference_frame": reference_frame}},
        "3": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "seed": 0, "steps": 1, "cfg": 1.0,
              "sampler_name": "euler", "scheduler": "karras", "denoise": 1.0, "positive": ["4", 0],
              "negative": ["4", 1], "latent_image": ["4", 2]}},
        "4": {"class_type": "SVD_img2vid_Conditioning", "inputs": {"clip_vision": ["1", 1], "init_image": ["8", 0],
              "vae": ["1", 2], "width": 64, "height": 64, "video_frames": 3, "motion_bucket_id": 127, "fps": 6,
              "augmentation_level": 0.0}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "bad_input"}},
        "8": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
    }  # fmt: skip


def _image(source: str) -> dict:
    """An IMAGE source node: empty batch, 1x1, flat grey, RGBA (4 channels) or 200:1."""
    if source == "empty":
        return {"class_type": "RefGuideTestEmptyImage", "inputs": {}}
    size = {"1x1": (1, 1), "grey": (64, 64), "200:1": (2000, 10), "rgba": (64, 64)}[source]
    empty = {"class_type": "EmptyImage", "inputs": {"width": size[0], "height": size[1], "batch_size": 1,
             "color": 0x808080 if source == "grey" else 0x336699}}  # fmt: skip
    return empty  # RGBA: _with_image joins an alpha mask to it


def _with_image(prompt: dict, source: str) -> dict:
    prompt["8"] = _image(source)
    if source == "rgba":
        prompt["9"] = {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": 64, "height": 64}}
        prompt["10"] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["8", 0], "alpha": ["9", 0]}}
        for node in prompt.values():
            for name, value in node["inputs"].items():
                if value == ["8", 0] and node is not prompt["10"]:
                    node["inputs"][name] = ["10", 0]
    return prompt


def _reference_image(source: str, model: str = SDXL) -> dict:
    prompt = _patch_only(model, "ApplyRefDropImage", vae=["1", 2], image=["8", 0], strength=0.3, seed=0, skip_up1=False)
    return _with_image(prompt, source)


def _load_mllm(mllm: str = MLLM, checkpoint: str = CHECKPOINT) -> dict:
    return {
        "1": {"class_type": "LoadEasyRefMLLM", "inputs": {"mllm": mllm, "checkpoint": checkpoint, "dtype": "auto"}},
        "2": {"class_type": "EncodeReferenceGroup", "inputs": {"easyref": ["1", 0], "prompt": "a cat",
              "images": ["8", 0]}},
        "3": {"class_type": "SaveEasyRefEmbeds", "inputs": {"embeds": ["2", 0], "filename_prefix": "bad_input"}},
        "8": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x336699}},
    }  # fmt: skip


def _encode(source: str) -> dict:
    return _with_image(_load_mllm(), source)


def _load_embeds(name: str) -> dict:
    prompt = _load_mllm()
    prompt["2"] = {"class_type": "LoadEasyRefEmbeds", "inputs": {"embeds_file": name, "easyref": ["1", 0]}}
    return prompt


def _save_embeds(prefix: str) -> dict:
    prompt = _load_mllm()
    prompt["3"]["inputs"]["filename_prefix"] = prefix
    return prompt


def _apply_easyref(model: str) -> dict:
    prompt = _load_mllm()
    prompt["4"] = _loader(model)
    prompt["5"] = {"class_type": "ApplyEasyRef", "inputs": {"model": ["4", 0], "easyref": ["1", 0],
                   "embeds": ["2", 0], "weight": 1.0, "lora_strength": 1.0, "start_at": 0.0, "end_at": 1.0}}  # fmt: skip
    prompt["6"] = {"class_type": "RefGuideTestInspectModel", "inputs": {"model": ["5", 0]}}
    del prompt["3"]
    return prompt


def _set(prompt: dict, node_id: str, **inputs) -> dict:
    prompt[node_id]["inputs"].update(inputs)
    return prompt


NAN = float("nan")

CASES: list[Case] = [
    # ---- wrong model family, one per node ----
    Case("easyref-sd15", "Apply EasyRef", "an SD1.5 model", "execution",
         ('Apply EasyRef works with SDXL models', 'Load a SDXL checkpoint.'), lambda c: _apply_easyref(SD15)),
    Case("svd-sdxl", "SVD Temporal RefDrop", "an SDXL model", "execution",
         ("SVD Temporal RefDrop works with Stable Video Diffusion models; this is a SDXL model (image UNet): use the 'Apply RefDrop' node instead.",), lambda c: _patch_only(SDXL, "SVDTemporalRefDrop", strength=0.2, reference_frame=0)),
    Case("refdrop-svd", "Apply RefDrop", "an SVD model", "execution",
         ("this is a Stable Video Diffusion model (video UNet): use the 'SVD Temporal RefDrop' node instead.",), lambda c: _patch_only("svd_xt_1_1.safetensors", "ApplyRefDrop", strength=0.3, reference_count=1, skip_up1=False)),
    Case("refdrop-wan", "Apply RefDrop", "a Wan video model", "execution",
         ("this is a Wan 2.1 / 2.2 model (video diffusion transformer): use the 'Temporal RefDrop' node instead.",), lambda c: _patch_only(WAN, "ApplyRefDrop", strength=0.3, reference_count=1, skip_up1=False)),
    Case("image-svd", "Apply RefDrop (Reference Image)", "an SVD model", "execution",
         ("this is a Stable Video Diffusion model (video UNet): use the 'SVD Temporal RefDrop' node instead.",), lambda c: _reference_image("grey", SVD)),
    Case("temporal-sdxl", "Temporal RefDrop", "an SDXL model", "execution",
         ("Temporal RefDrop works with Wan 2.1 / 2.2, ", "models; this is a SDXL model (image UNet): use the 'Apply RefDrop' node instead."), lambda c: _patch_only(SDXL, "TemporalRefDrop", strength=0.2, reference_frame=0)),
    # ---- strengths ----
    Case("strengths-word", "Apply RefDrop", "`reference_strengths` '0.3, lots'", "validation",
         ("reference_strengths: 'lots' is not a number (expected e.g. '0.3, 0.2')",), lambda c: _patch_only(SDXL, "ApplyRefDrop", strength=0.3, reference_count=2, skip_up1=False, reference_strengths="0.3, lots")),
    Case("strengths-nan", "Apply RefDrop", "`reference_strengths` 'nan'", "validation",
         ("reference_strengths: 'nan' is not a finite number (expected e.g. '0.3, 0.2')",), lambda c: _patch_only(SDXL, "ApplyRefDrop", strength=0.3, reference_count=1, skip_up1=False, reference_strengths="nan")),
    Case("image-strengths-inf", "Apply RefDrop (Reference Image)", "`reference_strengths` 'inf'", "validation",
         ("reference_strengths: 'inf' is not a finite number (expected e.g. '0.3, 0.2')",), lambda c: _set(_reference_image("grey"), "2", reference_strengths="inf")),
    # ---- regions (a MASK input: checked when the node runs, ComfyUI passes no linked value to validate_inputs) ----
    Case("regions-count", "Apply RefDrop", "`regions`: 3 masks for 1 reference", "execution",
         ("Apply RefDrop: 3 region masks for 1 reference(s). Give one region for all references or exactly one per reference",),
         lambda c: _with_regions(_patch_only(SDXL, "ApplyRefDrop", strength=0.3, reference_count=1, skip_up1=False), 3, 64)),
    Case("regions-tiny", "Apply RefDrop", "`regions`: a 1x1 mask", "execution",
         ("Apply RefDrop: `regions` is 1x1 pixels",),
         lambda c: _with_regions(_patch_only(SDXL, "ApplyRefDrop", strength=0.3, reference_count=1, skip_up1=False), 1, 1)),
    Case("strength-nan", "Apply RefDrop", "`strength` NaN (JSON `NaN` from an API client)", "validation",
         ('strength is nan: set it to a finite number from -1.0 to 1.0.',), lambda c: _patch_only(SDXL, "ApplyRefDrop", strength=NAN, reference_count=1, skip_up1=False)),
    Case("svd-strength-nan", "SVD Temporal RefDrop", "`strength` NaN", "validation",
         ('strength is nan: set it to a finite number from -1.0 to 1.0.',), lambda c: _patch_only("svd_xt_1_1.safetensors", "SVDTemporalRefDrop", strength=NAN, reference_frame=0)),
    Case("temporal-strength-nan", "Temporal RefDrop", "`strength` NaN", "validation",
         ('strength is nan: set it to a finite number from -1.0 to 1.0.',), lambda c: _patch_only(WAN, "TemporalRefDrop", strength=NAN, reference_frame=0)),
    Case("image-strength-nan", "Apply RefDrop (Reference Image)", "`strength` NaN", "validation",
         ('strength is nan: set it to a finite number from -1.0 to 1.0.',), lambda c: _set(_reference_image("grey"), "2", strength=NAN)),
    Case("easyref-weight-nan", "Apply EasyRef", "`weight` NaN", "validation",
         ('weight is nan: set it to a finite number from -1.0 to 3.0.',), lambda c: _set(_apply_easyref(SDXL), "5", weight=NAN)),
    Case("strength-range", "Apply RefDrop", "`strength` 5 (outside -1..1, from an API client)", "validation",
         ("strength is 5.0: set it to a number from -1.0 to 1.0.",), lambda c: _patch_only(SDXL, "ApplyRefDrop", strength=5.0, reference_count=1, skip_up1=False)),
    Case("count-zero", "Apply RefDrop", "`reference_count` 0 (from an API client)", "validation",
         ("reference_count is 0: set it to a number from 1 to 64.",), lambda c: _patch_only(SDXL, "ApplyRefDrop", strength=0.3, reference_count=0, skip_up1=False)),
    Case("frame-negative", "SVD Temporal RefDrop", "`reference_frame` -1 (from an API client)", "validation",
         ("reference_frame is -1: set it to a number from 0 to 4095.",), lambda c: _patch_only("svd_xt_1_1.safetensors", "SVDTemporalRefDrop", strength=0.2, reference_frame=-1)),
    # ---- references vs batch ----
    Case("count-unet", "Apply RefDrop", "`reference_count` 3 for a batch of 2 (SDXL)", "execution",
         ("Apply RefDrop: the latent batch has 2 image(s)/frame(s), but the reference(s) at position 0, 1, 2 plus at least one image to guide need 4. Raise the latent's batch size",), lambda c: _sample(SDXL, "ApplyRefDrop", batch=2, strength=0.3, reference_count=3, skip_up1=False)),
    Case("count-dit", "Apply RefDrop", "`reference_count` 2 for a batch of 2 (Flux)", "execution",
         ("the reference(s) at position 0, 1 plus at least one image to guide need 3. Raise the latent's batch size",), lambda c: _sample(FLUX, "ApplyRefDrop", batch=2, latent="EmptySD3LatentImage", strength=0.3, reference_count=2, skip_up1=False)),
    Case("svd-frame", "SVD Temporal RefDrop", "`reference_frame` 5 for a 3-frame clip", "execution",
         ('SVD Temporal RefDrop: the latent batch has 3 image(s)/frame(s), but the reference(s) at position 5 plus at least one image to guide need 6.', 'or use fewer / earlier references'), lambda c: _svd_video(5)),
    Case("wan-frame", "Temporal RefDrop", "`reference_frame` 4 for a clip of 2 latent frames", "execution",
         ('Temporal RefDrop: reference_frame 4 is past the end of this clip, which has 2 latent frames', 'Set reference_frame to 1 or less.'), lambda c: _wan_video(4)),
    # ---- images ----
    Case("image-empty", "Apply RefDrop (Reference Image)", "an empty image batch", "execution",
         ('`image` is an empty batch (0 images): connect at least one reference picture.',), lambda c: _reference_image("empty")),
    Case("image-1x1", "Apply RefDrop (Reference Image)", "a 1x1 image", "execution",
         ('`image` is 1x1 pixels, smaller than one latent pixel of the VAE (8x8): use a reference picture of at least 8x8 pixels',), lambda c: _reference_image("1x1")),
    Case("image-grey", "Apply RefDrop (Reference Image)", "a flat grey image", "accepted",
         (), lambda c: _reference_image("grey")),
    Case("image-rgba", "Apply RefDrop (Reference Image)", "an RGBA image (4 channels)", "accepted",
         (), lambda c: _reference_image("rgba")),
    Case("image-wide", "Apply RefDrop (Reference Image)", "a 200:1 image (2000x10)", "accepted",
         (), lambda c: _reference_image("200:1")),
    Case("encode-empty", "Encode Reference Group", "an empty image batch", "execution",
         ('the reference group is empty (nothing connected, or an image batch with no images): connect at least one reference image',), lambda c: _encode("empty")),
    Case("encode-1x1", "Encode Reference Group", "a 1x1 image", "accepted",
         (), lambda c: _encode("1x1")),
    Case("encode-grey", "Encode Reference Group", "a flat grey image", "accepted",
         (), lambda c: _encode("grey")),
    Case("encode-rgba", "Encode Reference Group", "an RGBA image (4 channels)", "accepted",
         (), lambda c: _encode("rgba")),
    Case("encode-wide", "Encode Reference Group", "a 200:1 image (2000x10)", "accepted",
         (), lambda c: _encode("200:1")),
    # ---- files ----
    Case("ckpt-truncated", "Load EasyRef MLLM", "`checkpoint`: a truncated .safetensors file", "execution",
         ('truncated.safetensors cannot be read as a safetensors file', 'Download it again.'), lambda c: _load_mllm(checkpoint="truncated.safetensors")),
    Case("ckpt-pickle", "Load EasyRef MLLM", "`checkpoint`: a pickle file renamed .safetensors", "execution",
         ('pickled.safetensors is a torch (pickle) file renamed to .safetensors, not a safetensors file', 'Give it its real extension'), lambda c: _load_mllm(checkpoint="pickled.safetensors")),
    Case("ckpt-shapes", "Load EasyRef MLLM", "`checkpoint`: the right keys with a wrong shape", "execution",
         ('wrong_shapes.safetensors is not an EasyRef checkpoint this pack can use',), lambda c: _load_mllm(checkpoint="wrong_shapes.safetensors")),
    Case("mllm-missing", "Load EasyRef MLLM", "`mllm`: a folder that is not there", "validation",
         ("Qwen2-VL folder 'Qwen2-VL-7B-Instruct' not found. Searched the LLM model folders", 'download it from https://huggingface.co/Qwen/Qwen2-VL-2B-Instruct'), lambda c: _load_mllm(mllm="Qwen2-VL-7B-Instruct")),
    Case("mllm-no-weights", "Load EasyRef MLLM", "`mllm`: a folder without weight files", "execution",
         ('No .safetensors weight files in', 'Download the complete Qwen/Qwen2-VL-2B-Instruct folder'), lambda c: _load_mllm(mllm="Qwen2-VL-no-weights")),
    Case("ckpt-symlink", "Load EasyRef MLLM", "`checkpoint`: a symlink placed in the easyref model folder (ComfyUI follows links in model folders)", "accepted",
         (), lambda c: _load_mllm(checkpoint="linked.safetensors")),
    Case("embeds-other", "Load EasyRef Embeds", "`embeds_file` made with another checkpoint", "execution",
         ('These EasyRef embeds were made with a different EasyRef checkpoint (another_easyref.safetensors', 'Encode the references again with the loaded checkpoint.'), lambda c: _load_embeds(FILES["other_embeds"])),
    # ---- names that become paths ----
    Case("mllm-dotdot", "Load EasyRef MLLM", "`mllm` '../../qwen_outside' (a valid folder outside)", "validation",
         ("mllm '../../qwen_outside' points outside the model folders", "Pick an entry of the list, e.g. 'Qwen2-VL-2B-Instruct'."), lambda c: _load_mllm(mllm="../../qwen_outside")),
    Case("mllm-absolute", "Load EasyRef MLLM", "`mllm` as an absolute path to a valid folder", "validation",
         ('points outside the model folders', "cannot climb out ('..') or be absolute paths. Pick an entry of the list, e.g. 'Qwen2-VL-2B-Instruct'."), lambda c: _load_mllm(mllm=c["outside_mllm"])),
    Case("ckpt-dotdot", "Load EasyRef MLLM", "`checkpoint` '../easyref/../../input/x.safetensors'", "validation",
         ("Value not in list: checkpoint: '../easyref/../../input/x.safetensors' not in ['easyref.safetensors'",), lambda c: _load_mllm(checkpoint="../easyref/../../input/x.safetensors")),
    Case("ckpt-absolute", "Load EasyRef MLLM", "`checkpoint` as an absolute path to a valid file", "validation",
         ("Value not in list: checkpoint:", "not in ['easyref.safetensors'"), lambda c: _load_mllm(checkpoint=c["checkpoint_path"])),
    Case("embeds-dotdot", "Load EasyRef Embeds", "`embeds_file` '../models/easyref/easyref.safetensors'", "validation",
         ('Value not in list',), lambda c: _load_embeds("../models/easyref/easyref.safetensors")),
    Case("embeds-absolute", "Load EasyRef Embeds", "`embeds_file` as an absolute path", "validation",
         ('Value not in list',), lambda c: _load_embeds(c["outside_embeds"])),
    Case("embeds-symlink", "Load EasyRef Embeds", "`embeds_file`: a symlink in the input folder to a file outside it", "execution",
         ("embeds_file 'escaping_link.safetensors' leads to", 'outside the input folder', 'copy the embeds file into the input folder'), lambda c: _load_embeds(FILES["escaping_embeds"])),
    Case("prefix-dotdot", "Save EasyRef Embeds", "`filename_prefix` '../../escape'", "validation",
         ("filename_prefix '../../escape' would save outside the output folder: use a name relative to it, such as 'easyref/embeds'",), lambda c: _save_embeds("../../escape")),
    Case("prefix-absolute", "Save EasyRef Embeds", "`filename_prefix` '/tmp/escape'", "validation",
         ("filename_prefix '/tmp/escape' would save outside the output folder",), lambda c: _save_embeds("/tmp/escape")),
    # ---- environment ----
    Case("transformers-too-old", "Load EasyRef MLLM", "transformers 4.49.0 in ComfyUI's Python (the pack needs 4.50 or newer)", "execution",
         ("EasyRef needs transformers >= 4.50 for Qwen2-VL; transformers 4.49.0 is installed.", 'Update it in ComfyUI\'s Python environment: pip install -U "transformers>=4.50"'), lambda c: _load_mllm(), server="transformers-too-old"),
    Case("transformers-too-old-refdrop", "Apply RefDrop", "the same transformers 4.49.0 server: the nodes that do not need transformers", "accepted",
         (), lambda c: good_prompt(), server="transformers-too-old"),
]  # fmt: skip


def good_prompt() -> dict:
    """A valid prompt: the server still samples after the bad ones."""
    return _sample(SDXL, "ApplyRefDrop", batch=2, strength=0.3, reference_count=1, skip_up1=False)


def render_table(cases: list[Case] = CASES) -> str:
    """The README table: node, bad input, when ComfyUI answers, the message (excerpt)."""
    stages = {"validation": "refused when queued", "execution": "prompt fails with", "accepted": "runs"}
    lines = ["| Node | Bad input | Answer | Message (excerpt) |", "|---|---|---|---|"]
    for case in cases:
        message = " … ".join(case.expect).replace("|", "\\|") if case.expect else "(no error: a valid input)"
        lines.append(f"| {case.node} | {case.bad_input} | {stages[case.stage]} | {message} |")
    return "\n".join(lines)
