"""The pack as ComfyUI loads it: import log, /object_info (tooltips, descriptions), templates, validation."""

import asyncio
from pathlib import Path

import pytest
import refguide
from refguide.nodes import refdrop

pytestmark = pytest.mark.e2e

PACK_NODES = {"ApplyRefDrop", "ApplyRefDropImage", "RefDropPromptBatch", "SVDTemporalRefDrop"}


def test_pack_imports_cleanly(comfy_server, object_info):
    log = comfy_server.log_text()
    assert "IMPORT FAILED" not in log and "Cannot import" not in log, log[-3000:]
    assert PACK_NODES <= set(object_info)


def test_every_node_has_a_description_and_every_input_a_tooltip(object_info):
    extension = asyncio.run(refguide.comfy_entrypoint())
    ours = {
        name: info
        for name, info in object_info.items()
        if info.get("python_module", "").startswith("custom_nodes.comfyui-refguide")
    }
    registered = {node.define_schema().node_id for node in asyncio.run(extension.get_node_list())}
    assert set(ours) == registered  # every node the pack registers is served, and checked below
    for name, info in ours.items():
        assert info.get("description"), f"{name} has no description"
        for section in ("required", "optional"):
            for input_name, spec in info["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 else {}
                assert options.get("tooltip"), f"{name}.{input_name} has no tooltip"
        tips = info.get("output_tooltips") or []
        assert len(tips) == len(info["output"]) and all(tips), f"{name} has an output without a tooltip"


def test_refdrop_schema_is_stable(object_info):
    info = object_info["ApplyRefDrop"]
    assert info["category"] == "RefDrop" and info["display_name"] == "Apply RefDrop"
    assert info["input_order"]["required"] == ["model", "strength", "reference_count", "skip_up1"]
    assert info["input_order"]["optional"] == [
        "reference_strengths",
        "exclude_blocks",
        "start_percent",
        "end_percent",
        "regions",
    ]  # fmt: skip (new inputs only ever go last: saved workflows keep their widget values)
    strength = info["input"]["required"]["strength"][1]
    assert (
        strength["default"] == 0.3 and strength["min"] <= -1.0 and strength["max"] >= 1.0 and strength["step"] == 0.01
    )
    assert object_info["RefDropPromptBatch"]["input_order"]["required"] == ["clip", "prompts"]
    image = object_info["ApplyRefDropImage"]
    assert image["category"] == "RefDrop" and image["display_name"] == "Apply RefDrop (Reference Image)"
    assert image["input_order"]["required"] == ["model", "vae", "image", "strength", "seed", "skip_up1"]
    assert image["input_order"]["optional"] == [
        "reference_strengths", "exclude_blocks", "start_percent", "end_percent", "mask", "regions"
    ]  # fmt: skip
    assert image["input"]["required"]["strength"][1]["default"] == 0.3
    temporal = object_info["TemporalRefDrop"]["input_order"]
    assert temporal["required"] == ["model", "strength", "reference_frame"]
    assert temporal["optional"] == ["start_percent", "end_percent", "exclude_blocks", "image", "vae", "seed"]


def test_workflows_are_served_as_templates(comfy_server):
    templates = comfy_server.get_json("/workflow_templates")
    served = next(v for k, v in templates.items() if "refguide" in k)
    shipped = {path.stem for path in (Path(__file__).resolve().parents[2] / "workflows").glob("*.json")}
    assert shipped and shipped <= set(served)


def test_wrong_strength_count_is_refused_before_sampling(comfy_server):
    prompt = {
        "1": {"class_type": "RefGuideTestCheckpointLoader", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "2": {"class_type": "ApplyRefDrop", "inputs": {"model": ["1", 0], "strength": 0.3, "reference_count": 2,
                                                        "skip_up1": False, "reference_strengths": "0.3"}},
        "3": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "seed": 0, "steps": 1, "cfg": 1.0,
              "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0, "positive": ["4", 0],
              "negative": ["4", 0], "latent_image": ["5", 0]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "x"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 3}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "bad"}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["1", 2]}},
    }  # fmt: skip
    status, body = comfy_server.submit(prompt)
    assert status == 400
    assert "reference_count is 2" in str(body)
    message = refdrop.ApplyRefDrop.validate_inputs(reference_count=2, reference_strengths="0.3")
    assert isinstance(message, str) and "reference_count is 2" in message


def test_reference_image_strings_that_do_not_parse_are_refused_before_sampling(comfy_server):
    prompt = {
        "1": {"class_type": "RefGuideTestCheckpointLoader", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "2": {"class_type": "ApplyRefDropImage", "inputs": {"model": ["1", 0], "vae": ["1", 2], "image": ["8", 0],
              "strength": 0.3, "seed": 0, "skip_up1": False, "reference_strengths": "0.3, lots"}},
        "3": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "seed": 0, "steps": 1, "cfg": 1.0,
              "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0, "positive": ["4", 0],
              "negative": ["4", 0], "latent_image": ["5", 0]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "x"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "bad"}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["1", 2]}},
        "8": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
    }  # fmt: skip
    status, body = comfy_server.submit(prompt)
    assert status == 400
    assert "'lots' is not a number" in str(body)


def test_every_shipped_workflow_is_run_by_an_e2e_test():
    e2e_sources = "".join(path.read_text() for path in Path(__file__).parent.glob("test_*workflows.py"))
    shipped = sorted(path.stem for path in (Path(__file__).resolve().parents[2] / "workflows").glob("*.json"))
    assert len(shipped) == 19
    assert [name for name in shipped if f"{name}.json" not in e2e_sources] == []
