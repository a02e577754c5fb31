"""Every shipped workflow at the smallest size it allows, for the reliability tests (soak, interrupt, memory).

Only loader nodes are swapped for the test loaders (as in every e2e test); the graphs, links and other widgets
run as shipped except the sizes, frame counts and step counts, which are shrunk (``small``), and the variations
a test asks for (``set_inputs``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
from PIL import Image

from . import tiny_easyref
from . import workflow as wf

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
SWAP = {
    "CheckpointLoaderSimple": "RefGuideTestCheckpointLoader",
    "ImageOnlyCheckpointLoader": "RefGuideTestImageOnlyCheckpointLoader",
    "ControlNetLoader": "RefGuideTestControlNetLoader",
    "UNETLoader": "RefGuideTestUNETLoader",
    "DualCLIPLoader": "RefGuideTestDualCLIPLoader",
    "CLIPLoader": "RefGuideTestCLIPLoader",
    "VAELoader": "RefGuideTestVAELoader",
}
LOADERS = set(SWAP.values())
SIZE, STEPS, FRAMES, WAN_FRAMES = 64, 2, 3, 5  # image side, sampling steps, SVD frames, Wan video frames


def names() -> list[str]:
    return sorted(path.stem for path in WORKFLOWS.glob("*.json"))


def prepare_inputs(base_dir: Path) -> None:
    """The pictures the workflows load (input folder) and the tiny EasyRef model files (models folder)."""
    tiny_easyref.make_models_for(str(base_dir / "models"), "sdxl_light", name="easyref.safetensors")
    rng = np.random.default_rng(7)
    pictures = {
        "easyref_reference_1.png": (48, 64, "RGB"),
        "easyref_reference_2.png": (80, 60, "RGB"),
        "easyref_reference_3.png": (50, 50, "RGB"),
        "easyref_structure.png": (64, 64, "RGB"),
        "refdrop_reference_character.png": (96, 64, "RGBA"),
        "refdrop_svd_input.png": (64, 64, "RGB"),
        "refdrop_wan_input.png": (SIZE, SIZE, "RGB"),
    }
    for name, (height, width, mode) in pictures.items():
        pixels = (rng.random((height, width, len(mode))) * 255).astype(np.uint8)
        if mode == "RGBA":
            pixels[..., 3] = 255
            pixels[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4, 3] = 0  # painted subject
        Image.fromarray(pixels, mode).save(base_dir / "input" / name)


def small(prompt: dict) -> dict:
    """The prompt at the smallest sizes: 64x64 images, 2 steps, 3 SVD frames, 5 Wan frames (2 latent frames)."""
    for node in prompt.values():
        inputs, kind = node["inputs"], node["class_type"]
        if kind in ("EmptyLatentImage", "EmptySD3LatentImage", "EmptyFlux2LatentImage"):
            inputs.update(width=SIZE, height=SIZE)
        elif kind == "SVD_img2vid_Conditioning":
            inputs.update(width=SIZE, height=SIZE, video_frames=FRAMES)
        elif kind in ("WanImageToVideo", "EmptyHunyuanLatentVideo"):
            inputs.update(width=SIZE, height=SIZE, length=WAN_FRAMES)
        elif kind == "KSampler":
            inputs["steps"] = STEPS
        elif kind == "KSamplerAdvanced":
            split = inputs["start_at_step"] == 0
            inputs.update(steps=STEPS, start_at_step=0 if split else STEPS // 2)
            if split:
                inputs["end_at_step"] = STEPS // 2
    return prompt


def api_prompt(name: str, object_info: dict) -> dict:
    """The shipped workflow ``name`` as an API prompt with the test loaders, at the smallest sizes."""
    return small(wf.ui_to_api(wf.load(WORKFLOWS / f"{name}.json"), object_info, swap=SWAP))


def nodes_of(prompt: dict, class_type: str) -> list[dict]:
    return [node for node in prompt.values() if node["class_type"] == class_type]


def set_inputs(prompt: dict, class_type: str, **values) -> dict:
    """A copy of ``prompt`` with ``values`` set on every node of ``class_type`` (which must exist)."""
    prompt = copy.deepcopy(prompt)
    targets = nodes_of(prompt, class_type)
    assert targets, f"no {class_type} node"
    for node in targets:
        node["inputs"].update(values)
    return prompt


def model_outputs(prompt: dict) -> list[tuple[str, list]]:
    """(loader node id, link) for every MODEL output of the loaders in ``prompt``."""
    return [(node_id, [node_id, 0]) for node_id, node in prompt.items() if node["class_type"] in LOADERS
            and node["class_type"] not in ("RefGuideTestDualCLIPLoader", "RefGuideTestCLIPLoader",
                                           "RefGuideTestVAELoader", "RefGuideTestControlNetLoader")]  # fmt: skip


def terminal_links(prompt: dict) -> list[list]:
    """Links into the prompt's save nodes: a probe linked to them runs after everything else."""
    links = []
    for node in prompt.values():
        if node["class_type"] in ("SaveImage", "SaveAnimatedWEBP", "SaveEasyRefEmbeds", "SaveLatent"):
            links += [value for value in node["inputs"].values() if isinstance(value, list)]
    return links


def with_model_probes(prompt: dict) -> dict:
    """A copy of ``prompt`` with one RefGuideTestInspectModel per loaded base model, run after the save nodes."""
    prompt = copy.deepcopy(prompt)
    after = {f"after_{i + 1}": link for i, link in enumerate(terminal_links(prompt)[:4])}
    for node_id, link in model_outputs(prompt):
        prompt[f"probe_{node_id}"] = {"class_type": "RefGuideTestInspectModel", "inputs": {"model": link, **after}}
    return prompt


def probe_reports(entry: dict, key: str = "refguide_model") -> dict[str, dict]:
    import json

    return {node_id: json.loads(out[key][0]) for node_id, out in entry.get("outputs", {}).items() if key in out}


def decoded_outputs(server, entry: dict) -> dict[str, list[np.ndarray]]:
    """Decoded pixels of every saved image and animation (all frames), by save node."""
    result = {}
    for node_id, node_output in entry["outputs"].items():
        for item in node_output.get("images", []):
            path = server.base_dir / item.get("type", "output") / item.get("subfolder", "") / item["filename"]
            image = Image.open(path)
            frames = []
            for index in range(getattr(image, "n_frames", 1)):
                image.seek(index)
                frames.append(np.asarray(image.convert("RGB")))
            result.setdefault(node_id, []).append(np.stack(frames))
    return result


def merge(prompts: dict[str, dict]) -> dict:
    """One API prompt holding several prompts side by side: node ids (and links) get the key as prefix."""
    merged = {}
    for prefix, prompt in prompts.items():
        for node_id, node in prompt.items():
            inputs = {name: [f"{prefix}{value[0]}", value[1]] if isinstance(value, list) else value
                      for name, value in node["inputs"].items()}  # fmt: skip
            merged[f"{prefix}{node_id}"] = {"class_type": node["class_type"], "inputs": inputs}
    return merged
