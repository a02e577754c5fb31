"""Every shipped workflow opened in the real ComfyUI front end (headless Chromium), for the front end ComfyUI 0.30.0
pins and for the newest one on the registry (served with --front-end-root).

Per workflow and front end: no missing node types, every saved widget value comes back, no page errors,
``app.graphToPrompt()`` equals the suite's own conversion, nodes are at least as large as the front end needs, no
two nodes (or a note and a node) overlap, every node sits in its group, links read left to right, and at the saved
view nothing is under the side bar.

Runs to success: the front end's prompt must equal ``refguide_testing.workflow.ui_to_api`` of the file exactly (after
normalising 5 vs 5.0), and the e2e workflow tests (tests/e2e/test_*_workflows.py, one per shipped workflow, checked
by test_pack_on_server.py) run that very conversion, with only the loaders swapped for the stand-in loaders, to
success through /prompt. Running every workflow a second time here would double the suite's slowest part.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
from pathlib import Path

import pytest
import refguide
from PIL import Image
from refguide_testing import browser
from refguide_testing import workflow as wf
from refguide_testing.server import ComfyServer

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
FRONT_ENDS = ["pinned", "newest"]
SCREENSHOTS = {"refdrop_sdxl_consistent_character", "easyref_sdxl_multi_reference"}


def registered_node_ids() -> list[str]:
    """The node ids the pack's extension lists (computed in this process), sorted."""
    extension = asyncio.run(refguide.comfy_entrypoint())
    return sorted(node.define_schema().node_id for node in asyncio.run(extension.get_node_list()))


# at import: the tests run inside Playwright's event loop, where asyncio.run is refused
NODE_IDS = registered_node_ids()


@pytest.fixture(scope="module")
def front_ends(comfy_server, tmp_path_factory):
    """{name: FrontEnd}: the pinned front end on the session server, the newest on a second server."""
    missing = browser.tools_missing()
    if missing:
        pytest.fail(missing)
    browser.install_models(comfy_server.base_dir, WORKFLOWS)
    newest = ComfyServer(
        comfy_server.comfy_root,
        tmp_path_factory.mktemp("comfy_newest_frontend"),
        extra_args=("--front-end-root", str(browser.newest_frontend())),
    )
    browser.install_models(newest.base_dir, WORKFLOWS)
    newest.start()
    try:
        with browser.chromium() as chromium:
            yield {
                "pinned": browser.FrontEnd(chromium, comfy_server.url),
                "newest": browser.FrontEnd(chromium, newest.url),
            }
    finally:
        newest.stop()


def test_front_end_versions(front_ends):
    pins = (REPO / "scripts" / "frontend-newest.txt").read_text().splitlines()
    newest_pin = next(line for line in pins if line.startswith("comfyui-frontend-package==")).split("==")[1]
    assert front_ends["pinned"].version == "1.47.12"  # what ComfyUI 0.30.0's requirements.txt pins
    assert front_ends["newest"].version == newest_pin


@pytest.mark.parametrize("front_end", FRONT_ENDS)
@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_opens_clean(front_ends, object_info, front_end, path, tmp_path):
    graph = wf.load(path)
    fe = front_ends[front_end]
    fe.page_errors.clear()
    seen = fe.load(graph)
    fe.close_dialogs()

    # Node types, widget values, page errors.
    assert [n["type"] for n in seen["nodes"] if not n["registered"]] == []
    saved = {n["id"]: n.get("widgets_values", []) for n in graph["nodes"]}
    back = {n["id"]: n.get("widgets_values", []) for n in seen["serialized"]["nodes"]}
    assert back == saved
    assert fe.page_errors == []

    # The front end's prompt is the suite's conversion.
    assert browser.normalise_prompt(seen["prompt"]) == browser.normalise_prompt(wf.ui_to_api(graph, object_info))

    # Sizes: every widget fits, and the front end did not have to enlarge a node (that would break the layout).
    file_sizes = {n["id"]: n["size"] for n in graph["nodes"]}
    enlarged = {
        n["type"]: [round(v) for v in n["size"]]
        for n in seen["nodes"]
        if n["size"][0] > file_sizes[n["id"]][0] + 0.5 or n["size"][1] > file_sizes[n["id"]][1] + 0.5
    }
    assert enlarged == {}, "raise MIN_SIZE in scripts/workflow_builder.py to at least these sizes"
    for node in seen["nodes"]:
        assert node["size"][0] >= node["min_size"][0] - 1 and node["size"][1] >= node["min_size"][1] - 1, node

    # Layout on the live canvas: no overlaps, groups hold their nodes, links left to right.
    boxes = {n["id"]: browser.corners(n["box"]) for n in seen["nodes"]}
    ids = sorted(boxes)
    clashes = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1 :] if browser.overlaps(boxes[a], boxes[b])]
    assert clashes == []
    groups = [browser.corners(g["box"]) for g in seen["groups"]]
    assert {g["title"] for g in seen["groups"]} >= {"Models", "Sampling"}
    for i, a in enumerate(groups):
        assert not any(browser.overlaps(a, b) for b in groups[i + 1 :])
    notes = {n["id"] for n in graph["nodes"] if n["type"] in ("MarkdownNote", "Note")}
    for node_id, box in boxes.items():
        holders = [g for g in groups if g[0] <= box[0] and g[1] <= box[1] and box[2] <= g[2] and box[3] <= g[3]]
        if node_id in notes:
            assert not any(browser.overlaps(box, g) for g in groups)
        else:
            assert len(holders) == 1, f"node {node_id} is in {len(holders)} groups"
    for origin, target in seen["links"]:
        assert boxes[origin][2] < boxes[target][0], f"link {origin} -> {target} runs right to left"

    # The saved view: restored as saved, nothing under the side bar or above the canvas area.
    assert seen["view"]["scale"] == pytest.approx(graph["extra"]["ds"]["scale"])
    assert seen["view"]["offset"] == pytest.approx(graph["extra"]["ds"]["offset"])
    side = seen["sidebar"]
    assert side is not None
    for item in seen["nodes"] + seen["groups"]:
        assert item["screen"][0] >= side[2] and item["screen"][1] >= side[1], item

    if front_end == "pinned" and path.stem in SCREENSHOTS:
        # REFGUIDE_SCREENSHOTS=docs/images keeps them (the README shows these two).
        shots = Path(os.environ.get("REFGUIDE_SCREENSHOTS", tmp_path))
        shots.mkdir(parents=True, exist_ok=True)
        image = Image.open(io.BytesIO(fe.screenshot())).convert("RGB").resize((1200, 675), Image.LANCZOS)
        image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(shots / f"{path.stem}.png", optimize=True)


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_every_node_has_a_help_page_where_the_front_end_looks(front_ends, object_info, front_end):
    """The front end's node help for custom nodes fetches /extensions/<pack folder>/docs/<node id>.md."""
    ours = {
        k: v for k, v in object_info.items() if v.get("python_module", "").startswith("custom_nodes.comfyui-refguide")
    }
    assert sorted(ours) == NODE_IDS  # exactly the extension's nodes, each checked below
    found = front_ends[front_end].page.evaluate(
        """async (names) => {
          const out = {};
          for (const name of names) {
            const r = await fetch(window.app.api.fileURL(`/extensions/comfyui-refguide/docs/${name}.md`));
            out[name] = r.ok ? await r.text() : null;
          }
          return out;
        }""",
        sorted(ours),
    )
    for name, text in found.items():
        assert text and text.startswith(f"# {ours[name]['display_name']}"), name
        for section in ("required", "optional"):
            for input_name in ours[name]["input"].get(section, {}):
                assert f"`{input_name}`" in text, f"{name}.md does not explain {input_name}"


