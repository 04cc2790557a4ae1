"""Checks the release artifacts that `make wheels` built, and prints one line per artifact.

    python release/check_artifacts.py --version 0.1.0 dist/panelboard-*.whl dist/panelboard-*.tar.gz

Run by release/build-wheels with the tools virtualenv (auditwheel, trove-classifiers). Each wheel must:
- carry a CPython tag and a manylinux_2_17 (or older) platform tag in its file name;
- satisfy that policy by `auditwheel show` (which reads the symbol versions the .so really needs);
- hold one extension module for its own ABI, stripped (no symbol table, no debug sections), with
  the `.pyi` stub, `py.typed` and the LICENSE beside it;
- declare the metadata a PyPI user relies on: this version, `License-Expression: MIT` with the
  LICENSE file, `Requires-Python: >=3.11`, a classifier for its own Python version (and the
  free-threading one for a `t` build), and only classifiers PyPI knows.
The sdist must hold what a build from source needs. Any failure exits non-zero with every problem
listed.
"""

from __future__ import annotations

import argparse
import email.parser
import re
import struct
import subprocess
import sys
import tarfile
import zipfile
from email.message import Message
from pathlib import Path

# manylinux2014 == manylinux_2_17: glibc 2.17 (CentOS 7 era). Anything newer narrows who can install.
MAX_GLIBC_MINOR = 17
REQUIRES_PYTHON = ">=3.11"
FREE_THREADING_CLASSIFIER = "Programming Language :: Python :: Free Threading :: 2 - Beta"
SDIST_MEMBERS = (
    "pyproject.toml",
    "Cargo.toml",
    "Cargo.lock",
    "README.md",
    "LICENSE",
    "python/panelboard/__init__.py",
    "python/panelboard/_core.pyi",
    "python/panelboard/py.typed",
)


class Problems(list[str]):
    def check(self, condition: bool, message: str) -> None:
        if not condition:
            self.append(message)


