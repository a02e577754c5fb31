"""Write the README's model-family table (section "Which model works with which feature") from the pack's
coverage table (comfy_patches/coverage.py), against the host ComfyUI.

Usage: bash scripts/host.sh family-table   (tests/host/test_coverage.py checks it is current)
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- family-table:start -->", "<!-- family-table:end -->"


def main() -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from refguide_testing.host import setup_host

    setup_host()
    from refguide.comfy_patches import coverage

    readme = REPO / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"README.md has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{coverage.render_table()}\n{END}{tail}")
    print("README.md: family table written")


if __name__ == "__main__":
    main()
