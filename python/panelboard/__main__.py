"""``python -m panelboard demo [seconds]``: the library's main job, end to end."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "demo":
        print("usage: python -m panelboard demo [seconds]", file=sys.stderr)
        return 2
    from ._demo import run

    seconds = float(argv[1]) if len(argv) > 1 else 4.0
    return run(seconds)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
