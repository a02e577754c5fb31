"""The Apply RefDrop (Reference Image) workflows, run as shipped through a live ComfyUI server with tiny stand-ins."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from refguide_testing import workflow as wf

pytestmark = pytest.mark.e2e

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
SWAP = {"CheckpointLoaderSimple": "RefGuideTestCheckpointLoader"}
PICTURE = "refdrop_reference_character.png"  # the file name the workflows' Load Image node expects


@pytest.fixture(scope="module")
def reference_picture(comfy_server):
    """A 768 x 512 portrait-ish picture (not the latent's size) whose alpha marks the subject, as the mask editor does.

    LoadImage's MASK is 1 - alpha: the painted (transparent) ellipse in the middle is the subject.
    """
    g = np.random.default_rng(0)
    yy, xx = np.mgrid[0:768, 0:512]
    rgb = np.stack([xx / 512, yy / 768, 0.5 + 0.1 * g.standard_normal((768, 512))], -1)
    subject = ((xx - 256) / 150) ** 2 + ((yy - 400) / 300) ** 2 <= 1.0
    alpha = np.where(subject, 0, 255)
    rgba = np.concatenate([np.clip(rgb, 0, 1) * 255, alpha[..., None]], -1).astype(np.uint8)
    path = comfy_server.base_dir / "input" / PICTURE
    Image.fromarray(rgba, "RGBA").save(path)
    return path


def run_workflow(comfy_server, object_info, name):
    graph = wf.load(WORKFLOWS / name)
    assert {"LoadImage", "ApplyRefDropImage", "RefDropPromptBatch", "MarkdownNote"} <= wf.node_types(graph)
    prompt = wf.ui_to_api(graph, object_info, swap=SWAP)
    node = next(n for n in prompt.values() if n["class_type"] == "ApplyRefDropImage")
    entry = comfy_server.run_prompt(prompt, timeout=900)
    images = [np.asarray(Image.open(path), dtype=np.float32) for path in comfy_server.output_files(entry)]
    assert len(images) == 4  # four prompts -> four images; the reference rows never reach the sampler
    assert all(a.shape == (1024, 1024, 3) and np.isfinite(a).all() and a.std() > 0 for a in images)
    return node, images


def test_character_from_picture(comfy_server, object_info, reference_picture):
    node, images = run_workflow(comfy_server, object_info, "refdrop_sdxl_character_from_picture.json")
    assert "mask" not in node["inputs"] and node["inputs"]["image"][1] == 0
    assert node["inputs"]["strength"] == 0.35 and node["inputs"]["seed"] == 42


def test_subject_only(comfy_server, object_info, reference_picture):
    node, images = run_workflow(comfy_server, object_info, "refdrop_sdxl_subject_only.json")
    assert node["inputs"]["mask"][1] == 1  # LoadImage's MASK output
    log = comfy_server.log_text()
    assert "is all black" not in log  # the painted subject reached the node


def test_two_characters(comfy_server, object_info):
    """Two pictures (Batch Images) with a left and a right region (Batch Masks of two composited solid masks), at
    half the shipped 1216 x 832 (same aspect: the regions keep their halves); only the latent's size changes."""
    graph = wf.load(WORKFLOWS / "refdrop_sdxl_two_characters.json")
    assert {"LoadImage", "BatchImagesNode", "BatchMasksNode", "SolidMask", "MaskComposite"} <= wf.node_types(graph)
    prompt = wf.ui_to_api(graph, object_info, swap=SWAP)
    node = next(n["inputs"] for n in prompt.values() if n["class_type"] == "ApplyRefDropImage")
    assert node["reference_strengths"] == "0.35, 0.35" and "mask" not in node
    regions = prompt[node["regions"][0]]
    assert regions["class_type"] == "BatchMasksNode" and sorted(regions["inputs"]) == ["masks.mask0", "masks.mask1"]
    left, right = (prompt[regions["inputs"][f"masks.mask{i}"][0]]["inputs"] for i in (0, 1))
    assert (left["x"], right["x"]) == (0, 608)
    latent = next(n["inputs"] for n in prompt.values() if n["class_type"] == "EmptyLatentImage")
    assert (latent["width"], latent["height"], latent["batch_size"]) == (1216, 832, 4)
    latent.update(width=608, height=416)
    entry = comfy_server.run_prompt(prompt, timeout=900)
    images = [np.asarray(Image.open(path), dtype=np.float32) for path in comfy_server.output_files(entry)]
    assert len(images) == 4  # the two reference rows never reach the sampler's output
    assert all(a.shape == (416, 608, 3) and np.isfinite(a).all() and a.std() > 0 for a in images)
    assert "guides nowhere" not in comfy_server.log_text()  # both regions reached the node
