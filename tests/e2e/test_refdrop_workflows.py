"""Every shipped RefDrop workflow, run as shipped through a live ComfyUI server with tiny stand-in weights."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from refguide_testing import workflow as wf

pytestmark = pytest.mark.e2e

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
SWAP = {"CheckpointLoaderSimple": "RefGuideTestCheckpointLoader"}
REFDROP_WORKFLOWS = [
    "refdrop_sdxl_consistent_character.json",
    "refdrop_sdxl_diverse_generation.json",
    "refdrop_sdxl_blend_two_references.json",
]


@pytest.mark.parametrize("name", REFDROP_WORKFLOWS)
def test_workflow_runs_end_to_end(comfy_server, object_info, name):
    graph = wf.load(WORKFLOWS / name)
    assert "MarkdownNote" in wf.node_types(graph)  # each workflow explains itself
    prompt = wf.ui_to_api(graph, object_info, swap=SWAP)
    batch = next(n["inputs"]["batch_size"] for n in prompt.values() if n["class_type"] == "EmptyLatentImage")
    entry = comfy_server.run_prompt(prompt, timeout=900)
    images = comfy_server.output_files(entry)
    assert len(images) == batch
    arrays = [np.asarray(Image.open(path)) for path in images]
    assert all(a.shape == (1024, 1024, 3) for a in arrays)
    assert all(np.isfinite(a).all() and a.std() > 0 for a in arrays)
