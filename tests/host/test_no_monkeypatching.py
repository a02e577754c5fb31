"""Importing and running the pack changes no attribute of any ComfyUI module or class (checked in a fresh process)."""

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import refguide

TESTS_DIR = Path(__file__).resolve().parents[1]


def registered_node_ids():
    """The node ids the pack's extension lists, in its order (computed in this process)."""
    extension = asyncio.run(refguide.comfy_entrypoint())
    return [node.define_schema().node_id for node in asyncio.run(extension.get_node_list())]


SCRIPT = r"""
import asyncio, json, os, shutil, sys, types
sys.path.insert(0, sys.argv[1])
import comfy.cli_args
comfy.cli_args.args.cpu = True
import torch
import comfy.sample, comfy.samplers, comfy.model_patcher, comfy.model_management, comfy.ldm.modules.attention
import comfy.ldm.modules.diffusionmodules.openaimodel, comfy.patcher_extension, comfy.model_base, folder_paths, nodes
from refguide_testing import tiny_models, tiny_wan

def snapshot():
    state = {}
    for name, module in list(sys.modules.items()):
        if not (name == "comfy" or name.startswith(("comfy.", "comfy_extras", "comfy_api")) or name in ("nodes", "folder_paths")):
            continue
        for attr, value in list(vars(module).items()):
            state[f"{name}.{attr}"] = id(value)
            if isinstance(value, type) and value.__module__ == name:
                for cattr, cvalue in list(vars(value).items()):
                    state[f"{name}.{attr}.{cattr}"] = id(cvalue)
    return state

def run(model):
    latent = torch.zeros(3, 4, 16, 16)
    cond = [[torch.randn(3, 8, 2048), {"pooled_output": torch.randn(3, tiny_models.TINY_POOLED_DIM)}]]
    neg = [[torch.zeros(1, 8, 2048), {"pooled_output": torch.zeros(1, tiny_models.TINY_POOLED_DIM)}]]
    comfy.sample.sample(model, torch.randn(latent.shape), 2, 5.0, "euler", "normal", cond, neg, latent, disable_pbar=True)

def run_wan(model):
    latent = torch.zeros(1, 16, 3, 8, 8)
    text = torch.randn(1, 9, tiny_wan.TEXT_DIM)
    comfy.sample.sample(model, torch.randn(latent.shape), 2, 5.0, "euler", "simple", [[text, {}]],
                        [[torch.zeros_like(text), {}]], latent, disable_pbar=True)

def run_svd(model):
    # as tests/host/test_svd_refdrop.py samples a clip: image embeds + concat latent, 5 frames, same noise each time
    g = torch.Generator().manual_seed(5)
    image_embeds = torch.randn(1, 1, tiny_models.TINY_SVD_CONTEXT, generator=g)
    concat = torch.randn(1, 4, 16, 16, generator=g)
    extras = {"fps": 6, "motion_bucket_id": 127, "augmentation_level": 0.0}
    positive = [[image_embeds, dict(extras, concat_latent_image=concat)]]
    negative = [[torch.zeros_like(image_embeds), dict(extras, concat_latent_image=torch.zeros_like(concat))]]
    latent = torch.zeros(5, 4, 16, 16)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(9))
    return comfy.sample.sample(model, noise, 2, 2.5, "euler", "karras", positive, negative, latent, seed=9,
                               disable_pbar=True)

sdxl = tiny_models.tiny_unet("sdxl")
wan = tiny_wan.tiny_wan("t2v")
svd = tiny_models.tiny_unet("svd")
clip = tiny_models.tiny_clip()
work = sys.argv[2]
for name in ("output", "input"):
    os.makedirs(os.path.join(work, name), exist_ok=True)
folder_paths.set_output_directory(os.path.join(work, "output"))
folder_paths.set_input_directory(os.path.join(work, "input"))
from refguide_testing import tiny_easyref
tiny_easyref.make_models_for(work, "sdxl")
folder_paths.folder_names_and_paths["LLM"] = ([os.path.join(work, "LLM")], set())
folder_paths.folder_names_and_paths["easyref"] = ([os.path.join(work, "easyref")], {".safetensors"})
run(sdxl)  # warm-up: whatever ComfyUI itself caches on a first run
run_wan(wan)
svd_plain = run_svd(svd)
before = snapshot()
from refguide_testing.host import setup_host
setup_host()  # imports the pack as ComfyUI's loader would (registers its model folders)
import refguide

extension = asyncio.run(refguide.comfy_entrypoint())
registered = [node.define_schema().node_id for node in asyncio.run(extension.get_node_list())]
from refguide.nodes import easyref as er, refdrop as rd, svd as sv, video_dit as vd

# How to run each node; a node the pack registers without an entry here makes the test fail.
state = {}
image = torch.rand(1, 64, 48, 3)
RUNS = {
    "ApplyRefDrop": lambda: run(rd.ApplyRefDrop.execute(sdxl, 0.3, 1, True, "", "").args[0]),
    "ApplyRefDropImage": lambda: run(rd.ApplyRefDropImage.execute(
        sdxl, tiny_models.tiny_vae(), torch.rand(1, 64, 96, 3), 0.3, 5, False, "", "", 0.0, 1.0, torch.ones(1, 64, 96)
    ).args[0]),
    "RefDropPromptBatch": lambda: rd.RefDropPromptBatch.execute(clip, "a\nb\nc"),
    "SVDTemporalRefDrop": lambda: state.update(
        svd=run_svd(sv.SVDTemporalRefDrop.execute(svd, 0.2, 0, 0.0, 1.0).args[0])),
    "TemporalRefDrop": lambda: run_wan(vd.TemporalRefDrop.execute(wan, 0.2, 0).args[0]),
    "LoadEasyRefMLLM": lambda: state.update(
        easyref=er.LoadEasyRefMLLM.execute("Qwen2-VL-2B-Instruct", "easyref.safetensors", "fp32").args[0]),
    "EasyRefReferenceGroup": lambda: state.update(group=er.EasyRefReferenceGroup.execute(image).args[0]),
    "EncodeReferenceGroup": lambda: state.update(
        embeds=er.EncodeReferenceGroup.execute(state["easyref"], "a cat", image, state["group"]).args[0]),
    "SaveEasyRefEmbeds": lambda: state.update(saved=er.SaveEasyRefEmbeds.execute(state["embeds"], "e").ui),
    "LoadEasyRefEmbeds": lambda: (
        shutil.copy(os.path.join(work, "output", state["saved"]["easyref_embeds"][0]["filename"]),
                    os.path.join(work, "input", "e.safetensors")),
        er.LoadEasyRefEmbeds.execute("e.safetensors", state["easyref"])),
    "ApplyEasyRef": lambda: run(er.ApplyEasyRef.execute(sdxl, state["easyref"], state["embeds"], 1.0, 1.0, 0.0, 1.0)
                                .args[0]),
}
for node_id in RUNS:
    if node_id in registered:
        RUNS[node_id]()
after = snapshot()
changed = sorted(k for k in before if k in after and before[k] != after[k])
svd_guided = "svd" in state and bool((state["svd"] - svd_plain).abs().mean() > 1e-4)  # the SVD patch ran
print(json.dumps({"changed": changed, "checked": len(before), "not_run": sorted(set(registered) - set(RUNS)),
                  "stale": sorted(set(RUNS) - set(registered)), "registered": registered, "svd_guided": svd_guided}))
"""


def test_pack_changes_no_comfyui_module_or_class_attribute(tmp_path):
    """Every node the pack registers is run (a new node without an entry in RUNS fails the test)."""
    env = dict(os.environ)
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(TESTS_DIR), str(tmp_path)], capture_output=True,
                            text=True, env=env, cwd=os.environ["COMFYUI_ROOT"], timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["checked"] > 1000
    assert report["not_run"] == [], f"add these nodes to RUNS: {report['not_run']}"
    assert report["stale"] == [], f"RUNS names nodes the pack does not register: {report['stale']}"
    assert report["registered"] == registered_node_ids()  # exactly the extension's nodes, each run above
    assert report["svd_guided"]  # the SVD stand-in was sampled with the patch active, not just patched
    # (registering model folders adds entries to folder_paths.folder_names_and_paths, the documented way)
    assert report["changed"] == [], report["changed"]
