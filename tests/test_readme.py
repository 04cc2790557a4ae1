"""The README's Python examples run as written and pass `mypy --strict`.

Beside the source tree the README is read from the checkout; against an installed wheel (`make
test-wheels`) from the package's metadata, whose description is the README the wheel was built with.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from pathlib import Path

import pytest
from helpers import IN_SOURCE_TREE, ROOT, run_python


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
def test_readme_example_runs(
    index: int,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_imports(BLOCKS[index])
    if "REDIS_URL" in BLOCKS[index]:
        # The Redis example runs against a real redis-server of its own (tests/redis_fixtures.py).
        monkeypatch.setenv("REDIS_URL", request.getfixturevalue("redis_server").url)
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
