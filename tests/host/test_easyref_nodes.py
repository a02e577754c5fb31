"""EasyRef MLLM nodes inside the real ComfyUI host (in-process, CPU): folders, errors, model management,
progress, interruption, reference groups of mixed sizes, embeds files."""

from __future__ import annotations

import os

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
import pytest
import torch
from refguide.comfy_patches import easyref_files as files
from refguide.easyref import checkpoint as ckpt
from refguide.easyref import embeds as embeds_mod
from refguide.nodes import easyref as nodes
from refguide_testing import tiny_qwen2vl as tq

pytestmark = pytest.mark.mllm


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    _, _, config = tq.make_tiny_models(str(root))
    tq.make_easyref_checkpoint(str(root / "easyref" / "other.safetensors"), config, seed=7, with_mllm=False)
    tq.make_easyref_checkpoint(
        str(root / "easyref" / "broken.safetensors"),
        config,
        with_mllm=False,
        drop=("mllm_final_layer.norm.weight",),
        reshape={"image_proj_model.proj.0.weight": (64, 32)},
    )
    return root


@pytest.fixture()
def folders(models_root, tmp_path, monkeypatch):
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "LLM", ([str(models_root / "LLM")], set()))
    monkeypatch.setitem(
        folder_paths.folder_names_and_paths, "easyref", ([str(models_root / "easyref")], files.CHECKPOINT_EXTENSIONS)
    )
    out_dir, in_dir = tmp_path / "output", tmp_path / "input"
    out_dir.mkdir()
    in_dir.mkdir()
    old_out, old_in = folder_paths.get_output_directory(), folder_paths.get_input_directory()
    folder_paths.set_output_directory(str(out_dir))
    folder_paths.set_input_directory(str(in_dir))
    yield {"output": out_dir, "input": in_dir}
    folder_paths.set_output_directory(old_out)
    folder_paths.set_input_directory(old_in)


@pytest.fixture()
def loaded(folders):
    return nodes.LoadEasyRefMLLM.execute(
        mllm="Qwen2-VL-2B-Instruct", checkpoint="easyref-tiny.safetensors", dtype="fp32"
    ).result[0]


def test_folders_are_registered_and_listed(folders):
    assert "LLM" in folder_paths.folder_names_and_paths and "easyref" in folder_paths.folder_names_and_paths
    assert files.list_mllm_folders() == ["Qwen2-VL-2B-Instruct"]
    assert {"easyref-tiny.safetensors", "other.safetensors"} <= set(files.list_checkpoints())
    schema = nodes.LoadEasyRefMLLM.define_schema()
    assert schema.inputs[0].options == ["Qwen2-VL-2B-Instruct"]


def test_registration_keeps_extra_model_paths(monkeypatch, tmp_path):
    extra = str(tmp_path / "elsewhere")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "easyref", ([extra], set()))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "LLM", ([extra], set()))
    files.register_model_folders()
    assert folder_paths.folder_names_and_paths["easyref"][0] == [extra]
    assert ".safetensors" in folder_paths.folder_names_and_paths["easyref"][1]


def test_load_wraps_mllm_in_model_patcher(loaded):
    assert isinstance(loaded.patcher, comfy.model_patcher.ModelPatcher)
    assert loaded.patcher.model is loaded.mllm
    assert loaded.patcher.load_device == mm.text_encoder_device()
    assert loaded.patcher.offload_device == mm.text_encoder_offload_device()
    assert loaded.mllm.dtype == torch.float32
    assert loaded.fingerprint.startswith("sha256:") and len(loaded.unet_state_dict) == 1260
    assert not any(n.startswith("lm_head") for n, _ in loaded.mllm.named_parameters())
    assert len(loaded.mllm.prefix.layers) == 2 and len(loaded.mllm.final.layers) == 1


def test_auto_dtype_on_cpu_is_fp32(folders):
    m = nodes.LoadEasyRefMLLM.execute(mllm="Qwen2-VL-2B-Instruct", checkpoint="other.safetensors", dtype="auto").result[
        0
    ]
    assert m.mllm.dtype == torch.float32


def test_missing_files_name_folders_and_downloads(folders, models_root):
    # validate_inputs checks the Qwen2-VL folder only (ComfyUI reports its message on every input it takes); a
    # missing checkpoint file is ComfyUI's own list check on `checkpoint`, and execute names it with the link.
    msg = nodes.LoadEasyRefMLLM.validate_inputs(mllm="Qwen2-VL-7B")
    assert isinstance(msg, str)
    assert (
        str(models_root / "LLM") in msg
        and "Qwen2-VL-2B-Instruct" in msg
        and "huggingface.co/Qwen/Qwen2-VL-2B-Instruct" in msg
    )
    assert nodes.LoadEasyRefMLLM.validate_inputs(mllm="Qwen2-VL-2B-Instruct") is True
    with pytest.raises(FileNotFoundError) as err:
        nodes.LoadEasyRefMLLM.execute(mllm="Qwen2-VL-2B-Instruct", checkpoint="nope.safetensors", dtype="auto")
    msg = str(err.value)
    assert (
        str(models_root / "easyref") in msg
        and "nope.safetensors" in msg
        and "huggingface.co/zongzhuofan/EasyRef" in msg
    )
    with pytest.raises(FileNotFoundError, match="points outside the model folders"):
        nodes.LoadEasyRefMLLM.execute(mllm="../LLM/Qwen2-VL-2B-Instruct", checkpoint="other.safetensors", dtype="fp32")


