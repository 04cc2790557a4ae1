"""The README's Python examples run as written and pass `mypy --strict`.

Beside the source tree the README is read from the checkout; against an installed wheel (`make
test-wheels`) from the package's metadata, whose description is the README the wheel was built with.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
from source_tree import IN_SOURCE_TREE, ROOT


def readme_text() -> str:
    if IN_SOURCE_TREE:
        return (ROOT / "README.md").read_text()
    try:
        description = importlib.metadata.metadata("panelboard").get_payload()
    except importlib.metadata.PackageNotFoundError:
        description = None
    if not isinstance(description, str) or not description.strip():
        pytest.skip("no source tree and no README in the installed metadata", allow_module_level=True)
    return description


BLOCKS = re.findall(r"```python\n(.*?)```", readme_text(), flags=re.S)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(BLOCKS[index], f"README.md example {index}", "exec"), {"__name__": f"readme_{index}"})


def test_readme_examples_type_check(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    files = []
    for index, block in enumerate(BLOCKS):
        path = tmp_path / f"readme_{index}.py"
        path.write_text(block)
        files.append(str(path))
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *files],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
