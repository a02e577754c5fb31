"""Soak: 50 prompts on one live server, mixing every shipped workflow with varied settings and re-queues.

Checks: resident memory after prompt 10 vs prompt 50 (within 5%), the base models the loaders return carry none
of the pack's patches, wrappers or objects after each prompt (only clones are patched), no model file stays
open or mapped, and identical prompts give identical outputs (cache hits and recomputations alike).

The server runs with ComfyUI's classic cache (``--cache-classic``: only the current prompt's node outputs are
kept), so memory that stays after a prompt is memory something holds on to, not the default RAM-pressure
cache keeping every earlier result on purpose.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from refguide_testing import small_workflows as sw
from refguide_testing.server import ComfyServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# glibc maps every allocation above 64 KiB on its own and keeps two arenas, so freed tensors leave the resident
# set at once: resident memory then measures what is held, not the allocator's free lists (the benchmarks measure
# peak memory the same way). Without it, RSS after a prompt wanders by several percent from run to run.
GLIBC_RETURNS_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "2"}
PROMPTS = 50
REQUEUE_EVERY = 5  # every 5th prompt is the previous prompt again (a cache hit)
BASELINE = 10  # the memory check compares prompt 50 with this prompt (past every first import, see PREFERRED)
# The first six workflows touch every model family (Wan, SDXL, SVD, Flux, Z-Image, Qwen-Image) and the MLLM, so
# prompt 10 (the second re-queue) is past every first import: the baseline of the memory check. Any workflow
# shipped later joins the mix after these.
PREFERRED = [
    "refdrop_wan22_i2v_comparison",
    "easyref_sdxl_with_refdrop",
    "refdrop_sdxl_to_svd_pipeline",
    "refdrop_flux_consistent_character",
    "refdrop_zimage_character_from_picture",
    "refdrop_qwen_image_character_from_picture",
    "refdrop_sdxl_character_from_picture",
    "easyref_sdxl_controlnet",
    "refdrop_sdxl_consistent_character",
    "refdrop_svd_img2vid_comparison",
    "easyref_sdxl_multi_reference",
    "refdrop_sdxl_blend_two_references",
    "refdrop_sdxl_subject_only",
    "refdrop_sdxl_diverse_generation",
]
ORDER = [name for name in PREFERRED if name in sw.names()] + [n for n in sw.names() if n not in PREFERRED]
PATCH_STRENGTHS = ("ApplyRefDrop", "ApplyRefDropImage", "SVDTemporalRefDrop", "TemporalRefDrop")
SD15 = "v1-5-pruned-emaonly.safetensors"  # the test loader returns a tiny SD1.5 for this name


def variant(name: str, prompt: dict) -> dict:
    """The second setting of each workflow: other strengths, reference counts, models, switches off."""
    s = sw.set_inputs
    if name == "easyref_sdxl_with_refdrop":
        return s(s(prompt, "ApplyEasyRef", weight=0.0), "ApplyRefDrop", strength=-0.3)  # reference branch off
    if name.startswith("easyref_"):
        return s(prompt, "ApplyEasyRef", weight=0.5, lora_strength=0.0)  # LoRA off
    if name == "refdrop_sdxl_consistent_character":
        return s(prompt, "ApplyRefDrop", reference_count=2, strength=0.2, skip_up1=True)
    if name == "refdrop_sdxl_diverse_generation":
        return s(s(prompt, "ApplyRefDrop", strength=0.0), "RefGuideTestCheckpointLoader", ckpt_name=SD15)
    if name == "refdrop_sdxl_blend_two_references":
        prompt = s(prompt, "RefGuideTestCheckpointLoader", ckpt_name=SD15)
        return s(prompt, "ApplyRefDrop", reference_strengths="0.4, 0.1")
    if name == "refdrop_flux_consistent_character":
        return s(prompt, "ApplyRefDrop", strength=0.6, reference_count=2)
    if name == "refdrop_sdxl_character_from_picture":
        return s(prompt, "ApplyRefDropImage", strength=0.2, start_percent=0.5)
    if name == "refdrop_sdxl_subject_only":
        return s(prompt, "ApplyRefDropImage", strength=-0.2, skip_up1=True)
    if name == "refdrop_sdxl_to_svd_pipeline":
        return s(s(prompt, "SVDTemporalRefDrop", strength=0.0), "ApplyRefDrop", strength=0.5)
    if name == "refdrop_svd_img2vid_comparison":
        return s(prompt, "SVDTemporalRefDrop", strength=0.5, reference_frame=1)
    if name == "refdrop_wan22_i2v_comparison":
        return s(prompt, "TemporalRefDrop", strength=0.4, reference_frame=1)
    for kind in PATCH_STRENGTHS:  # a workflow without its own variant: half the strength of every patch node
        for node in sw.nodes_of(prompt, kind):
            prompt = s(prompt, kind, strength=node["inputs"]["strength"] / 2)
    return prompt


def schedule(object_info: dict) -> list[tuple[str, dict]]:
    """(label, prompt) x 50: the workflows in ORDER, as shipped and in their variant, alternating per round."""
    shipped = {name: sw.api_prompt(name, object_info) for name in ORDER}
    prompts, k = [], 0
    while len(prompts) < PROMPTS:
        if len(prompts) % REQUEUE_EVERY == REQUEUE_EVERY - 1:
            label, prompt = prompts[-1]
            prompts.append((label + " (re-queued)", prompt))
            continue
        name, round_ = ORDER[k % len(ORDER)], k // len(ORDER)
        prompt = shipped[name] if round_ % 2 == 0 else variant(name, shipped[name])
        prompts.append((f"{name} {'shipped' if round_ % 2 == 0 else 'variant'}", sw.with_model_probes(prompt)))
        k += 1
    return prompts


def model_files(server: ComfyServer, paths) -> list[str]:
    models = str(server.base_dir / "models")
    return sorted(p for p in paths if p.startswith(models) or p.endswith((".safetensors", ".sft", ".ckpt", ".pt")))


@pytest.fixture(scope="module")
def soak_server(tmp_path_factory):
    server = ComfyServer(
        Path(os.environ["COMFYUI_ROOT"]),
        tmp_path_factory.mktemp("soak"),
        extra_args=("--cache-classic",),
        extra_env=GLIBC_RETURNS_FREED_MEMORY,
    ).start()
    sw.prepare_inputs(server.base_dir)
    yield server
    server.stop()


def test_soak_fifty_prompts(soak_server):
    server = soak_server
    object_info = server.object_info()
    prompts = schedule(object_info)
    assert {label.split()[0] for label, _ in prompts} == set(sw.names())  # every shipped workflow is in the mix

    # The probe is not blind: on a patched clone it finds the pack's objects.
    first_label, first = prompts[0]
    patched = [node_id for node_id, node in first.items() if node["class_type"] == "TemporalRefDrop"][0]
    check = dict(first, probe_patched={"class_type": "RefGuideTestInspectModel", "inputs": {"model": [patched, 0]}})

    started = time.monotonic()
    rss, results = [], {}
    for index, (label, prompt) in enumerate(prompts):
        entry = server.run_prompt(check if index == 0 else prompt, timeout=600)
        rss.append(server.rss_bytes())
        reports = sw.probe_reports(entry)
        if index == 0:
            assert reports.pop("probe_patched")["pack_objects"], "the probe does not see the pack's patches"
        assert len(reports) == len(sw.model_outputs(prompt)) >= 1, label
        for node_id, report in reports.items():
            clean = {"weight_patches": 0, "object_patches": [], "additional_models": [], "pack_objects": [],
                     "module_hooks": 0}  # fmt: skip
            assert {k: report[k] for k in clean} == clean, f"prompt {index + 1} ({label}): base model {node_id}"
        key = json.dumps(prompt, sort_keys=True)
        images = sw.decoded_outputs(server, entry)
        assert images, label
        if key in results:
            first_index, first_images = results[key]
            assert first_images.keys() == images.keys()
            for node_id in images:
                for a, b in zip(first_images[node_id], images[node_id], strict=True):
                    assert np.array_equal(a, b), f"prompt {index + 1} ({label}) differs from prompt {first_index + 1}"
        else:
            results[key] = (index, images)
    elapsed = time.monotonic() - started

    repeats = PROMPTS - len(results)
    rss10, rss50 = rss[BASELINE - 1], rss[-1]
    print(
        f"\nsoak: {PROMPTS} prompts ({len(results)} distinct, {repeats} repeats) in {elapsed:.0f} s; "
        f"RSS after prompt {BASELINE}: {rss10 / 2**20:.1f} MiB, after prompt 50: {rss50 / 2**20:.1f} MiB "
        f"({(rss50 / rss10 - 1) * 100:+.2f}%), min {min(rss[BASELINE - 1 :]) / 2**20:.1f}, "
        f"max {max(rss[BASELINE - 1 :]) / 2**20:.1f} MiB"
    )
    assert repeats >= 10  # re-queues (cache hits) and later identical prompts (recomputed)
    assert abs(rss50 / rss10 - 1) <= 0.05, [round(r / 2**20, 1) for r in rss]
    # The classic cache keeps the last prompt's outputs (the 50th is an EasyRef one: its loaded MLLM is one of
    # them); one more prompt without EasyRef replaces them, after which no model file may stay open or mapped.
    server.run_prompt(prompts[0][1], timeout=600)
    assert model_files(server, server.open_files()) == []
    assert model_files(server, server.mapped_files()) == []
    assert Path(server.base_dir / "models" / "easyref" / "easyref.safetensors").is_file()  # the files were there
