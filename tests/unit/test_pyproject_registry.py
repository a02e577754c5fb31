"""pyproject.toml through the Comfy Registry's own parser (comfy-cli's config_parser, offline)."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest
from refguide_testing import browser

REPO = Path(__file__).resolve().parents[2]


def test_registry_parses_every_field_without_a_warning():
    missing = browser.tools_missing()
    if missing:
        pytest.fail(missing)
    browser.import_path()
    from comfy_cli.registry import config_parser

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        config = config_parser.extract_node_configuration(str(REPO / "pyproject.toml"))
    assert config is not None
    assert "Warning" not in out.getvalue() and "Error" not in out.getvalue(), out.getvalue()
    project, comfy = config.project, config.tool_comfy
    assert project.name and project.description and project.version and project.license.file == "LICENSE"
    assert project.urls.repository and project.urls.issues and project.urls.documentation
    assert project.supported_os == ["OS Independent"]
    assert comfy.publisher_id and comfy.display_name

    # requires-comfyui names the ComfyUI the suite runs on as the oldest supported one.
    version_file = Path(os.environ["COMFYUI_ROOT"]) / "comfyui_version.py"
    tested = version_file.read_text().split('__version__ = "')[1].split('"')[0]
    assert project.supported_comfyui_version == f">={tested}"
