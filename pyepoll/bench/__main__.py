"""python -m pyepoll.bench SCENARIO [options]  (--help on each scenario)."""
from __future__ import annotations

import importlib
import sys

from ._report import machine

SCENARIOS = {
    "wait-scaling": "wait_scaling",
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SCENARIOS:
        print(__doc__.strip())
        print("scenarios: " + ", ".join(SCENARIOS))
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    print(f"# {machine()}")
    module = importlib.import_module(f".{SCENARIOS[argv[0]]}", __package__)
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
