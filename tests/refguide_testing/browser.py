"""The real ComfyUI front end in headless Chromium (Playwright for Python, Debian's chromium).

``bash scripts/host.sh test`` installs Playwright (and comfy-cli) into a cached folder outside the host venv and
exports REFGUIDE_BROWSER_PY, REFGUIDE_CHROMIUM and REFGUIDE_FRONTEND_NEWEST; the folder is appended to sys.path
here (after the host venv, so it never shadows ComfyUI's packages).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import urllib.request
from pathlib import Path

VIEWPORT = {"width": 1600, "height": 900}  # the builder's VIEW: saved views are fitted to it
SETTINGS = {
    "Comfy.TutorialCompleted": True,  # no templates dialog on the first visit
    "Comfy.Workflow.ShowMissingModelsWarning": True,
    "Comfy.Minimap.Visible": False,  # screenshots and thumbnails show the graph, not the minimap
}


def tools_missing() -> str | None:
    """Why the browser tools are not available, or None."""
    py = os.environ.get("REFGUIDE_BROWSER_PY")
    chromium = os.environ.get("REFGUIDE_CHROMIUM", "/usr/lib/chromium/chromium")
    if not py or not Path(py).is_dir():
        return "REFGUIDE_BROWSER_PY is not set: run the tests with `bash scripts/host.sh test ...`"
    if not Path(chromium).is_file():
        return f"no chromium at {chromium}: `apt-get install chromium` (or set REFGUIDE_CHROMIUM)"
    return None


def import_path() -> None:
    py = os.environ["REFGUIDE_BROWSER_PY"]
    if py not in sys.path:
        sys.path.append(py)


def newest_frontend() -> Path:
    return Path(os.environ["REFGUIDE_FRONTEND_NEWEST"])


def install_models(base_dir: Path, workflows: list[Path]) -> None:
    """What a user who followed the README has, so the front end flags nothing as missing: the tiny Qwen2-VL folder
    and EasyRef checkpoint, and an (empty) file under every other name the workflows' ``properties.models`` list
    (the browser tests never execute the real loaders; the e2e tests swap them for stand-ins)."""
    from refguide_testing import tiny_easyref

    models = Path(base_dir) / "models"
    tiny_easyref.make_models_for(str(models), "sdxl_light", name="easyref.safetensors")
    for path in workflows:
        for node in json.loads(Path(path).read_text())["nodes"]:
            for entry in node.get("properties", {}).get("models", []):
                target = models / entry["directory"] / entry["name"]
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.touch()


def store_settings(server_url: str) -> None:
    for key, value in SETTINGS.items():
        request = urllib.request.Request(f"{server_url}/settings/{key}", data=json.dumps(value).encode(), method="POST")
        urllib.request.urlopen(request, timeout=30).read()


@contextlib.contextmanager
def chromium():
    """A headless Chromium browser (one per test module)."""
    import_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=os.environ.get("REFGUIDE_CHROMIUM", "/usr/lib/chromium/chromium"),
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            yield browser
        finally:
            browser.close()


class FrontEnd:
    """One page of the front end served by a ComfyServer; collects uncaught page errors."""

    def __init__(self, browser, server_url: str):
        store_settings(server_url)
        self.page = browser.new_page(viewport=VIEWPORT)
        self.page_errors: list[str] = []
        self.page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        self.page.goto(server_url)
        self.page.wait_for_function(
            "() => window.app && window.app.graph && window.app.canvas && window.LiteGraph"
            " && Object.keys(window.LiteGraph.registered_node_types).length > 100",
            timeout=120_000,
        )
        self.version = self.page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__")

    def load(self, workflow: dict) -> dict:
        """Load a UI workflow with ``app.loadGraphData`` and read back what the front end made of it."""
        self.page.evaluate("async (wf) => { await window.app.loadGraphData(structuredClone(wf)) }", workflow)
        self.page.wait_for_timeout(300)  # one draw: DOM widgets and sizes settle
        return self.page.evaluate(READ_BACK)

    def close_dialogs(self) -> None:
        self.page.keyboard.press("Escape")

    def screenshot(self, **kwargs) -> bytes:
        """A screenshot without the notification toasts (e.g. the missing-model notice) over the graph."""
        self.page.add_style_tag(content=".p-toast { display: none !important; }")
        return self.page.screenshot(**kwargs)


# Everything the tests check, read from the live app and canvas (screen boxes: the canvas element's client rect
# plus the view transform; the side bar is the front end's own element).
READ_BACK = """async () => {
  const app = window.app, graph = app.graph, canvas = app.canvas;
  const rect = canvas.canvas.getBoundingClientRect();
  const ds = canvas.ds;
  const toScreen = (b) => [rect.left + (b[0] + ds.offset[0]) * ds.scale, rect.top + (b[1] + ds.offset[1]) * ds.scale,
                           rect.left + (b[0] + b[2] + ds.offset[0]) * ds.scale, rect.top + (b[1] + b[3] + ds.offset[1]) * ds.scale];
  const nodes = graph._nodes.map((n) => {
    const b = Array.from(n.getBounding());
    const min = n.computeSize();
    return {id: Number(n.id), type: n.type, registered: !!window.LiteGraph.registered_node_types[n.type],
            box: b, screen: toScreen(b), size: Array.from(n.size), min_size: [min[0], min[1]],
            has_errors: !!n.has_errors};
  });
  const groups = (graph._groups || graph.groups || []).map((g) => {
    const b = Array.from(g._bounding || g.bounding);
    return {title: g.title, box: b, screen: toScreen(b)};
  });
  const links = [];
  const all = graph.links instanceof Map ? Array.from(graph.links.values()) : Object.values(graph.links || {});
  for (const l of all) if (l) links.push([Number(l.origin_id), Number(l.target_id)]);
  const side = document.querySelector('nav.side-tool-bar-container, .side-tool-bar-container');
  const prompt = await app.graphToPrompt();
  return {nodes, groups, links, serialized: graph.serialize(), prompt: prompt.output,
          sidebar: side ? Array.from([side.getBoundingClientRect()].map((r) => [r.left, r.top, r.right, r.bottom])[0]) : null,
          view: {scale: ds.scale, offset: Array.from(ds.offset)},
          dialogs: Array.from(document.querySelectorAll('.p-dialog')).map((d) => d.innerText)};
}"""


def normalise_prompt(prompt: dict) -> dict:
    """The front end's prompt without its `_meta` titles, numbers as floats (it writes 5 where Python has 5.0)."""

    def norm(value):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return [norm(v) for v in value] if isinstance(value, list) else value
        return float(value)

    return {
        str(node_id): {
            "class_type": node["class_type"],
            "inputs": {name: norm(value) for name, value in node["inputs"].items()},
        }
        for node_id, node in prompt.items()
    }


def overlaps(a, b) -> bool:
    """Two [x0, y0, x1, y1] boxes overlap (touching edges do not count)."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def corners(box) -> list[float]:
    """[x, y, w, h] -> [x0, y0, x1, y1]."""
    return [box[0], box[1], box[0] + box[2], box[1] + box[3]]
