"""The installed wheel holds what a `pip install panelboard` user relies on.

This is the one test that looks at where the package lives: it checks an install from a wheel (in
site-packages, not an editable build), so it skips beside the source tree unless `make test-wheels`
runs it (PANELBOARD_TEST_WHEEL=1), where skipping would hide a broken wheel and fails instead.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import sys
import sysconfig
from base64 import urlsafe_b64encode
from pathlib import Path

import panelboard
import pytest

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


@pytest.fixture(scope="module")
def wheel_install() -> importlib.metadata.Distribution:
    package = Path(panelboard.__file__).resolve().parent
    site_packages = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    if package.parent not in site_packages:
        message = f"panelboard is imported from {package}, not from an installed wheel"
        if os.environ.get("PANELBOARD_TEST_WHEEL") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return importlib.metadata.distribution("panelboard")


def test_installed_wheel_files(wheel_install: importlib.metadata.Distribution) -> None:
    dist = wheel_install
    recorded = {str(path): path for path in dist.files or []}
    extension = f"panelboard/_core{sysconfig.get_config_var('EXT_SUFFIX')}"
    # The module, built for this interpreter's ABI (a cp313t wheel for 3.13t), with its stub and marker.
    for name in ("panelboard/__init__.py", "panelboard/_core.pyi", "panelboard/py.typed", extension):
        assert name in recorded, f"{name} not in the wheel's RECORD: {sorted(recorded)}"
    assert Path(panelboard._core.__file__).resolve() == Path(dist.locate_file(extension)).resolve()
    # What is installed is what the wheel recorded, byte for byte.
    for name, path in recorded.items():
        if path.hash is None:  # RECORD itself
            continue
        digest = hashlib.new(path.hash.mode, Path(dist.locate_file(path)).read_bytes()).digest()
        assert urlsafe_b64encode(digest).rstrip(b"=").decode() == path.hash.value, f"{name} changed"

    # The license the metadata names is in the wheel.
    metadata = dist.metadata
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    licenses = [name for name in recorded if name.endswith(".dist-info/licenses/LICENSE")]
    assert len(licenses) == 1, sorted(recorded)
    assert "MIT License" in Path(dist.locate_file(recorded[licenses[0]])).read_text()

    # The interpreter running this is one the metadata promises.
    assert metadata["Requires-Python"] == ">=3.11"
    classifiers = metadata.get_all("Classifier") or []
    assert f"Programming Language :: Python :: {sys.version_info[0]}.{sys.version_info[1]}" in classifiers
    if FREE_THREADED:
        assert any(c.startswith("Programming Language :: Python :: Free Threading ::") for c in classifiers)
