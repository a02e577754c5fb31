"""POST /interrupt during a long reference encode and during sampling with each of the pack's patches: the prompt
ends as interrupted, the same prompt queued next runs normally (reusing what the interrupted run cached) and its
outputs equal those of a fresh server that never saw an interruption.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from refguide_testing import small_workflows as sw
from refguide_testing.server import ComfyServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STEPS = 12
SECONDS_PER_CALL = 0.25  # every model call of the patched model waits this long: the interrupt lands mid-sampling


def long_sampling(prompt: dict) -> dict:
    """More steps, and the patched model paced (a test node wraps it), so sampling outlasts the interrupt's trip."""
    for node_id, node in list(prompt.items()):
        inputs = node["inputs"]
        source = inputs.get("model")
        if node["class_type"] in ("KSampler", "KSamplerAdvanced") and prompt[source[0]]["class_type"] in PATCH_NODES:
            paced = f"paced_{node_id}"
            prompt[paced] = {"class_type": "RefGuideTestPacedModel",
                             "inputs": {"model": source, "seconds_per_call": SECONDS_PER_CALL}}  # fmt: skip
            inputs["model"] = [paced, 0]
        if node["class_type"] == "KSampler":
            inputs["steps"] = STEPS
        elif node["class_type"] == "KSamplerAdvanced":
            first = inputs["start_at_step"] == 0
            inputs.update(steps=STEPS, start_at_step=0 if first else STEPS // 2)
            if first:
                inputs["end_at_step"] = STEPS // 2
    return prompt


def long_encode(prompt: dict) -> dict:
    """The reference group with 16 more references (the first picture repeated), so the encode takes a while."""
    first = next(
        n for n in prompt.values() if n["class_type"] == "EasyRefReferenceGroup" and "references" not in n["inputs"]
    )
    prompt["repeat"] = {"class_type": "RepeatImageBatch", "inputs": {"image": first["inputs"]["images"], "amount": 16}}
    first["inputs"]["images"] = ["repeat", 0]
    return prompt


# (case, workflow, node to interrupt: its class and, with several, the one downstream of the patch, prompt edit)
CASES = {
    "encode": ("easyref_sdxl_multi_reference", "EncodeReferenceGroup", long_encode),
    "apply-easyref": ("easyref_sdxl_multi_reference", "KSampler", long_sampling),
    "apply-refdrop-unet": ("refdrop_sdxl_consistent_character", "KSampler", long_sampling),
    "apply-refdrop-dit": ("refdrop_flux_consistent_character", "KSampler", long_sampling),
    "apply-refdrop-image": ("refdrop_sdxl_subject_only", "KSampler", long_sampling),
    "svd-temporal": ("refdrop_svd_img2vid_comparison", "KSampler", long_sampling),
    "temporal-wan": ("refdrop_wan22_i2v_comparison", "KSamplerAdvanced", long_sampling),
}
PACED = "RefGuideTestPacedModel"
PATCH_NODES = {"ApplyEasyRef", "ApplyRefDrop", "ApplyRefDropImage", "SVDTemporalRefDrop", "TemporalRefDrop"}


def prompt_for(case: str, object_info: dict) -> tuple[dict, str]:
    workflow, target, edit = CASES[case]
    prompt = edit(sw.api_prompt(workflow, object_info))
    candidates = [i for i, n in prompt.items() if n["class_type"] == target]
    if target != "EncodeReferenceGroup":  # the sampler that runs the (paced) patched model
        candidates = [i for i in candidates if prompt[prompt[i]["inputs"]["model"][0]]["class_type"] == PACED]
    return prompt, candidates[0]


def start_server(tmp_path_factory, name: str) -> ComfyServer:
    server = ComfyServer(Path(os.environ["COMFYUI_ROOT"]), tmp_path_factory.mktemp(name)).start()
    sw.prepare_inputs(server.base_dir)
    return server


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    started = {}

    def get(name: str) -> ComfyServer:
        if name not in started:
            started[name] = start_server(tmp_path_factory, name)
        return started[name]

    yield get
    for server in started.values():
        server.stop()


@pytest.mark.parametrize("case", list(CASES))
def test_interrupt_then_the_next_prompt_runs_as_on_a_fresh_server(servers, case):
    server = servers("interrupted")
    prompt, node_id = prompt_for(case, server.object_info())
    entry, at = server.run_and_interrupt(prompt, node_id, after_progress=2 if case != "encode" else 1)
    assert at is not None and at[0] < at[1], f"no progress of node {node_id} to interrupt at"
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert entry["status"]["status_str"] == "error" and "execution_interrupted" in kinds, entry["status"]
    assert "execution_error" not in kinds  # interrupted, not crashed

    after = server.run_prompt(prompt, timeout=600)
    fresh = servers("fresh")
    reference = fresh.run_prompt(prompt, timeout=600)
    ours, theirs = sw.decoded_outputs(server, after), sw.decoded_outputs(fresh, reference)
    assert ours and ours.keys() == theirs.keys()
    for node in ours:
        for a, b in zip(ours[node], theirs[node], strict=True):
            assert np.array_equal(a, b), f"{case}: output of node {node} differs from a fresh server's"
