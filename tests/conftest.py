"""Test session set-up: the real ComfyUI host in-process, the pack importable as ``refguide``, a live server.

The host comes from ``bash scripts/host.sh test`` (which exports COMFYUI_ROOT). ComfyUI's root goes on
sys.path and CPU mode is set before anything imports ``comfy``; the pack is loaded from the repository
root under the package name ``refguide`` (ComfyUI itself imports it under its folder name).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent
COMFYUI_ROOT = os.environ.get("COMFYUI_ROOT")
if not COMFYUI_ROOT or not (Path(COMFYUI_ROOT) / "comfy").is_dir():
    raise pytest.UsageError(
        "COMFYUI_ROOT is not set to a ComfyUI tree: run the suite with `bash scripts/host.sh test`."
    )

sys.path.insert(0, COMFYUI_ROOT)
sys.path.insert(0, str(TESTS_DIR))

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True


def _load_pack():
    spec = importlib.util.spec_from_file_location(
        "refguide", REPO / "__init__.py", submodule_search_locations=[str(REPO)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["refguide"] = module
    spec.loader.exec_module(module)
    return module


_load_pack()


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """One live ComfyUI server (CPU, loopback, free port) with this pack and the test loaders installed."""
    from refguide_testing.server import ComfyServer

    server = ComfyServer(Path(COMFYUI_ROOT), tmp_path_factory.mktemp("comfy_base")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def object_info(comfy_server):
    return comfy_server.object_info()
