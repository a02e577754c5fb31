"""The example input images the shipped workflows name (drawn by scripts/make_example_inputs.py)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def install(input_dir: str) -> list[str]:
    """Copy the example images into ComfyUI's input folder, never overwriting a file of the same name; returns the
    names copied. Templates opened from the browser then show their inputs."""
    copied = []
    target = Path(input_dir)
    for image in sorted(FOLDER.glob("*.png")):
        if not (target / image.name).exists():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image, target / image.name)
            copied.append(image.name)
    if copied:
        logging.info("[refguide] copied the example inputs %s into %s", ", ".join(copied), target)
    return copied
