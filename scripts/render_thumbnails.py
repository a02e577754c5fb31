"""Render workflows/<name>.jpg (the templates browser's thumbnails) from the real front end.

Run with `bash scripts/host.sh thumbnails` after adding or changing a workflow (it starts a throw-away ComfyUI with
the front end ComfyUI 0.30.0 pins, opens every workflow in headless Chromium, fits the whole graph on screen and
saves a JPEG). Each JPEG carries the sha256 of the workflow file it shows in its comment, so
tests/unit/test_thumbnails.py finds stale ones without a browser.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "workflows"
THUMBNAIL = (512, 288)
COMMENT_PREFIX = "refguide-workflow-sha256:"

FIT_VIEW = """() => {
  const app = window.app, canvas = app.canvas, graph = app.graph;
  const boxes = graph._nodes.map((n) => Array.from(n.getBounding()))
    .concat((graph._groups || graph.groups || []).map((g) => Array.from(g._bounding || g.bounding)));
  const x0 = Math.min(...boxes.map((b) => b[0])), y0 = Math.min(...boxes.map((b) => b[1]));
  const x1 = Math.max(...boxes.map((b) => b[0] + b[2])), y1 = Math.max(...boxes.map((b) => b[1] + b[3]));
  const side = document.querySelector('nav.side-tool-bar-container').getBoundingClientRect();
  const area = [side.right + 20, side.top + 60, window.innerWidth - 20, window.innerHeight - 20];
  const scale = Math.min((area[2] - area[0]) / (x1 - x0), (area[3] - area[1]) / (y1 - y0));
  canvas.ds.scale = scale;
  canvas.ds.offset[0] = area[0] / scale - x0 + ((area[2] - area[0]) / scale - (x1 - x0)) / 2;
  canvas.ds.offset[1] = area[1] / scale - y0 + ((area[3] - area[1]) / scale - (y1 - y0)) / 2;
  canvas.setDirty(true, true);
  return area;
}"""


def workflow_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from PIL import Image
    from refguide_testing import browser
    from refguide_testing.host import setup_host
    from refguide_testing.server import ComfyServer

    missing = browser.tools_missing()
    if missing:
        raise SystemExit(missing)
    root = setup_host()
    os.environ.setdefault("COMFYUI_ROOT", str(root))
    with tempfile.TemporaryDirectory() as base:
        browser.install_models(Path(base), sorted(WORKFLOWS.glob("*.json")))
        server = ComfyServer(root, Path(base)).start()
        try:
            with browser.chromium() as chromium:
                fe = browser.FrontEnd(chromium, server.url)
                for path in sorted(WORKFLOWS.glob("*.json")):
                    fe.load(browser_json(path))
                    fe.close_dialogs()
                    area = fe.page.evaluate(FIT_VIEW)
                    fe.page.wait_for_timeout(500)
                    clip = {"x": area[0], "y": area[1], "width": area[2] - area[0], "height": area[3] - area[1]}
                    png = fe.screenshot(clip=clip)
                    image = Image.open(io.BytesIO(png)).convert("RGB")
                    image.thumbnail((THUMBNAIL[0] * 2, THUMBNAIL[1] * 2))
                    canvas = Image.new("RGB", (image.width, image.height), (32, 32, 32))
                    canvas.paste(image)
                    canvas = canvas.resize(THUMBNAIL, Image.LANCZOS)
                    target = path.with_suffix(".jpg")
                    canvas.save(target, quality=82, optimize=True, comment=COMMENT_PREFIX + workflow_hash(path))
                    print(f"wrote {target.relative_to(REPO)} ({target.stat().st_size // 1024} KiB)")
        finally:
            server.stop()


def browser_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


if __name__ == "__main__":
    main()