def test_broken_checkpoint_lists_problems(folders):
    with pytest.raises(ckpt.CheckpointError) as err:
        nodes.LoadEasyRefMLLM.execute(mllm="Qwen2-VL-2B-Instruct", checkpoint="broken.safetensors", dtype="fp32")
    assert "missing mllm_final_layer.norm.weight" in str(err.value)
    assert "wrong shape image_proj_model.proj.0.weight: [64, 32], expected [64, 64]" in str(err.value)


def test_encode_group_of_mixed_sizes_progress_and_uncond_once(loaded, monkeypatch):
    g = torch.Generator().manual_seed(0)
    batch = torch.rand(2, 200, 300, 3, generator=g)
    group = nodes.EasyRefReferenceGroup.execute(images=torch.rand(1, 90, 60, 3, generator=g)).result[0]
    group = nodes.EasyRefReferenceGroup.execute(images=torch.rand(1, 40, 40, 4, generator=g), references=group).result[
        0
    ]
    assert [tuple(t.shape) for t in group] == [(90, 60, 3), (40, 40, 4)]
    calls = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: calls.append((value, total)))
    try:
        out = nodes.EncodeReferenceGroup.execute(easyref=loaded, prompt="a cat", images=batch, references=group).result[
            0
        ]
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert calls[-1] == (6, 6)  # 4 images, the language pass, the unconditional tokens
    assert isinstance(out, embeds_mod.EasyRefEmbeds)
    assert out.cond.shape == out.uncond.shape == (1, 64, 64) and out.num_references == 4
    assert out.prompt == "a cat" and out.fingerprint == loaded.fingerprint
    direct = loaded.encode([batch[0], batch[1], *group], "a cat")
    torch.testing.assert_close(out.cond, direct, rtol=0, atol=0)
    runs = []
    language_pass = loaded.mllm.tokens_from_sequence
    monkeypatch.setattr(loaded.mllm, "tokens_from_sequence", lambda *a, **k: runs.append(1) or language_pass(*a, **k))
    out2 = nodes.EncodeReferenceGroup.execute(easyref=loaded, prompt="a dog", images=batch).result[0]
    assert len(runs) == 1 and torch.equal(out2.uncond, out.uncond)  # the group only: the unconditional is kept


def test_encode_without_images_is_an_error(loaded):
    with pytest.raises(ValueError, match="the reference group is empty"):
        nodes.EncodeReferenceGroup.execute(easyref=loaded, prompt="x")


def test_encode_is_interruptible(loaded):
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            nodes.EncodeReferenceGroup.execute(easyref=loaded, prompt="x", images=torch.rand(1, 64, 64, 3))
    finally:
        mm.interrupt_current_processing(False)


def test_save_and_load_embeds(loaded, folders):
    out = nodes.EncodeReferenceGroup.execute(easyref=loaded, prompt="p", images=torch.rand(1, 64, 64, 3)).result[0]
    for escaping in ("../../../escape/../x", "/tmp/x", "C:/x"):
        assert "would save outside the output folder" in nodes.SaveEasyRefEmbeds.validate_inputs(escaping)
        with pytest.raises(ValueError, match="would save outside the output folder"):
            nodes.SaveEasyRefEmbeds.execute(embeds=out, filename_prefix=escaping)
    assert nodes.SaveEasyRefEmbeds.validate_inputs("easyref/x:y*z") is True
    res = nodes.SaveEasyRefEmbeds.execute(embeds=out, filename_prefix="escape/x:y*z").ui
    item = res["easyref_embeds"][0]
    saved = folders["output"] / item["subfolder"] / item["filename"]
    assert saved.is_file() and os.path.commonpath([str(folders["output"]), str(saved.resolve())]) == str(
        folders["output"]
    )
    assert "x_y_z" in item["filename"]
    (folders["input"] / "sub").mkdir()
    (folders["input"] / "sub" / "mine.safetensors").write_bytes(saved.read_bytes())
    assert "sub/mine.safetensors" in files.list_embeds_files()
    back = nodes.LoadEasyRefEmbeds.execute(embeds_file="sub/mine.safetensors", easyref=loaded).result[0]
    assert torch.equal(back.cond, out.cond) and back.num_references == 1 and back.prompt == "p"
    other = nodes.LoadEasyRefMLLM.execute(
        mllm="Qwen2-VL-2B-Instruct", checkpoint="other.safetensors", dtype="fp32"
    ).result[0]
    with pytest.raises(embeds_mod.EmbedsFileError, match="different EasyRef checkpoint"):
        nodes.LoadEasyRefEmbeds.execute(embeds_file="sub/mine.safetensors", easyref=other)
    with pytest.raises(FileNotFoundError):
        nodes.LoadEasyRefEmbeds.execute(embeds_file="../output/" + item["filename"])


def test_model_management_loads_and_offloads(loaded):
    """ComfyUI's model management accounts for the whole MLLM, loads all of it and unloads it again (load and
    offload device are both the CPU here, so the weight memory it reports is what shows the moves)."""
    patcher = loaded.patcher
    weights = sum(t.numel() * t.element_size() for t in loaded.mllm.state_dict().values())
    assert weights > 0 and patcher.model_size() == weights and patcher.loaded_size() == 0
    mm.load_models_gpu([patcher], force_full_load=True)
    assert any(lm.model is patcher for lm in mm.current_loaded_models)
    assert patcher.loaded_size() == weights  # fully loaded
    mm.unload_all_models()
    assert not any(lm.model is patcher for lm in mm.current_loaded_models)
    assert patcher.loaded_size() == 0
    assert all(p.device == patcher.offload_device for p in loaded.mllm.parameters())
