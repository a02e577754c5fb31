"""Importing and running the pack changes no attribute of any ComfyUI module or class (checked in a fresh process)."""

import json
import os
import subprocess
import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys, types
sys.path.insert(0, sys.argv[1])
import comfy.cli_args
comfy.cli_args.args.cpu = True
import torch
import comfy.sample, comfy.samplers, comfy.model_patcher, comfy.model_management, comfy.ldm.modules.attention
import comfy.ldm.modules.diffusionmodules.openaimodel, comfy.patcher_extension, comfy.model_base, folder_paths, nodes
from refguide_testing import tiny_models

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

sdxl = tiny_models.tiny_unet("sdxl")
svd = tiny_models.tiny_unet("svd")
run(sdxl)  # warm-up: whatever ComfyUI itself caches on a first run
before = snapshot()
from refguide_testing.host import setup_host
setup_host()  # imports the pack as ComfyUI's loader would (registers its model folders)
from refguide.nodes.refdrop import ApplyRefDrop, ApplyRefDropImage
from refguide.nodes.svd import SVDTemporalRefDrop
run(ApplyRefDrop.execute(sdxl, 0.3, 1, True, "", "").args[0])
run(ApplyRefDropImage.execute(sdxl, tiny_models.tiny_vae(), torch.rand(1, 64, 96, 3), 0.3, 5, False, "", "", 0.0,
                              1.0, torch.ones(1, 64, 96)).args[0])
SVDTemporalRefDrop.execute(svd, 0.2, 0, 0.0, 1.0)
after = snapshot()
changed = sorted(k for k in before if k in after and before[k] != after[k])
print(json.dumps({"changed": changed, "checked": len(before)}))
"""


def test_pack_changes_no_comfyui_module_or_class_attribute():
    env = dict(os.environ)
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(TESTS_DIR)], capture_output=True, text=True, env=env,
                            cwd=os.environ["COMFYUI_ROOT"], timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["checked"] > 1000
    # (registering model folders adds entries to folder_paths.folder_names_and_paths, the documented way)
    assert report["changed"] == [], report["changed"]
