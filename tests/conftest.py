"""Test session set-up: the real ComfyUI host in-process, the pack importable as ``refguide``, a live server.

The host comes from ``bash scripts/host.sh test`` (which exports COMFYUI_ROOT). ComfyUI's root goes on
sys.path and CPU mode is set before anything imports ``comfy``; the pack is loaded from the repository
root under the package name ``refguide`` (ComfyUI itself imports it under its folder name).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from refguide_testing.host import setup_host  # noqa: E402

try:
    COMFYUI_ROOT = setup_host()
except RuntimeError as error:
    raise pytest.UsageError(str(error)) from None


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """One live ComfyUI server (CPU, loopback, free port) with this pack and the test loaders installed."""
    from refguide_testing.server import ComfyServer

    server = ComfyServer(COMFYUI_ROOT, tmp_path_factory.mktemp("comfy_base")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def object_info(comfy_server):
    return comfy_server.object_info()
