"""Where the tests run: beside the source tree, or as a copy of tests/ against an installed wheel.

`make test-wheels` copies tests/ (and pyproject.toml) into a temporary directory and runs it against
a wheel installed in site-packages. The tests import `panelboard` like any user does; only the few
that read the repository's own files (the source stub, README.md) use the names below, and fall back
or skip when the source tree is not there.
"""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
IN_SOURCE_TREE = (ROOT / "Cargo.toml").is_file() and (
    ROOT / "python" / "panelboard" / "__init__.py"
).is_file()
