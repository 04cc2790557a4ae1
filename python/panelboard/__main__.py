"""``python -m panelboard demo [seconds]``: the library's main job, end to end.
``python -m panelboard inspect NAME [--json]``: every breaker of a shared table."""

from __future__ import annotations

import sys

USAGE = "usage: python -m panelboard demo [seconds]\n       python -m panelboard inspect NAME [--json]"


def main(argv: list[str]) -> int:
    if argv and argv[0] == "inspect":
        from ._inspect import run as inspect

        return inspect(argv[1:])
    if not argv or argv[0] != "demo":
        print(USAGE, file=sys.stderr)
        return 2
    from ._demo import run

    seconds = float(argv[1]) if len(argv) > 1 else 4.0
    return run(seconds)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
