"""The Z-Image Turbo and Qwen-Image reference-picture workflows, run as shipped through a live ComfyUI server with
tiny stand-in weights (UNETLoader, CLIPLoader and VAELoader swapped for the test loaders), at a smaller latent.

The tiny Z-Image has a 256-wide transformer (about 50 s a model call at the shipped 1024 x 1024 on two CPU cores),
so both graphs run at 256 x 256: only EmptySD3LatentImage's width and height change, everything else is the file.
The reference picture is the shipped example input (refdrop_character_1.png) the pack copies into input/.
"""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from refguide_testing import workflow as wf

pytestmark = pytest.mark.e2e

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
SWAP = {
    "UNETLoader": "RefGuideTestUNETLoader",
    "CLIPLoader": "RefGuideTestCLIPLoader",
    "VAELoader": "RefGuideTestVAELoader",
}
SIZE = 256


def run_picture_workflow(comfy_server, object_info, name):
    """Load, convert (loaders swapped), shrink the latent to SIZE, run; returns (API prompt, output images)."""
    graph = wf.load(WORKFLOWS / name)
    assert {"LoadImage", "ApplyRefDropImage", "ModelSamplingAuraFlow", "MarkdownNote"} <= wf.node_types(graph)
    prompt = wf.ui_to_api(graph, object_info, swap=SWAP)
    latent = next(n["inputs"] for n in prompt.values() if n["class_type"] == "EmptySD3LatentImage")
    latent.update(width=SIZE, height=SIZE)
    entry = comfy_server.run_prompt(prompt, timeout=900)
    images = [np.asarray(Image.open(path), dtype=np.float32) for path in comfy_server.output_files(entry)]
    assert len(images) == latent["batch_size"]  # the reference row never reaches the sampler's output
    assert all(a.shape == (SIZE, SIZE, 3) and np.isfinite(a).all() and a.std() > 0 for a in images)
    return prompt, images


def by_type(prompt, class_type):
    return next(n["inputs"] for n in prompt.values() if n["class_type"] == class_type)


def test_zimage_character_from_picture(comfy_server, object_info):
    prompt, images = run_picture_workflow(comfy_server, object_info, "refdrop_zimage_character_from_picture.json")
    assert len(images) == 4
    assert by_type(prompt, "RefGuideTestCLIPLoader")["type"] == "lumina2"  # Qwen3-4B, as ComfyUI's template
    sampler = by_type(prompt, "KSampler")
    assert (sampler["steps"], sampler["cfg"], sampler["sampler_name"]) == (8, 1.0, "res_multistep")
    assert by_type(prompt, "ModelSamplingAuraFlow")["shift"] == 3.0
    node = by_type(prompt, "ApplyRefDropImage")
    assert node["strength"] == 0.3 and "mask" not in node and "regions" not in node


def test_qwen_image_character_from_picture(comfy_server, object_info):
    prompt, images = run_picture_workflow(comfy_server, object_info, "refdrop_qwen_image_character_from_picture.json")
    assert len(images) == 2
    assert by_type(prompt, "RefGuideTestCLIPLoader")["type"] == "qwen_image"
    sampler = by_type(prompt, "KSampler")
    assert (sampler["steps"], sampler["cfg"], sampler["sampler_name"]) == (20, 4.0, "euler")  # two guidance chunks
    assert by_type(prompt, "ModelSamplingAuraFlow")["shift"] == pytest.approx(3.1)
    assert by_type(prompt, "ApplyRefDropImage")["strength"] == 0.3
