"""The Flux 2 RefDrop workflow, run as shipped through a live ComfyUI server with tiny stand-in Flux 2 weights."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from refguide_testing import workflow as wf

pytestmark = pytest.mark.e2e

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
SWAP = {"UNETLoader": "RefGuideTestUNETLoader", "CLIPLoader": "RefGuideTestCLIPLoader",
        "VAELoader": "RefGuideTestVAELoader"}  # fmt: skip


def test_flux2_consistent_character_runs_end_to_end(comfy_server, object_info):
    """Flux 2's loaders (CLIPLoader type flux2), Empty Flux 2 Latent (128 channels, 16x) with a batch of 4 at
    1024x1024, in-batch Apply RefDrop, cfg 1. Run at 512x512 (only the latent's size changes)."""
    graph = wf.load(WORKFLOWS / "refdrop_flux2_consistent_character.json")
    assert {"UNETLoader", "CLIPLoader", "VAELoader", "ApplyRefDrop", "MarkdownNote"} <= wf.node_types(graph)
    prompt = wf.ui_to_api(graph, object_info, swap=SWAP)
    clip = next(n["inputs"] for n in prompt.values() if n["class_type"] == "RefGuideTestCLIPLoader")
    assert clip["type"] == "flux2"
    refdrop = next(n["inputs"] for n in prompt.values() if n["class_type"] == "ApplyRefDrop")
    assert (refdrop["strength"], refdrop["reference_count"]) == (0.3, 1)
    sampler = next(n["inputs"] for n in prompt.values() if n["class_type"] == "KSampler")
    assert sampler["cfg"] == 1.0  # Flux 2 dev: one guidance chunk
    latent = next(n["inputs"] for n in prompt.values() if n["class_type"] == "EmptyFlux2LatentImage")
    assert (latent["width"], latent["height"], latent["batch_size"]) == (1024, 1024, 4)
    latent.update(width=512, height=512)
    entry = comfy_server.run_prompt(prompt, timeout=900)
    images = [np.asarray(Image.open(path), dtype=np.float32) for path in comfy_server.output_files(entry)]
    assert len(images) == 4
    assert all(a.shape == (512, 512, 3) and np.isfinite(a).all() and a.std() > 0 for a in images)
