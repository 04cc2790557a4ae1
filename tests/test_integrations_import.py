"""`import panelboard` stays light: no optional package is imported, not even by the integration
modules, until an integration is used."""

from __future__ import annotations

import json
import subprocess
import sys

OPTIONAL = [
    "httpx",
    "httpx2",
    "httpcore",
    "httpcore2",
    "anyio",
    "aiohttp",
    "yarl",
    "grpc",
    "prometheus_client",
    "opentelemetry",
]

PROBE = """
import json, sys
{imports}
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set({optional!r}))))
"""


def imported_after(*imports: str) -> list[str]:
    code = PROBE.format(imports="\n".join(imports), optional=OPTIONAL)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_import_panelboard_imports_no_optional_package():
    assert imported_after("import panelboard") == []


def test_the_integration_modules_import_their_library_only_when_used():
    modules = ["httpx", "aiohttp", "grpc", "prometheus", "opentelemetry"]
    assert imported_after(*(f"import panelboard.{m}" for m in modules)) == []
    # Building a transport does not import httpx either: the library is the request's.
    assert imported_after("import panelboard.httpx", "panelboard.httpx.BreakerTransport()") == []
