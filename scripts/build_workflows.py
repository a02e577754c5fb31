"""Write the example workflows in workflows/ (ComfyUI front-end "UI" format, version 0.4).

Run from the repository root: `python scripts/build_workflows.py`. The JSON files are committed; the e2e tests
load them exactly as shipped (only loader nodes are swapped for tiny test loaders). Each feature keeps its
graphs in its own module (scripts/workflows_*.py, each with a ``build() -> {name: Workflow}``).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
WORKFLOWS = SCRIPTS.parent / "workflows"


def main(out: Path = WORKFLOWS) -> None:
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    out.mkdir(exist_ok=True)
    for module_path in sorted(SCRIPTS.glob("workflows_*.py")):
        module = importlib.import_module(module_path.stem)
        for name, workflow in module.build().items():
            (out / f"{name}.json").write_text(json.dumps(workflow.to_json(), indent=2) + "\n")
            print(f"wrote {out.name}/{name}.json")


if __name__ == "__main__":
    main()