def elf_section_names(data: bytes) -> list[str]:
    """Section names of a 64-bit little-endian ELF file (the only kind these wheels hold)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(index: int) -> tuple[int, int, int]:
        base = shoff + index * shentsize
        (name,) = struct.unpack_from("<I", data, base)
        offset, size = struct.unpack_from("<QQ", data, base + 0x18)
        return name, offset, size

    _, strtab_offset, strtab_size = header(shstrndx)
    strtab = data[strtab_offset : strtab_offset + strtab_size]
    names = []
    for index in range(shnum):
        name = header(index)[0]
        names.append(strtab[name : strtab.index(b"\0", name)].decode())
    return names


def parse_metadata(text: str) -> Message:
    return email.parser.Parser().parsestr(text)


def check_metadata(meta: Message, version: str, python_tag: str | None, problems: Problems) -> None:
    problems.check(meta["Name"] == "panelboard", f"Name is {meta['Name']!r}")
    problems.check(meta["Version"] == version, f"Version {meta['Version']!r} is not Cargo's {version!r}")
    problems.check(
        meta["License-Expression"] == "MIT", f"License-Expression is {meta['License-Expression']!r}"
    )
    problems.check(
        meta.get_all("License-File") == ["LICENSE"], f"License-File is {meta.get_all('License-File')}"
    )
    problems.check(
        meta["Requires-Python"] == REQUIRES_PYTHON, f"Requires-Python is {meta['Requires-Python']!r}"
    )
    classifiers = meta.get_all("Classifier") or []
    problems.check(FREE_THREADING_CLASSIFIER in classifiers, "no free-threading classifier")
    try:
        from trove_classifiers import classifiers as known
    except ImportError:  # pragma: no cover - the tools venv installs it
        problems.append("trove-classifiers is not installed: classifiers unchecked")
    else:
        for unknown in sorted(set(classifiers) - set(known)):
            problems.append(f"classifier PyPI does not know: {unknown!r}")
    if python_tag is not None:
        minor = re.fullmatch(r"cp3(\d+)t?", python_tag)
        assert minor, python_tag
        wanted = f"Programming Language :: Python :: 3.{minor.group(1)}"
        problems.check(wanted in classifiers, f"no classifier {wanted!r} for a {python_tag} wheel")
    urls = meta.get_all("Project-URL") or []
    problems.check(bool(urls), "no Project-URL")


def auditwheel_policy(wheel: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "auditwheel", "show", str(wheel)], capture_output=True, text=True
    )
    # auditwheel wraps its text at any space, so the phrase is matched across line breaks.
    phrase = r"consistent\s+with\s+the\s+following\s+platform\s+tag:\s*"
    match = re.search(phrase + r'"([^"]+)"', result.stdout)
    if result.returncode != 0 or match is None:
        return "auditwheel failed: " + " ".join(f"{result.stdout} {result.stderr}".split())[-300:]
    return match.group(1)


def check_wheel(wheel: Path, version: str) -> tuple[str, str, Problems]:
    problems = Problems()
    # name-version-python-abi-platform.whl; the platform part may hold several dotted tags.
    parts = wheel.name[: -len(".whl")].split("-")
    if len(parts) != 5:
        problems.append(f"unexpected wheel file name {wheel.name}")
        return "?", "?", problems
    _, file_version, python_tag, abi_tag, platforms = parts
    tag = f"{python_tag}-{abi_tag}"
    problems.check(file_version == version, f"file name version {file_version} is not Cargo's {version}")
    problems.check(re.fullmatch(r"cp3\d+", python_tag) is not None, f"python tag {python_tag}")
    problems.check(abi_tag in (python_tag, python_tag + "t"), f"abi tag {abi_tag} for {python_tag}")
    glibc = [int(m) for m in re.findall(r"manylinux_2_(\d+)_x86_64", platforms)]
    problems.check(bool(glibc) and max(glibc) <= MAX_GLIBC_MINOR, f"platform tag {platforms}")

    policy = auditwheel_policy(wheel)
    policy_glibc = re.fullmatch(r"manylinux_2_(\d+)_x86_64", policy)
    problems.check(
        policy_glibc is not None and int(policy_glibc.group(1)) <= MAX_GLIBC_MINOR,
        f"auditwheel policy {policy!r} is newer than manylinux_2_{MAX_GLIBC_MINOR}",
    )

    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        abi_suffix = f"cpython-3{python_tag[3:]}{'t' if abi_tag.endswith('t') else ''}-x86_64-linux-gnu"
        modules = [n for n in names if n.startswith("panelboard/_core.") and n.endswith(".so")]
        problems.check(
            modules == [f"panelboard/_core.{abi_suffix}.so"], f"extension modules {modules} for {abi_tag}"
        )
        for module in modules:
            sections = elf_section_names(archive.read(module))
            leftover = [s for s in sections if s == ".symtab" or s.startswith(".debug")]
            problems.check(not leftover, f"{module} is not stripped: {leftover}")
        for member in ("panelboard/_core.pyi", "panelboard/py.typed", "panelboard/__init__.py"):
            problems.check(member in names, f"missing {member}")
        dist_info = f"panelboard-{version}.dist-info"
        problems.check(f"{dist_info}/licenses/LICENSE" in names, "LICENSE not in the dist-info")
        try:
            meta = parse_metadata(archive.read(f"{dist_info}/METADATA").decode())
        except KeyError:
            problems.append(f"no {dist_info}/METADATA")
        else:
            check_metadata(meta, version, python_tag + ("t" if abi_tag.endswith("t") else ""), problems)
    return tag, policy, problems


def check_sdist(sdist: Path, version: str) -> Problems:
    problems = Problems()
    top = f"panelboard-{version}"
    problems.check(sdist.name == f"{top}.tar.gz", f"{sdist.name} is not {top}.tar.gz (Cargo's version)")
    with tarfile.open(sdist) as archive:
        names = set(archive.getnames())
        for member in SDIST_MEMBERS:
            problems.check(f"{top}/{member}" in names, f"sdist lacks {member}")
        try:
            pkg_info = archive.extractfile(f"{top}/PKG-INFO")
        except KeyError:
            pkg_info = None
        if pkg_info is None:
            problems.append("sdist has no PKG-INFO")
        else:
            check_metadata(parse_metadata(pkg_info.read().decode()), version, None, problems)
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", required=True, help="the crate's version (Cargo.toml)")
    parser.add_argument("artifacts", nargs="+", type=Path)
    args = parser.parse_args()

    failed = False
    print(f"{'artifact':<82} {'tag':<14} {'policy':<24} {'size':>9}")
    for artifact in args.artifacts:
        if artifact.name.endswith(".whl"):
            tag, policy, problems = check_wheel(artifact, args.version)
        else:
            tag, policy, problems = "source", "-", check_sdist(artifact, args.version)
        size = f"{artifact.stat().st_size / 1024:.0f} KiB"
        print(f"{artifact.name:<82} {tag:<14} {policy:<24} {size:>9}")
        for problem in problems:
            print(f"    FAIL: {problem}")
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
