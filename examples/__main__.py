"""`python -m examples <workflow> [options]`: run one example app (examples/run does it in examples/.venv)."""

from __future__ import annotations

import importlib
import sys

from examples.workflow import WORKFLOWS, run


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in WORKFLOWS:
        sys.exit(f"usage: python -m examples <workflow> [options]; workflows: {', '.join(WORKFLOWS)}")
    module = importlib.import_module(f"examples.{argv[0]}.app")
    run(module.WORKFLOW, argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
