"""Write the README's model-family table (section "Which model works with which feature") from the pack's
coverage table (comfy_patches/coverage.py), against the host ComfyUI.

Usage: bash scripts/host.sh family-table   (tests/host/test_coverage.py checks it is current)
"""

from __future__ import annotations

import sys
from pathlib import Path

from readme_section import write_section

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from refguide_testing.host import setup_host

    setup_host()
    from refguide.comfy_patches import coverage

    write_section("family-table", coverage.render_table())


if __name__ == "__main__":
    main()
