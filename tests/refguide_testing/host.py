"""Make the real ComfyUI host importable in-process and load this pack under the package name ``refguide``.

Used by the test session (conftest) and the tests that start a fresh process. COMFYUI_ROOT comes from
`bash scripts/host.sh test|env`. (The benchmarks import the pack as a package instead: bench/_measure.py.)
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]
REPO = TESTS_DIR.parent


def setup_host(pytorch_attention: bool = False) -> Path:
    """Put ComfyUI on sys.path in CPU mode (unless REFGUIDE_DEVICE=cuda) and import the pack as ``refguide``.

    ``pytorch_attention`` selects ComfyUI's PyTorch SDPA backend (--use-pytorch-cross-attention); it must be
    chosen here, before ComfyUI's attention module is imported.
    """
    root = os.environ.get("COMFYUI_ROOT")
    if not root or not (Path(root) / "comfy").is_dir():
        raise RuntimeError("COMFYUI_ROOT is not set to a ComfyUI tree: use `bash scripts/host.sh test|env`.")
    if root not in sys.path:
        sys.path.insert(0, root)
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    import comfy.cli_args

    if os.environ.get("REFGUIDE_DEVICE", "cpu") == "cpu":
        comfy.cli_args.args.cpu = True
    if pytorch_attention:
        comfy.cli_args.args.use_pytorch_cross_attention = True
    if "refguide" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "refguide", REPO / "__init__.py", submodule_search_locations=[str(REPO)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["refguide"] = module
        spec.loader.exec_module(module)
    return Path(root)
