"""EasyRef workflows (SDXL): multi-reference generation, EasyRef + ControlNet, EasyRef + RefDrop."""

from __future__ import annotations

from workflow_builder import SDXL_BASE, Workflow

# The authors' negative prompt and sampling settings (1024x1024, 30 steps, guidance 5, scale 1).
NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality"
STEPS, CFG = 30, 5.0
REFERENCES = ["easyref_reference_1.png", "easyref_reference_2.png", "easyref_reference_3.png"]
CONTROL_IMAGE = "easyref_structure.png"
CONTROLNET_CANNY = {
    "name": "controlnet-canny-sdxl-1.0.safetensors",
    "url": "https://huggingface.co/diffusers/controlnet-canny-sdxl-1.0/resolve/main/diffusion_pytorch_model.fp16.safetensors",
    "directory": "controlnet",
}

MODEL_NOTE = (
    "**Model files**\n\n"
    "| file | from | put it in |\n|---|---|---|\n"
    "| `sd_xl_base_1.0.safetensors` | [stabilityai/stable-diffusion-xl-base-1.0]"
    "(https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0) | `models/checkpoints/` |\n"
    "| the whole Qwen2-VL-2B-Instruct folder (the missing-models dialog cannot download a folder: get all its files) "
    "| [Qwen/Qwen2-VL-2B-Instruct](https://huggingface.co/Qwen/Qwen2-VL-2B-Instruct) "
    "| `models/LLM/Qwen2-VL-2B-Instruct/` |\n"
    "| the EasyRef checkpoint (one file, select it in *Load EasyRef MLLM*) | "
    "[zongzhuofan/EasyRef](https://huggingface.co/zongzhuofan/EasyRef) | `models/easyref/` |\n"
)
EXAMPLE_INPUTS = (
    "**Example images:** the pack copies small drawn examples (`easyref_reference_1.png` ... `_3.png`, "
    "`easyref_structure.png`) into ComfyUI's `input/` folder; upload your own pictures in the *Load Image* nodes.\n\n"
)
HOW_IT_CONNECTS = (
    "*Load EasyRef MLLM* loads Qwen2-VL and the EasyRef checkpoint once. *EasyRef Reference Group* nodes collect "
    "references of any size; *Encode Reference Group* turns them and the prompt into 64 reference tokens (plus the "
    "unconditional tokens for the negative branch). *Apply EasyRef* adds them to every cross-attention layer of SDXL "
    "(decoupled cross-attention, `weight`) and applies the checkpoint's UNet LoRA (`lora_strength`)."
)


def easyref_front(wf: Workflow, prompt: str, x: int = 40, y: int = 40) -> tuple[int, int]:
    """SDXL loader, the reference group (three LoadImage nodes), the encoder and Apply EasyRef; returns
    (checkpoint loader id, Apply EasyRef id)."""
    ckpt = wf.add("CheckpointLoaderSimple", (x, y), ["sd_xl_base_1.0.safetensors"], size=(320, 100),
                  models=[SDXL_BASE])  # fmt: skip
    mllm = wf.add("LoadEasyRefMLLM", (x, y + 140), ["Qwen2-VL-2B-Instruct", "easyref.safetensors", "auto"],
                  size=(320, 130))  # fmt: skip
    group = None
    for i, name in enumerate(REFERENCES):
        image = wf.add("LoadImage", (x + 360 * i, y + 320), [name, "image"], size=(320, 330))
        inputs = {"images": (image, 0)}
        if group is not None:
            inputs["references"] = (group, 0)
        group = wf.add("EasyRefReferenceGroup", (x + 360 * i, y + 690), [], inputs, size=(300, 70))
    encode = wf.add(
        "EncodeReferenceGroup",
        (x + 380, y),
        [prompt],
        {"easyref": (mllm, 0), "references": (group, 0)},
        size=(400, 200),
    )
    apply = wf.add(
        "ApplyEasyRef",
        (x + 820, y),
        [1.0, 1.0, 0.0, 1.0],
        {"model": (ckpt, 0), "easyref": (mllm, 0), "embeds": (encode, 0)},
        size=(320, 200),
    )
    return ckpt, apply


def sampler_back(wf, ckpt, model, positive, negative, batch, seed, prefix, x=1180, y=40):
    latent = wf.add("EmptyLatentImage", (x, y + 560), [1024, 1024, batch], size=(320, 110))
    sampler = wf.add(
        "KSampler",
        (x, y),
        [seed, "fixed", STEPS, CFG, "euler", "normal", 1.0],
        {"model": (model, 0), "positive": positive, "negative": negative, "latent_image": (latent, 0)},
        size=(320, 270),
    )
    decode = wf.add("VAEDecode", (x, y + 320), [], {"samples": (sampler, 0), "vae": (ckpt, 2)}, size=(200, 50))
    wf.add("SaveImage", (x + 360, y), [prefix], {"images": (decode, 0)}, size=(520, 560))


