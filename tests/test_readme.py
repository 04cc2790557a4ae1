"""The README's Python examples run as written and pass `mypy --strict`."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from helpers import run_python

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
# The integrations' examples import their optional library; where it is not installed (grpcio on
# free-threaded 3.13t) the example is skipped with the reason.
OPTIONAL = ("httpx2", "httpx", "aiohttp", "grpc", "prometheus_client", "opentelemetry")
# grpcio ships no type information: its example is type-checked with grpc as Any.
MYPY_CONFIG = "[mypy]\n[mypy-grpc.*]\nignore_missing_imports = True\n"


def optional_imports(block: str) -> list[str]:
    found = re.findall(r"^(?:import|from) ([\w.]+)", block, flags=re.M)
    return sorted({m.split(".")[0] for m in found} & set(OPTIONAL))


def require_imports(block: str) -> None:
    for module in optional_imports(block):
        pytest.importorskip(module, reason=f"{module} is not installed here")


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 14
    assert {m for b in BLOCKS for m in optional_imports(b)} == set(OPTIONAL)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int, capsys: pytest.CaptureFixture[str]) -> None:
    require_imports(BLOCKS[index])
    exec(compile(BLOCKS[index], f"README.md example {index}", "exec"), {"__name__": f"readme_{index}"})


def test_readme_examples_type_check(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    config = tmp_path / "mypy.ini"
    config.write_text(MYPY_CONFIG)
    files = []
    for index, block in enumerate(BLOCKS):
        if any(importlib.util.find_spec(m) is None for m in optional_imports(block)):
            continue
        path = tmp_path / f"readme_{index}.py"
        path.write_text(block)
        files.append(str(path))
    result = run_python(
        "-m", "mypy", "--strict", "--no-incremental", "--config-file", str(config), *files, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
