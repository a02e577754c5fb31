"""Write the README's bad-input table (section "Reliability") from the live-server test's cases.

Usage: python3 scripts/bad_input_table.py   (tests/e2e/test_reliability_bad_inputs.py checks the table is current)
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- bad-input-table:start -->", "<!-- bad-input-table:end -->"


def load_cases():
    path = REPO / "tests" / "refguide_testing" / "bad_inputs.py"
    spec = importlib.util.spec_from_file_location("refguide_bad_inputs", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    readme = REPO / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"README.md has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{load_cases().render_table()}\n{END}{tail}")
    print("README.md: bad-input table written")


if __name__ == "__main__":
    main()
