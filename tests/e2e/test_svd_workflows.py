"""The SVD Temporal RefDrop workflows, run as shipped through a live ComfyUI server with tiny stand-in weights."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from refguide_testing import workflow as wf

pytestmark = pytest.mark.e2e

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
SWAP = {
    "CheckpointLoaderSimple": "RefGuideTestCheckpointLoader",
    "ImageOnlyCheckpointLoader": "RefGuideTestImageOnlyCheckpointLoader",
}


@pytest.fixture(scope="module")
def input_image(comfy_server):
    """The start image the img2vid workflow expects in ComfyUI's input folder."""
    g = np.random.default_rng(0)
    yy, xx = np.mgrid[0:576, 0:1024]
    image = np.stack([xx / 1024, yy / 576, 0.5 + 0.1 * g.standard_normal((576, 1024))], -1)
    path = comfy_server.base_dir / "input" / "refdrop_svd_input.png"
    Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


def animations(comfy_server, entry) -> dict[str, Image.Image]:
    return {path.name.rsplit("_", 2)[0]: Image.open(path) for path in comfy_server.output_files(entry)
            if path.suffix == ".webp"}  # fmt: skip


def test_svd_img2vid_with_comparison(comfy_server, object_info, input_image):
    graph = wf.load(WORKFLOWS / "refdrop_svd_img2vid_comparison.json")
    assert {"SVDTemporalRefDrop", "VideoLinearCFGGuidance", "SaveAnimatedWEBP", "MarkdownNote"} <= wf.node_types(graph)
    entry = comfy_server.run_prompt(wf.ui_to_api(graph, object_info, swap=SWAP), timeout=900)
    videos = animations(comfy_server, entry)
    assert set(videos) == {"RefDrop_svd", "SVD_plain", "RefDrop_vs_plain_svd"}
    assert all(video.n_frames == 14 for video in videos.values())
    assert videos["RefDrop_svd"].size == (1024, 576)
    assert videos["RefDrop_vs_plain_svd"].size == (2048, 576)
    guided = np.asarray(videos["RefDrop_svd"].convert("RGB"), dtype=np.float32)
    plain = np.asarray(videos["SVD_plain"].convert("RGB"), dtype=np.float32)
    assert np.abs(guided - plain).mean() > 0  # same seed, the guidance changed the video


def test_sdxl_to_svd_pipeline(comfy_server, object_info):
    graph = wf.load(WORKFLOWS / "refdrop_sdxl_to_svd_pipeline.json")
    assert {"ApplyRefDrop", "SVDTemporalRefDrop", "ImageFromBatch"} <= wf.node_types(graph)
    entry = comfy_server.run_prompt(wf.ui_to_api(graph, object_info, swap=SWAP), timeout=900)
    stills = [p for p in comfy_server.output_files(entry) if p.suffix == ".png"]
    assert len(stills) == 2 and all(Image.open(p).size == (1024, 1024) for p in stills)
    videos = animations(comfy_server, entry)
    assert set(videos) == {"RefDrop_sdxl_to_svd"} and videos["RefDrop_sdxl_to_svd"].n_frames == 14