def _first_words(markdown: str, count: int = 4) -> str:
    """The first words of a help page's first paragraph as the front end renders them (no markdown marks)."""
    paragraph = next(line for line in markdown.splitlines()[1:] if line.strip())
    plain = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", paragraph).replace("*", "").replace("`", "")
    return " ".join(plain.split()[:count])


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_node_info_panel_renders_the_help_page(front_ends, object_info, front_end):
    """Select each node of the pack on the canvas, press the selection toolbox's Node Info: the panel shows the page."""
    fe = front_ends[front_end]
    names = sorted(
        k for k, v in object_info.items() if v.get("python_module", "").startswith("custom_nodes.comfyui-refguide")
    )
    assert names == NODE_IDS
    for name in names:
        expected = _first_words((REPO / "web" / "docs" / f"{name}.md").read_text())
        fe.page.evaluate(
            """(name) => { const app = window.app; app.graph.clear();
                 const node = window.LiteGraph.createNode(name); node.pos = [300, 200]; app.graph.add(node);
                 app.canvas.deselectAll && app.canvas.deselectAll(); app.canvas.selectNode(node); app.canvas.setDirty(true, true); }""",
            name,
        )
        fe.page.wait_for_timeout(300)
        if expected not in fe.page.evaluate("() => document.body.innerText"):
            fe.page.click('button[aria-label="Node Info"]')
        fe.page.wait_for_function("(text) => document.body.innerText.includes(text)", arg=expected, timeout=15_000)
        assert fe.page.evaluate("() => document.querySelectorAll('table').length") >= 1, name
    assert fe.page_errors == []


# The template grid renders only the cards in view (virtual scrolling): scroll its scrollable boxes to the top
# (step < 0) or down by ``step`` pixels; returns true once every box is at its end.
SCROLL_DIALOG = """(step) => {
  let atEnd = true;
  for (const el of document.querySelectorAll('[role=dialog] *')) {
    if (el.scrollHeight > el.clientHeight + 2) {
      el.scrollTop = step < 0 ? 0 : el.scrollTop + step;
      el.dispatchEvent(new Event('scroll'));
      if (el.scrollTop + el.clientHeight < el.scrollHeight - 2) atEnd = false;
    }
  }
  return atEnd;
}"""


def reveal_template(page, name: str):
    """The card image of template ``name``, scrolled into the rendered part of the grid."""
    page.evaluate(SCROLL_DIALOG, -1)
    image = page.locator(f'[role=dialog] img[alt="{name}"]').first
    for _ in range(60):
        page.wait_for_timeout(150)
        if image.count():
            return image
        if page.evaluate(SCROLL_DIALOG, 150):
            page.wait_for_timeout(300)
            break
    return image


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_templates_browser_shows_every_workflow_with_its_thumbnail(front_ends, front_end):
    fe = front_ends[front_end]
    page = fe.page
    page.click('button[aria-label="Templates"]')
    page.get_by_text("comfyui-refguide", exact=True).first.click()
    page.locator("[role=dialog] img").first.wait_for(timeout=15_000)
    shown = {}
    for path in WORKFLOWS:
        image = reveal_template(page, path.stem)
        image.scroll_into_view_if_needed(timeout=15_000)
        page.wait_for_function(
            "(img) => img.complete && img.naturalWidth > 0", arg=image.element_handle(), timeout=15_000
        )
        shown[path.stem] = image.evaluate("(img) => [img.naturalWidth, img.naturalHeight]")
    page.keyboard.press("Escape")
    assert shown == {path.stem: [512, 288] for path in WORKFLOWS}  # scripts/render_thumbnails.py's JPEGs
    assert fe.page_errors == []
