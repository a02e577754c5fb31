"""Bad inputs through a live server: each prompt is answered by a clear message that names the input and says what
to do (in the validation or the execution error), valid odd inputs run, and the server keeps serving.

The cases and the README table made from them are in ``refguide_testing/bad_inputs.py``. The cases for a too-old
transformers run on a second server whose PYTHONPATH puts the folder named by REFGUIDE_TRANSFORMERS_TOO_OLD (a real
transformers 4.49.0 that `bash scripts/host.sh test` installs and names) in front of the host's transformers.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time
from pathlib import Path

import pytest
import torch
from refguide.easyref import embeds as embeds_mod
from refguide_testing import bad_inputs, tiny_easyref
from refguide_testing import tiny_qwen2vl as tq
from refguide_testing.server import TESTS_DIR, ComfyServer

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- bad-input-table:start -->", "<!-- bad-input-table:end -->"


TOO_OLD_VARIABLE = "REFGUIDE_TRANSFORMERS_TOO_OLD"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = ComfyServer(Path(os.environ["COMFYUI_ROOT"]), tmp_path_factory.mktemp("bad_inputs")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def too_old_server(tmp_path_factory):
    """A server whose Python imports transformers 4.49.0 (one release older than the pack supports)."""
    folder = os.environ.get(TOO_OLD_VARIABLE, "")
    if not (Path(folder) / "transformers").is_dir():
        pytest.fail(
            f"{TOO_OLD_VARIABLE} must name a folder holding transformers 4.49.0 ({folder!r} does not): run the tests "
            "through `bash scripts/host.sh test`, which installs it (scripts/transformers-too-old.txt)"
        )
    python_path = os.pathsep.join([folder, str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    root, base = Path(os.environ["COMFYUI_ROOT"]), tmp_path_factory.mktemp("bad_inputs_old_transformers")
    server = ComfyServer(root, base, extra_env={"PYTHONPATH": python_path}).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def context(server) -> dict:
    return make_context(server)


@pytest.fixture(scope="module")
def too_old_context(too_old_server) -> dict:
    return make_context(too_old_server)


def make_context(server: ComfyServer) -> dict:
    """The files the cases name (bad_inputs.FILES), and absolute paths of valid files outside the folders."""
    base, models = server.base_dir, server.base_dir / "models"
    folder, checkpoint = tiny_easyref.make_models_for(str(models), "sdxl_light", name=bad_inputs.CHECKPOINT)
    config = json.loads((Path(folder) / "config.json").read_text())
    data = Path(checkpoint).read_bytes()
    (models / bad_inputs.FILES["truncated"]).write_bytes(data[: len(data) // 2])
    with open(models / bad_inputs.FILES["pickle"], "wb") as f:
        pickle.dump({"image_proj_model.proj.0.weight": [[0.0]]}, f)
    hidden = config["hidden_size"]
    tq.make_easyref_checkpoint(
        str(models / bad_inputs.FILES["wrong_shapes"]),
        config,
        reshape={"image_proj_model.proj.0.weight": (hidden, hidden + 1)},
    )
    no_weights = models / bad_inputs.FILES["no_weights"]
    shutil.copytree(folder, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    outside_mllm = base / bad_inputs.FILES["outside_mllm"]
    shutil.copytree(folder, outside_mllm)
    other = embeds_mod.EasyRefEmbeds(
        cond=torch.zeros(1, 64, 64), uncond=torch.zeros(1, 64, 64), num_references=1, prompt="x",
        fingerprint="sha256:" + "0" * 64, checkpoint_name="another_easyref.safetensors",
    )  # fmt: skip
    embeds_mod.save_embeds(other, str(base / "input" / bad_inputs.FILES["other_embeds"]))
    outside_embeds = base / "outside_embeds.safetensors"
    embeds_mod.save_embeds(other, str(outside_embeds))
    (base / "input" / bad_inputs.FILES["escaping_embeds"]).symlink_to(outside_embeds)
    linked = base / "linked_checkpoint.safetensors"
    shutil.copyfile(checkpoint, linked)
    (models / "easyref" / "linked.safetensors").symlink_to(linked)
    return {"outside_mllm": str(outside_mllm), "checkpoint_path": checkpoint, "outside_embeds": str(outside_embeds)}


def answer(server: ComfyServer, prompt: dict, timeout: float = 300.0) -> tuple[str, str]:
    """("validation" | "execution" | "accepted", ComfyUI's message text) for one prompt."""
    status, body = server.submit(prompt)
    if status != 200:
        parts = [body["error"].get("message", ""), body["error"].get("details", "")]
        for node in (body.get("node_errors") or {}).values():
            parts += [f"{e.get('message', '')}: {e.get('details', '')}" for e in node["errors"]]
        return "validation", "\n".join(parts)
    prompt_id = body["prompt_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = server.get_json(f"/history/{prompt_id}").get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            if entry["status"]["status_str"] == "success":
                return "accepted", ""
            errors = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
            return "execution", "\n".join(f"{e['node_type']}: {e['exception_message']}" for e in errors)
        time.sleep(0.2)
    raise TimeoutError(prompt_id)


@pytest.mark.parametrize("case", bad_inputs.CASES, ids=lambda case: case.id)
def test_bad_input_is_answered_clearly(request, case):
    names = {"main": ("server", "context"), "transformers-too-old": ("too_old_server", "too_old_context")}
    server, context = (request.getfixturevalue(name) for name in names[case.server])
    stage, text = answer(server, case.build(context))
    print(f"\n[{case.id}] {stage}: {text}")
    assert stage == case.stage, text
    assert [excerpt for excerpt in case.expect if excerpt not in text] == [], text
    assert server.get_json("/system_stats")["system"]  # still serving


def test_the_too_old_server_really_has_transformers_4_49(too_old_server, too_old_context):
    probe = too_old_server.run_prompt(
        {"1": {"class_type": "RefGuideTestProcessState", "inputs": {"request_memory": False}}}, timeout=120
    )
    assert json.loads(probe["outputs"]["1"]["refguide_state"][0])["transformers"] == "4.49.0"


def test_server_still_runs_a_good_prompt(server, context):
    server.run_prompt(bad_inputs.good_prompt(), timeout=300)
    assert server.process.poll() is None


def test_readme_table_is_generated_from_the_cases():
    text = README.read_text()
    assert START in text and END in text, "README has no bad-input table markers"
    table = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert table == bad_inputs.render_table(), "README table is stale: run `python3 scripts/bad_input_table.py`"