def multi_reference() -> Workflow:
    prompt = "a woman in a red dress standing in a sunflower field, golden hour, photo"
    wf = Workflow()
    ckpt, apply = easyref_front(wf, prompt)
    positive = wf.add("CLIPTextEncode", (820, 300), [prompt], {"clip": (ckpt, 1)}, size=(320, 120))
    negative = wf.add("CLIPTextEncode", (820, 460), [NEGATIVE], {"clip": (ckpt, 1)}, size=(320, 120))
    sampler_back(wf, ckpt, apply, (positive, 0), (negative, 0), 1, 42, "EasyRef")
    wf.note(
        (40, 800),
        "## EasyRef: generation from a group of references\n\n"
        + HOW_IT_CONNECTS
        + "\n\nReplace the three reference images with your own (any sizes; more than two references work best, "
        "square face crops for identity; add or remove *EasyRef Reference Group* nodes). Write the same prompt in "
        "*Encode Reference Group* and the positive *CLIP Text Encode*.\n\n"
        "Paper settings: 1024x1024, 30 steps, cfg 5, `weight` 1, `lora_strength` 1, negative prompt "
        f"`{NEGATIVE}`. Lower `weight` (0.6-0.8) when the prompt should win over the references.\n\n"
        + EXAMPLE_INPUTS
        + MODEL_NOTE,
        size=(520, 520),
    )
    return wf


def with_controlnet() -> Workflow:
    prompt = "a man in a leather jacket sitting on a bench in a park, photo"
    wf = Workflow()
    ckpt, apply = easyref_front(wf, prompt)
    positive = wf.add("CLIPTextEncode", (820, 300), [prompt], {"clip": (ckpt, 1)}, size=(320, 120))
    negative = wf.add("CLIPTextEncode", (820, 460), [NEGATIVE], {"clip": (ckpt, 1)}, size=(320, 120))
    structure = wf.add("LoadImage", (1180, 760), [CONTROL_IMAGE, "image"], size=(320, 330), group="ControlNet")
    edges = wf.add("Canny", (1540, 760), [0.4, 0.8], {"image": (structure, 0)}, size=(300, 100))
    controlnet = wf.add("ControlNetLoader", (1540, 620), [CONTROLNET_CANNY["name"]], size=(320, 80),
                        models=[CONTROLNET_CANNY])  # fmt: skip
    control = wf.add(
        "ControlNetApplyAdvanced",
        (1900, 620),
        [0.6, 0.0, 1.0],
        {"positive": (positive, 0), "negative": (negative, 0), "control_net": (controlnet, 0), "image": (edges, 0)},
        size=(320, 170),
    )
    sampler_back(wf, ckpt, apply, (control, 0), (control, 1), 1, 7, "EasyRef_ControlNet")
    wf.note(
        (40, 800),
        "## EasyRef with a ControlNet (structure control)\n\n"
        + HOW_IT_CONNECTS
        + "\n\nThe references decide **who/what** appears, the ControlNet decides **where**: the structure image is "
        "turned into Canny edges that an SDXL canny ControlNet follows (the paper's figure 8 combines EasyRef with "
        "ControlNet the same way). The ControlNet sees only the text prompt, never the reference tokens. "
        "A depth or pose ControlNet works the same way with its own preprocessor. ControlNet strength about 0.5-0.7 "
        "leaves room for the references.\n\n"
        + EXAMPLE_INPUTS
        + MODEL_NOTE
        + "| `controlnet-canny-sdxl-1.0.safetensors` (the repository's `diffusion_pytorch_model.fp16.safetensors`) "
        "| [diffusers/controlnet-canny-sdxl-1.0](https://huggingface.co/diffusers/controlnet-canny-sdxl-1.0) "
        "| `models/controlnet/` |\n",
        size=(520, 560),
    )
    return wf


def with_refdrop() -> Workflow:
    prompts = "\n".join(
        [
            "a woman reading a book in a cozy cafe, photo",
            "a woman walking on a beach at sunset, photo",
            "a woman hiking in snowy mountains, photo",
        ]
    )
    wf = Workflow()
    ckpt, apply = easyref_front(wf, "a woman, photo")
    refdrop = wf.add(
        "ApplyRefDrop", (820, 300), [0.3, 1, False, "", "", 0.0, 1.0], {"model": (apply, 0)}, size=(320, 200)
    )
    positive = wf.add("RefDropPromptBatch", (820, 540), [prompts], {"clip": (ckpt, 1)}, size=(320, 160))
    negative = wf.add("CLIPTextEncode", (820, 740), [NEGATIVE], {"clip": (ckpt, 1)}, size=(320, 120))
    sampler_back(wf, ckpt, refdrop, (positive, 0), (negative, 0), 3, 1234, "EasyRef_RefDrop")
    wf.note(
        (40, 800),
        "## EasyRef + RefDrop: identity from references, consistency across the batch\n\n"
        + HOW_IT_CONNECTS
        + "\n\n*Apply RefDrop* then treats image 1 of the latent batch (3 images, one prompt line each in *RefDrop "
        "Prompt Batch*) as the reference for images 2 and 3: EasyRef gives every image the identity of the reference "
        "group, RefDrop (strength 0.3) keeps clothing, colours and style consistent between the generated images. "
        "Raise the RefDrop strength for more consistency, lower EasyRef's `weight` for more prompt freedom.\n\n"
        + EXAMPLE_INPUTS
        + MODEL_NOTE,
        size=(520, 520),
    )
    return wf


def build() -> dict[str, Workflow]:
    return {
        "easyref_sdxl_multi_reference": multi_reference(),
        "easyref_sdxl_controlnet": with_controlnet(),
        "easyref_sdxl_with_refdrop": with_refdrop(),
    }
