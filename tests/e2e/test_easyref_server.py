"""EasyRef MLLM nodes through a live ComfyUI server with the tiny models in its model folders."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from refguide.easyref import embeds as embeds_mod
from refguide_testing import tiny_qwen2vl as tq

pytestmark = [pytest.mark.e2e, pytest.mark.mllm]

EASYREF_NODES = {
    "LoadEasyRefMLLM",
    "EasyRefReferenceGroup",
    "EncodeReferenceGroup",
    "SaveEasyRefEmbeds",
    "LoadEasyRefEmbeds",
}


@pytest.fixture(scope="module")
def server_with_models(comfy_server):
    models = comfy_server.base_dir / "models"
    if not (models / "easyref" / "easyref-tiny.safetensors").exists():
        tq.make_tiny_models(str(models))
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((120, 90, 3)) * 255).astype(np.uint8)).save(
        comfy_server.base_dir / "input" / "easyref_ref1.png"
    )
    Image.fromarray((rng.random((64, 128, 4)) * 255).astype(np.uint8)).save(
        comfy_server.base_dir / "input" / "easyref_ref2.png"
    )
    return comfy_server


def test_nodes_are_listed(object_info):
    assert EASYREF_NODES <= set(object_info)
    assert object_info["LoadEasyRefMLLM"]["display_name"] == "Load EasyRef MLLM"
    assert object_info["EncodeReferenceGroup"]["display_name"] == "Encode Reference Group"
    assert all(object_info[n]["category"] == "EasyRef" for n in EASYREF_NODES)


def test_load_image_encode_save(server_with_models):
    prompt = {
        "1": {"class_type": "LoadEasyRefMLLM", "inputs": {"mllm": "Qwen2-VL-2B-Instruct", "checkpoint": "easyref-tiny.safetensors", "dtype": "auto"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "easyref_ref1.png"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "easyref_ref2.png"}},
        "4": {"class_type": "EasyRefReferenceGroup", "inputs": {"images": ["3", 0]}},
        "5": {"class_type": "EncodeReferenceGroup", "inputs": {"easyref": ["1", 0], "prompt": "a cat", "images": ["2", 0], "references": ["4", 0]}},
        "6": {"class_type": "SaveEasyRefEmbeds", "inputs": {"embeds": ["5", 0], "filename_prefix": "easyref/e2e"}},
    }  # fmt: skip
    entry = server_with_models.run_prompt(prompt, timeout=300)
    files = server_with_models.output_files(entry, kind="easyref_embeds")
    assert len(files) == 1 and files[0].is_file()
    saved = embeds_mod.load_embeds(str(files[0]))
    assert saved.cond.shape == (1, 64, 64) and saved.num_references == 2 and saved.prompt == "a cat"
    assert saved.fingerprint.startswith("sha256:")


def _errors_by_input(body) -> dict[str, list[str]]:
    errors = body["node_errors"]["1"]["errors"]
    found = {}
    for error in errors:
        found.setdefault(error["extra_info"]["input_name"], []).append(f"{error['message']}: {error['details']}")
    return found


def test_missing_model_is_refused_with_download_hint(server_with_models):
    prompt = {
        "1": {"class_type": "LoadEasyRefMLLM", "inputs": {"mllm": "Qwen2-VL-2B-Instruct", "checkpoint": "missing.safetensors", "dtype": "auto"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "easyref_ref1.png"}},
        "3": {"class_type": "EncodeReferenceGroup", "inputs": {"easyref": ["1", 0], "prompt": "", "images": ["2", 0]}},
        "4": {"class_type": "SaveEasyRefEmbeds", "inputs": {"embeds": ["3", 0], "filename_prefix": "x"}},
    }  # fmt: skip
    status, body = server_with_models.submit(prompt)
    assert status == 400
    by_input = _errors_by_input(body)
    assert list(by_input) == ["checkpoint"] and len(by_input["checkpoint"]) == 1  # once, on the input it concerns
    assert "missing.safetensors" in by_input["checkpoint"][0]
    # The missing Qwen2-VL folder: one message on `mllm` (none on `checkpoint` or `dtype`) with the download link.
    prompt["1"]["inputs"].update(mllm="Qwen2-VL-7B-Instruct", checkpoint="easyref-tiny.safetensors")
    status, body = server_with_models.submit(prompt)
    assert status == 400
    by_input = _errors_by_input(body)
    assert list(by_input) == ["mllm"] and len(by_input["mllm"]) == 1
    assert (
        "Qwen2-VL-7B-Instruct" in by_input["mllm"][0]
        and "huggingface.co/Qwen/Qwen2-VL-2B-Instruct" in by_input["mllm"][0]
    )
