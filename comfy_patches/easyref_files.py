"""EasyRef's files in ComfyUI's folders: the model folders (``models/LLM``, ``models/easyref``), lookups with
messages that say where to put and download a missing file, and the embeds files (saved to the output folder,
loaded from the input folder)."""

from __future__ import annotations

import hashlib
import os
import re

import folder_paths

from ..easyref import checkpoint as ckpt
from ..easyref import embeds as embeds_mod
from ..easyref import encoder

LLM_FOLDER = "LLM"
EASYREF_FOLDER = "easyref"
CHECKPOINT_EXTENSIONS = {".safetensors", ".sft", ".pt", ".pth", ".bin", ".ckpt"}
DEFAULT_MLLM = "Qwen2-VL-2B-Instruct"
QWEN_URL = f"https://huggingface.co/{encoder.QWEN2_VL_REPO}"
EASYREF_URL = f"https://huggingface.co/{encoder.EASYREF_REPO}"


def register_model_folders() -> None:
    """Register ``models/LLM`` and ``models/easyref``, keeping paths added by extra_model_paths.yaml."""
    for name, extensions in ((LLM_FOLDER, set()), (EASYREF_FOLDER, CHECKPOINT_EXTENSIONS)):
        paths, exts = folder_paths.folder_names_and_paths.get(name, ([], set()))
        paths = list(paths) or [os.path.join(folder_paths.models_dir, name)]
        folder_paths.folder_names_and_paths[name] = (paths, set(exts) | extensions)


# ---------------------------------------------------------------------------------------------
# Model files
# ---------------------------------------------------------------------------------------------


def llm_roots() -> list[str]:
    """The LLM model folders, plus ``models/llm`` where it exists (case-sensitive file systems)."""
    roots = list(folder_paths.get_folder_paths(LLM_FOLDER))
    lower = os.path.join(folder_paths.models_dir, "llm")
    if os.path.isdir(lower) and not any(os.path.normcase(os.path.abspath(r)) == os.path.normcase(lower) for r in roots):
        roots.append(lower)
    return roots


def _is_qwen2_vl_folder(path: str) -> bool:
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return False
    try:
        return ckpt.read_json(config).get("model_type") == "qwen2_vl"
    except (OSError, ValueError):
        return False


def list_mllm_folders() -> list[str]:
    """Folders (up to two levels deep) under the LLM model folders that hold a Qwen2-VL config."""
    found = set()
    for root in llm_roots():
        if not os.path.isdir(root):
            continue
        for first in sorted(os.listdir(root)):
            p1 = os.path.join(root, first)
            if not os.path.isdir(p1):
                continue
            if _is_qwen2_vl_folder(p1):
                found.add(first)
                continue
            for second in sorted(os.listdir(p1)):
                if _is_qwen2_vl_folder(os.path.join(p1, second)):
                    found.add(f"{first}/{second}")
    return sorted(found)


def list_checkpoints() -> list[str]:
    """EasyRef checkpoint files in the easyref model folders."""
    return folder_paths.get_filename_list(EASYREF_FOLDER)


def _safe_relative(name: str) -> str | None:
    rel = os.path.normpath(name.replace("\\", "/"))
    if not name or os.path.isabs(rel) or rel == ".." or rel.startswith(".." + os.sep) or rel.startswith("../"):
        return None
    return rel


def outside_message(input_name: str, name: str, roots: list[str], example: str) -> str:
    return (
        f"{input_name} '{name}' points outside the model folders {', '.join(roots)}: names are relative to them "
        f"and cannot climb out ('..') or be absolute paths. Pick an entry of the list, e.g. '{example}'."
    )


def mllm_missing_message(name: str) -> str:
    roots = llm_roots()
    return (
        f"Qwen2-VL folder '{name}' not found. Searched the LLM model folders: {', '.join(roots)}. "
        f"Expected a folder such as {os.path.join(roots[0], DEFAULT_MLLM)} holding config.json, the tokenizer "
        f"files and the *.safetensors weights; download it from {QWEN_URL}."
    )


def checkpoint_missing_message(name: str) -> str:
    roots = folder_paths.get_folder_paths(EASYREF_FOLDER)
    return (
        f"EasyRef checkpoint '{name}' not found. Searched the easyref model folders: {', '.join(roots)}. "
        f"Expected a file such as {os.path.join(roots[0], 'easyref.safetensors')}; download it from {EASYREF_URL}."
    )


