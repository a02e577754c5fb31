"""Memory management: the Apply nodes run on --lowvram and --novram servers; after Encode Reference Group the MLLM
leaves the compute device when ComfyUI asks for memory (read from comfy.model_management's loaded models); the
front end's /free releases the pack's models.

ComfyUI refuses --lowvram / --novram together with --cpu (they are GPU modes), so on a machine without a GPU (CI)
the memory checks run on one --cpu server and the --lowvram / --novram servers need REFGUIDE_DEVICE=cuda (the
test servers then use the GPU and the test checks the VRAM state ComfyUI logged).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from refguide_testing import small_workflows as sw
from refguide_testing.server import ComfyServer

pytestmark = pytest.mark.e2e

# Every Apply node of the pack, each in a shipped workflow: Apply EasyRef + Apply RefDrop (UNet), Apply RefDrop
# (Reference Image), Apply RefDrop on a DiT, SVD Temporal RefDrop, Temporal RefDrop (Wan).
APPLY_WORKFLOWS = [
    "easyref_sdxl_with_refdrop",
    "refdrop_sdxl_subject_only",
    "refdrop_flux_consistent_character",
    "refdrop_sdxl_to_svd_pipeline",
    "refdrop_wan22_i2v_comparison",
]
PACK_MODELS = {"EasyRefModel", "EasyRefMLLM", "ReferenceProjections"}
GPU = os.environ.get("REFGUIDE_DEVICE", "cpu") != "cpu"
FLAGS = ["--lowvram", "--novram"] if GPU else ["--cpu"]  # test servers add --cpu themselves without a GPU


def start(tmp_path_factory, flag: str) -> ComfyServer:
    extra = (flag,) if flag != "--cpu" else ()
    server = ComfyServer(Path(os.environ["COMFYUI_ROOT"]), tmp_path_factory.mktemp(flag.strip("-")), extra_args=extra)
    server.start()
    sw.prepare_inputs(server.base_dir)
    return server


@pytest.fixture(scope="module", params=FLAGS)
def server(request, tmp_path_factory):
    server = start(tmp_path_factory, request.param)
    server.flag = request.param
    yield server
    server.stop()


def state(server: ComfyServer, request_memory: bool = False, extra: dict | None = None) -> dict:
    """Run the process-state probe (after ``extra``'s nodes, when given) and return its report."""
    prompt = dict(extra or {})
    after = {f"after_{i + 1}": link for i, link in enumerate(sw.terminal_links(prompt)[:4])}
    prompt["state"] = {"class_type": "RefGuideTestProcessState", "inputs": {"request_memory": request_memory, **after}}
    entry = server.run_prompt(prompt, timeout=600)
    return json.loads(entry["outputs"]["state"]["refguide_state"][0])


@pytest.mark.skipif(not GPU, reason="ComfyUI refuses --lowvram/--novram with --cpu: needs REFGUIDE_DEVICE=cuda")
def test_apply_nodes_run_on_lowvram_and_novram_servers(server):
    object_info = server.object_info()
    prompt = sw.merge({f"w{i}_": sw.api_prompt(name, object_info) for i, name in enumerate(APPLY_WORKFLOWS)})
    kinds = {node["class_type"] for node in prompt.values()}
    assert {"ApplyEasyRef", "ApplyRefDrop", "ApplyRefDropImage", "SVDTemporalRefDrop", "TemporalRefDrop"} <= kinds
    entry = server.run_prompt(prompt, timeout=900)
    outputs = sw.decoded_outputs(server, entry)
    assert len(outputs) >= len(APPLY_WORKFLOWS)
    assert all(frames.std() > 0 for images in outputs.values() for frames in images)
    expected = {"--lowvram": "LOW_VRAM", "--novram": "NO_VRAM"}[server.flag]
    assert f"Set vram state to: {expected}" in server.log_text()


def test_mllm_leaves_the_compute_device_when_comfyui_asks_for_memory(server):
    encode = sw.api_prompt("easyref_sdxl_multi_reference", server.object_info())
    encode_id = next(i for i, n in encode.items() if n["class_type"] == "EncodeReferenceGroup")
    needed = {
        i for i, n in encode.items() if n["class_type"] in ("LoadEasyRefMLLM", "LoadImage", "EasyRefReferenceGroup")
    }
    prompt = {i: encode[i] for i in needed | {encode_id}}  # the MLLM half only: load, encode, save the embeds
    prompt["save"] = {"class_type": "SaveEasyRefEmbeds", "inputs": {"embeds": [encode_id, 0], "filename_prefix": "m"}}
    report = state(server, request_memory=True, extra=prompt)
    before = [m for m in report["loaded_before"] if m["model"] == "EasyRefMLLM"]
    after = [m for m in report["loaded_after"] if m["model"] == "EasyRefMLLM" and m["compute_device"]]
    assert before and before[0]["loaded_bytes"] > 0  # the encode loaded it through ComfyUI's model management
    assert after == [], report["loaded_after"]


def test_free_releases_the_packs_models(server):
    prompt = sw.api_prompt("easyref_sdxl_with_refdrop", server.object_info())
    report = state(server, extra=prompt)
    assert PACK_MODELS <= set(report["live_objects"]), report["live_objects"]  # alive while cached and loaded
    server.free(unload_models=True, free_memory=True)
    state(server)  # the worker handles the /free flags before it takes the next prompt
    report = state(server)
    assert not PACK_MODELS & set(report["live_objects"]), report["live_objects"]
    assert [k for k in report["live_objects"] if k.startswith("Qwen2")] == [], report["live_objects"]
    assert not [m for m in report["loaded_after"] if m["model"] in PACK_MODELS], report["loaded_after"]
