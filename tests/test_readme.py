"""The README's Python examples run as written and pass `mypy --strict`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import run_python

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


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
    result = run_python("-m", "mypy", "--strict", "--no-incremental", *files, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