def resolve_mllm(name: str) -> str:
    """The Qwen2-VL folder ``name`` (relative to an LLM model folder), or FileNotFoundError saying where to put it."""
    rel = _safe_relative(name)
    if rel is None:
        raise FileNotFoundError(outside_message("mllm", name, llm_roots(), DEFAULT_MLLM))
    for root in llm_roots():
        path = os.path.join(root, rel)
        if _is_qwen2_vl_folder(path):
            return path
    raise FileNotFoundError(mllm_missing_message(name))


def resolve_checkpoint(name: str) -> str:
    """The EasyRef checkpoint file ``name``, or FileNotFoundError saying where to put and download it."""
    rel = _safe_relative(name)
    if rel is None:
        roots = folder_paths.get_folder_paths(EASYREF_FOLDER)
        raise FileNotFoundError(outside_message("checkpoint", name, roots, "easyref.safetensors"))
    path = folder_paths.get_full_path(EASYREF_FOLDER, rel)
    if path is None:
        raise FileNotFoundError(checkpoint_missing_message(name))
    return path


def missing_model_files(mllm: str, checkpoint: str) -> list[str]:
    """The messages for whichever of the two model files cannot be found (empty when both can)."""
    problems = []
    for resolve, name in ((resolve_mllm, mllm), (resolve_checkpoint, checkpoint)):
        try:
            resolve(name)
        except FileNotFoundError as error:
            problems.append(str(error))
    return problems


# ---------------------------------------------------------------------------------------------
# Embeds files
# ---------------------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._\- /]")


def sanitize_prefix(prefix: str) -> str:
    """A file-name prefix that stays inside the output folder: no absolute paths, no '..', plain characters."""
    parts = [p for p in _UNSAFE.sub("_", prefix.replace("\\", "/")).split("/") if p not in ("", ".", "..")]
    parts = [p.strip() or "_" for p in parts]
    return "/".join(parts) or "easyref_embeds"


def prefix_problem(prefix: str) -> str | None:
    """Why ``prefix`` cannot be a file name prefix inside the output folder (absolute, or climbing out), or None."""
    parts = prefix.replace("\\", "/").split("/")
    if os.path.isabs(prefix) or prefix.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", prefix):
        return (
            f"filename_prefix '{prefix}' would save outside the output folder: use a name relative to it, such as "
            "'easyref/embeds' (sub-folders are allowed, '..' and absolute paths are not)."
        )
    return None


def save_embeds_file(embeds: embeds_mod.EasyRefEmbeds, filename_prefix: str) -> dict:
    """Save ``embeds`` under the output folder; the UI entry (filename, subfolder, type) of the new file."""
    problem = prefix_problem(filename_prefix)
    if problem:
        raise ValueError(problem)
    output_dir = folder_paths.get_output_directory()
    prefix = sanitize_prefix(filename_prefix)
    full_folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, output_dir)
    os.makedirs(full_folder, exist_ok=True)
    name = f"{filename}_{counter:05}_.safetensors"
    embeds_mod.save_embeds(embeds, os.path.join(full_folder, name))
    return {"filename": name, "subfolder": subfolder, "type": "output"}


def list_embeds_files() -> list[str]:
    """``.safetensors`` files of the input folder (sub-folders included), as relative paths."""
    root = folder_paths.get_input_directory()
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            if f.endswith(".safetensors"):
                out.append(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
    return sorted(out)


def resolve_embeds_file(name: str) -> str:
    """The embeds file ``name`` inside the input folder (never outside it), or FileNotFoundError."""
    root = os.path.realpath(folder_paths.get_input_directory())
    path = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, path]) != root:
        raise FileNotFoundError(
            f"embeds_file '{name}' leads to {path}, outside the input folder {root} (a '..', absolute path or "
            "symbolic link): copy the embeds file into the input folder and pick it from the list."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"embeds_file '{name}' not found in the input folder {root}.")
    return path


def embeds_file_fingerprint(name: str) -> str:
    """Changes whenever the file is replaced or rewritten (path, size, modification time)."""
    path = resolve_embeds_file(name)
    st = os.stat(path)
    return hashlib.sha256(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
