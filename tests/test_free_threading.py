"""On free-threaded CPython, importing panelboard must leave the GIL disabled (issue 2).

An extension module that does not declare free-threading support makes CPython turn the GIL back
on at import (with a RuntimeWarning). The check runs in a fresh interpreter with the GIL setting
left to the build default (no ``-X gil``, no ``PYTHON_GIL``), so it is a real test of the import."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig

import pytest
from helpers import run_python

FREE_THREADED = sysconfig.get_config_var("Py_GIL_DISABLED") == 1

pytestmark = pytest.mark.skipif(not FREE_THREADED, reason="needs a free-threaded CPython build")

CHECK = r"""
import sys, warnings
warnings.simplefilter("error")  # a "GIL re-enabled" RuntimeWarning fails the import
assert not sys._is_gil_enabled(), "GIL enabled before the import: the check would be meaningless"
import panelboard
import panelboard._core
{extra}
print("gil_enabled=" + str(sys._is_gil_enabled()))
"""


def run_check(extra: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}
    return run_python("-c", CHECK.format(extra=extra), env=env, timeout=120)


def test_import_leaves_gil_disabled():
    proc = run_check()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("gil_enabled=False"), proc.stdout + proc.stderr
    assert "GIL" not in proc.stderr, proc.stderr


def test_using_every_module_leaves_gil_disabled():
    # The Python-side helpers (asyncio glue, demo) are imported lazily; exercise them too.
    extra = r"""
import threading, asyncio
import panelboard._aio, panelboard._demo, panelboard._types
from panelboard import Registry, ManualClock, CircuitOpenError
r = Registry(clock=ManualClock())
b = r.breaker("svc", failure_threshold=1)
def work():
    for _ in range(100):
        r.call("svc", lambda: 1)
        r.state("svc"); r.list()
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join(60)
async def main():
    async def coro():
        return 2
    return await b.acall(coro)
assert asyncio.run(main()) == 2
"""
    proc = run_check(extra)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("gil_enabled=False"), proc.stdout + proc.stderr


def test_gil_disabled_in_this_test_process():
    # Holds unless the suite itself was started with -X gil=1 / PYTHON_GIL=1.
    if os.environ.get("PYTHON_GIL") == "1" or getattr(sys.flags, "gil", None) == 1:
        pytest.skip("suite run with the GIL forced on")
    import panelboard  # noqa: F401

    assert not sys._is_gil_enabled()
