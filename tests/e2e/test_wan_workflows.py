"""The Wan 2.2 Temporal RefDrop workflows, run through a live ComfyUI server with tiny stand-in weights.

Only the loader nodes are swapped for test loaders; the graph, its links and every other widget run as shipped,
except the clip size, length and step count (640x640, 81 frames, 20 steps on a CPU would take hours), which are
shrunk keeping the two-expert split of the schedule (high noise: the first half, low noise: the rest).
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
WIDTH, HEIGHT, LENGTH, STEPS = 64, 48, 9, 4  # 9 video frames = 3 latent frames


@pytest.fixture(scope="module")
def input_image(comfy_server):
    g = np.random.default_rng(1)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    image = np.stack([xx / WIDTH, yy / HEIGHT, 0.5 + 0.1 * g.standard_normal((HEIGHT, WIDTH))], -1)
    path = comfy_server.base_dir / "input" / "refdrop_wan_input.png"
    Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


def shrink(prompt: dict) -> dict:
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] in ("WanImageToVideo", "EmptyHunyuanLatentVideo"):
            inputs.update(width=WIDTH, height=HEIGHT, length=LENGTH)
        if node["class_type"] == "KSamplerAdvanced":
            inputs["steps"] = STEPS
            if inputs["start_at_step"] == 0:
                inputs["end_at_step"] = STEPS // 2
            else:
                inputs["start_at_step"] = STEPS // 2
    return prompt


def test_wan22_i2v_with_comparison(comfy_server, object_info, input_image):
    graph = wf.load(WORKFLOWS / "refdrop_wan22_i2v_comparison.json")
    types = [node["type"] for node in graph["nodes"]]
    assert types.count("TemporalRefDrop") == 2 and types.count("UNETLoader") == 2
    assert types.count("KSamplerAdvanced") == 4 and {"WanImageToVideo", "ImageStitch", "MarkdownNote"} <= set(types)
    prompt = shrink(wf.ui_to_api(graph, object_info, swap=SWAP))
    entry = comfy_server.run_prompt(prompt, timeout=600)
    videos = {path.name.rsplit("_", 2)[0]: Image.open(path) for path in comfy_server.output_files(entry)
              if path.suffix == ".webp"}  # fmt: skip
    assert set(videos) == {"RefDrop_wan22", "Wan22_plain", "RefDrop_vs_plain_wan22"}
    assert all(video.n_frames == LENGTH for video in videos.values())
    assert videos["RefDrop_wan22"].size == (WIDTH, HEIGHT)
    assert videos["RefDrop_vs_plain_wan22"].size == (2 * WIDTH, HEIGHT)
    frames = {}
    for name in ("RefDrop_wan22", "Wan22_plain"):
        video = videos[name]
        stack = []
        for index in range(video.n_frames):
            video.seek(index)
            stack.append(np.asarray(video.convert("RGB"), dtype=np.float32))
        frames[name] = np.stack(stack)
    assert np.abs(frames["RefDrop_wan22"] - frames["Wan22_plain"]).mean() > 0  # same seed, guidance changed it


def webp_frames(video) -> np.ndarray:
    stack = []
    for index in range(video.n_frames):
        video.seek(index)
        stack.append(np.asarray(video.convert("RGB"), dtype=np.float32))
    return np.stack(stack)


def test_wan22_t2v_character_from_picture(comfy_server, object_info):
    """Text-to-video with one character picture as the clip's reference (the pack's example input, which the pack
    copies into input/), next to plain Wan 2.2 from the same seed and prompt."""
    graph = wf.load(WORKFLOWS / "refdrop_wan22_t2v_character_from_picture.json")
    types = [node["type"] for node in graph["nodes"]]
    assert types.count("TemporalRefDrop") == 2 and types.count("UNETLoader") == 2 and "WanImageToVideo" not in types
    assert types.count("KSamplerAdvanced") == 4 and {"LoadImage", "EmptyHunyuanLatentVideo", "ImageStitch"} <= set(
        types
    )
    prompt = shrink(wf.ui_to_api(graph, object_info, swap=SWAP))
    guided = [node["inputs"] for node in prompt.values() if node["class_type"] == "TemporalRefDrop"]
    assert all({"image", "vae"} <= set(inputs) and inputs["seed"] == 42 for inputs in guided)
    picture = next(node for node in prompt.values() if node["class_type"] == "LoadImage")["inputs"]["image"]
    assert (comfy_server.base_dir / "input" / picture).exists()
    entry = comfy_server.run_prompt(prompt, timeout=600)
    videos = {path.name.rsplit("_", 2)[0]: Image.open(path) for path in comfy_server.output_files(entry)
              if path.suffix == ".webp"}  # fmt: skip
    assert set(videos) == {"RefDrop_wan22_t2v_picture", "Wan22_t2v_plain", "RefDrop_vs_plain_wan22_t2v_picture"}
    assert all(video.n_frames == LENGTH for video in videos.values())  # the clip's frames, no picture frame
    assert videos["RefDrop_wan22_t2v_picture"].size == (WIDTH, HEIGHT)
    assert videos["RefDrop_vs_plain_wan22_t2v_picture"].size == (2 * WIDTH, HEIGHT)
    guided_frames = webp_frames(videos["RefDrop_wan22_t2v_picture"])
    plain_frames = webp_frames(videos["Wan22_t2v_plain"])
    assert np.abs(guided_frames - plain_frames).mean() > 0  # same seed and prompt: the picture changed it
