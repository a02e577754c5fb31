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


def test_missing_model_is_refused_with_download_hint(server_with_models):
    prompt = {
        "1": {"class_type": "LoadEasyRefMLLM", "inputs": {"mllm": "Qwen2-VL-2B-Instruct", "checkpoint": "missing.safetensors", "dtype": "auto"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "easyref_ref1.png"}},
        "3": {"class_type": "EncodeReferenceGroup", "inputs": {"easyref": ["1", 0], "prompt": "", "images": ["2", 0]}},
        "4": {"class_type": "SaveEasyRefEmbeds", "inputs": {"embeds": ["3", 0], "filename_prefix": "x"}},
    }  # fmt: skip
    status, body = server_with_models.submit(prompt)
    assert status == 400
    text = str(body)
    assert "missing.safetensors" in text and "zongzhuofan/EasyRef" in text and "easyref" in text
