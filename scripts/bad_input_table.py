"""Write the README's bad-input table (section "Reliability") from the live-server test's cases.

Usage: python3 scripts/bad_input_table.py   (tests/e2e/test_reliability_bad_inputs.py checks the table is current)
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from readme_section import write_section

REPO = Path(__file__).resolve().parents[1]


def load_cases():
    path = REPO / "tests" / "refguide_testing" / "bad_inputs.py"
    spec = importlib.util.spec_from_file_location("refguide_bad_inputs", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    write_section("bad-input-table", load_cases().render_table())


if __name__ == "__main__":
    main()
