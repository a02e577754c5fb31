"""Every shipped EasyRef workflow, run as shipped through a live ComfyUI server with tiny stand-ins.

The tiny Qwen2-VL folder and a tiny EasyRef checkpoint whose UNet-side weights fit ``tiny_unet("sdxl_light")``
(what the test checkpoint loader returns for SDXL file names) go into the server's model folders under the names
the workflows use; only loader nodes are swapped (checkpoint and ControlNet loaders).
"""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from refguide_testing import tiny_easyref
from refguide_testing import workflow as wf
from refguide_testing.server import PromptError

pytestmark = pytest.mark.e2e

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
SWAP = {"CheckpointLoaderSimple": "RefGuideTestCheckpointLoader", "ControlNetLoader": "RefGuideTestControlNetLoader"}
EASYREF_WORKFLOWS = sorted(p.name for p in WORKFLOWS.glob("easyref_sdxl_*.json"))
AUTHORS_NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality"


@pytest.fixture(scope="module")
def server(comfy_server):
    models = comfy_server.base_dir / "models"
    tiny_easyref.make_models_for(str(models), "sdxl_light", name="easyref.safetensors")
    rng = np.random.default_rng(5)
    sizes = [(96, 128), (160, 120), (100, 100)]  # references of different sizes and aspect ratios
    for i, (h, w) in enumerate(sizes, start=1):
        pixels = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(comfy_server.base_dir / "input" / f"easyref_reference_{i}.png")
    structure = np.zeros((256, 256, 3), dtype=np.uint8)
    structure[64:192, 96:160] = 255  # a bright box: clear Canny edges
    Image.fromarray(structure).save(comfy_server.base_dir / "input" / "easyref_structure.png")
    return comfy_server


def test_all_easyref_workflows_are_listed():
    assert EASYREF_WORKFLOWS == [
        "easyref_sdxl_controlnet.json",
        "easyref_sdxl_multi_reference.json",
        "easyref_sdxl_with_refdrop.json",
    ]


@pytest.mark.parametrize("name", EASYREF_WORKFLOWS)
def test_workflow_runs_end_to_end(server, object_info, name):
    graph = wf.load(WORKFLOWS / name)
    types = wf.node_types(graph)
    assert {"MarkdownNote", "LoadEasyRefMLLM", "EncodeReferenceGroup", "ApplyEasyRef"} <= types
    prompt = wf.ui_to_api(graph, object_info, swap=SWAP)
    sampler = next(n["inputs"] for n in prompt.values() if n["class_type"] == "KSampler")
    assert (sampler["steps"], sampler["cfg"]) == (30, 5.0)
    latent = next(n["inputs"] for n in prompt.values() if n["class_type"] == "EmptyLatentImage")
    assert (latent["width"], latent["height"]) == (1024, 1024)
    texts = [n["inputs"].get("text") for n in prompt.values() if n["class_type"] == "CLIPTextEncode"]
    assert AUTHORS_NEGATIVE in texts
    entry = server.run_prompt(prompt, timeout=900)
    images = server.output_files(entry)
    assert len(images) == latent["batch_size"]
    arrays = [np.asarray(Image.open(path)) for path in images]
    assert all(a.shape == (1024, 1024, 3) for a in arrays)
    assert all(np.isfinite(a).all() and a.std() > 0 for a in arrays)


def test_sd15_model_is_refused_with_a_clear_message(server, object_info):
    graph = wf.load(WORKFLOWS / "easyref_sdxl_multi_reference.json")
    prompt = wf.ui_to_api(graph, object_info, swap=SWAP)
    loader = next(n for n in prompt.values() if n["class_type"] == "RefGuideTestCheckpointLoader")
    loader["inputs"]["ckpt_name"] = "v1-5-pruned-emaonly.safetensors"  # the test loader returns a tiny SD1.5
    with pytest.raises(PromptError, match=r"Apply EasyRef works with SDXL models; this model \(SD-family UNet"):
        server.run_prompt(prompt, timeout=300)


def test_apply_easyref_schema(object_info):
    info = object_info["ApplyEasyRef"]
    assert info["display_name"] == "Apply EasyRef" and info["category"] == "EasyRef" and info["description"]
    assert info["input_order"]["required"] == [
        "model",
        "easyref",
        "embeds",
        "weight",
        "lora_strength",
        "start_at",
        "end_at",
    ]
    assert info["input_order"]["optional"] == ["attn_mask"]
    required = info["input"]["required"]
    assert required["weight"][1]["default"] == 1.0 and required["lora_strength"][1]["default"] == 1.0
    assert (required["start_at"][1]["default"], required["end_at"][1]["default"]) == (0.0, 1.0)
    assert info["input"]["optional"]["attn_mask"][0] == "MASK"
    assert info["output"] == ["MODEL"]
