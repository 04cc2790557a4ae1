"""Typing (issue 3): the hand-written stub ``python/panelboard/_core.pyi`` matches the native module
(``mypy.stubtest``), and ``tests/typing_examples.py`` (every public API, README-style) passes
``mypy --strict`` and also runs.

The mypy checks run in subprocesses, like ``make stubtest`` / ``make typecheck``. They are skipped
when mypy is not installed, and on free-threaded builds where mypy cannot run (it may not build
there); the examples themselves run everywhere.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sysconfig
from pathlib import Path

import pytest
from helpers import run_python

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "tests" / "typing_examples.py"
ALLOWLIST = ROOT / "tests" / "stubtest-allowlist.txt"
STUB = ROOT / "python" / "panelboard" / "_core.pyi"
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run_python(*args, cwd=ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A private cache, so that concurrent mypy runs (other sessions, make targets) do not collide."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed")
    probe = run("-m", "mypy", "--version", timeout=120)
    if probe.returncode != 0:
        if FREE_THREADED:
            pytest.skip(f"mypy cannot run on this free-threaded build: {probe.stderr.strip()[-300:]}")
        pytest.fail(f"mypy is installed but does not run:\n{probe.stdout}\n{probe.stderr}")
    return str(tmp_path_factory.mktemp("mypy-cache"))


def test_stub_file_ships_with_the_package():
    import panelboard

    package = Path(panelboard.__file__).parent
    assert (package / "_core.pyi").is_file()
    assert (package / "py.typed").is_file()
    assert package.resolve() == STUB.parent.resolve()


def test_stubtest_passes_on_the_native_module(mypy_cache: str) -> None:
    result = run(
        "-m",
        "mypy.stubtest",
        "panelboard._core",
        "--allowlist",
        str(ALLOWLIST),
    )
    assert result.returncode == 0, f"stubtest failed:\n{result.stdout}\n{result.stderr}"


def test_typing_examples_pass_mypy_strict(mypy_cache: str) -> None:
    result = run("-m", "mypy", "--strict", "--cache-dir", mypy_cache, str(EXAMPLES))
    assert result.returncode == 0, f"mypy --strict failed:\n{result.stdout}\n{result.stderr}"
    assert "Success" in result.stdout


def test_strict_mypy_rejects_misuse_of_the_api(mypy_cache: str, tmp_path: Path) -> None:
    """The stub is precise, not merely permissive: typical mistakes are type errors."""
    source = tmp_path / "misuse.py"
    source.write_text(
        "from panelboard import Registry\n"
        "r = Registry()\n"
        "b = r.breaker('x', failure_treshold=3)\n"  # misspelt option
        "def f(x: int) -> int:\n"
        "    return x\n"
        "s: str = b.call(f, 1)\n"  # wrong result type
        "b.call(f, 'one')\n"  # wrong argument type
        "r.call('x', f)\n"  # fn must take no arguments
        "p = b.try_acquire()\n"
        "p.success()\n"  # may be None
    )
    result = run("-m", "mypy", "--strict", "--cache-dir", mypy_cache, str(source))
    assert result.returncode == 1
    out = result.stdout
    assert "misuse.py:3: error" in out and "failure_treshold" in out
    assert "misuse.py:6: error" in out
    assert "misuse.py:7: error" in out
    assert "misuse.py:8: error" in out
    assert "misuse.py:10: error" in out
    assert out.count(": error:") == 5, out


def test_typing_examples_run() -> None:
    """Every example in typing_examples.py also works at runtime."""
    result = run(str(EXAMPLES), timeout=120)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "typing examples ran" in result.stdout


def test_allowlist_entries_are_commented() -> None:
    # Every allowlisted stubtest error must say why (the allowlist may be empty).
    lines = [line for line in ALLOWLIST.read_text().splitlines() if line.strip()]
    previous_is_comment = False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            previous_is_comment = True
            continue
        assert previous_is_comment or "#" in stripped, f"allowlist entry without a reason: {line!r}"
        previous_is_comment = False
