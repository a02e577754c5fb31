"""The Flux RefDrop workflows, run as shipped through a live ComfyUI server with tiny stand-in Flux weights."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from refguide_testing import workflow as wf

pytestmark = pytest.mark.e2e

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
SWAP = {
    "UNETLoader": "RefGuideTestUNETLoader",
    "DualCLIPLoader": "RefGuideTestDualCLIPLoader",
    "VAELoader": "RefGuideTestVAELoader",
}


def test_flux_consistent_character_runs_end_to_end(comfy_server, object_info):
    graph = wf.load(WORKFLOWS / "refdrop_flux_consistent_character.json")
    assert "MarkdownNote" in wf.node_types(graph)
    prompt = wf.ui_to_api(graph, object_info, swap=SWAP)
    sampler = next(n["inputs"] for n in prompt.values() if n["class_type"] == "KSampler")
    assert sampler["cfg"] == 1.0  # Flux dev: one guidance chunk
    entry = comfy_server.run_prompt(prompt, timeout=900)
    images = [np.asarray(Image.open(path)) for path in comfy_server.output_files(entry)]
    assert len(images) == 4
    assert all(a.shape == (1024, 1024, 3) and a.std() > 0 for a in images)


@pytest.fixture(scope="module")
def reference_picture(comfy_server):
    """The picture the Flux reference-image workflow's Load Image node expects (768 x 512, not the latent's size)."""
    g = np.random.default_rng(1)
    yy, xx = np.mgrid[0:768, 0:512]
    rgb = np.stack([xx / 512, yy / 768, 0.5 + 0.1 * g.standard_normal((768, 512))], -1)
    path = comfy_server.base_dir / "input" / "refdrop_reference_character.png"
    Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


def test_flux_character_from_picture_runs_end_to_end(comfy_server, object_info, reference_picture):
    graph = wf.load(WORKFLOWS / "refdrop_flux_character_from_picture.json")
    assert {"LoadImage", "ApplyRefDropImage", "MarkdownNote"} <= wf.node_types(graph)
    prompt = wf.ui_to_api(graph, object_info, swap=SWAP)
    node = next(n for n in prompt.values() if n["class_type"] == "ApplyRefDropImage")
    assert node["inputs"]["strength"] == 0.3 and "mask" not in node["inputs"]
    entry = comfy_server.run_prompt(prompt, timeout=900)
    images = [np.asarray(Image.open(path)) for path in comfy_server.output_files(entry)]
    assert len(images) == 4  # the reference row never reaches the sampler's output
    assert all(a.shape == (1024, 1024, 3) and a.std() > 0 for a in images)


def test_flux_two_characters_runs_end_to_end(comfy_server, object_info):
    """Two pictures (Batch Images) with a left and a right region (Batch Masks of two composited solid masks).

    At half the shipped 1216 x 832 (same aspect, so the 1216 x 832 regions keep their halves): only the latent's
    width and height change. The pictures are the shipped example inputs the pack copies into input/."""
    graph = wf.load(WORKFLOWS / "refdrop_flux_two_characters.json")
    assert {"BatchImagesNode", "BatchMasksNode", "SolidMask", "MaskComposite"} <= wf.node_types(graph)
    prompt = wf.ui_to_api(graph, object_info, swap=SWAP)
    node = next(n["inputs"] for n in prompt.values() if n["class_type"] == "ApplyRefDropImage")
    assert node["reference_strengths"] == "0.3, 0.3" and prompt[node["regions"][0]]["class_type"] == "BatchMasksNode"
    assert sorted(prompt[node["regions"][0]]["inputs"]) == ["masks.mask0", "masks.mask1"]
    assert sorted(prompt[node["image"][0]]["inputs"]) == ["images.image0", "images.image1"]
    latent = next(n["inputs"] for n in prompt.values() if n["class_type"] == "EmptySD3LatentImage")
    assert (latent["width"], latent["height"], latent["batch_size"]) == (1216, 832, 2)
    latent.update(width=608, height=416)
    entry = comfy_server.run_prompt(prompt, timeout=900)
    images = [np.asarray(Image.open(path), dtype=np.float32) for path in comfy_server.output_files(entry)]
    assert len(images) == 2  # the two reference rows never reach the sampler's output
    assert all(a.shape == (416, 608, 3) and np.isfinite(a).all() and a.std() > 0 for a in images)


def test_skip_up1_on_flux_is_refused_with_a_pointer_to_exclude_blocks(comfy_server):
    prompt = {
        "1": {"class_type": "RefGuideTestUNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors",
                                                                  "weight_dtype": "default"}},
        "2": {"class_type": "ApplyRefDrop", "inputs": {"model": ["1", 0], "strength": 0.3, "reference_count": 1,
                                                        "skip_up1": True}},
        "3": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "seed": 0, "steps": 1, "cfg": 1.0,
              "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0, "positive": ["4", 0],
              "negative": ["4", 0], "latent_image": ["5", 0]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["6", 0], "text": "x"}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "6": {"class_type": "RefGuideTestDualCLIPLoader", "inputs": {"clip_name1": "a", "clip_name2": "b",
                                                                      "type": "flux"}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "bad"}},
    }  # fmt: skip
    with pytest.raises(RuntimeError, match="skip_up1.*exclude_blocks"):
        comfy_server.run_prompt(prompt, timeout=300)
