#!/usr/bin/env python3
"""Instructions per call of every panelboard entry point, counted by callgrind (issue 10, item 1).

``make bench-insns`` runs this for CPython 3.11 (.venv) and free-threaded 3.13t (.venv-ft) and
writes ``benches/insns.md``; ``make bench-insns-baseline`` also rewrites ``benches/insns-baseline.json``;
``make bench-insns-check`` (CI) counts with fewer iterations and fails when an entry point costs more
than 10% above that baseline.

Method: each entry point runs in a loop in ``benches/insns_loop.py`` under
``valgrind --tool=callgrind --collect-atstart=yes --separate-threads=yes`` (the main thread's
count), once with N1 and once with N2 iterations (PYTHONHASHSEED=0, no bytecode written). Instructions per iteration = (total at N2 - total at N1)
/ (N2 - N1): start-up, imports, set-up and warm-up are the same in both runs and cancel out. The
counts are deterministic for a given interpreter binary and extension build, whatever else the
machine is doing, which is what makes a CI threshold on them possible; they are blind to cache
misses and to contention between threads.

The references run in the same loop: a bare ``f()`` call, ``with threading.Lock():``, a Python
raise and catch of ``RuntimeError("open", 1.0)``, and a minimal C guard (``benches/cguard.c``,
compiled here with the interpreter's headers: one atomic load, ``PyObject_CallNoArgs``, a
conditional store).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHES = ROOT / "benches"
LOOP = BENCHES / "insns_loop.py"
CGUARD_C = BENCHES / "cguard.c"
DEFAULT_MD = BENCHES / "insns.md"
DEFAULT_BASELINE = BENCHES / "insns-baseline.json"
REGENERATE = "make bench-insns-baseline"
# "Not more expensive than the baseline" allows this much, the run-to-run jitter of the counts.
BASELINE_SLACK = 0.005

# (entry, label, reference entry, how it is compared, the target)
#   comparisons: "ratio" = count / reference's count; "added" = what it adds over a bare call /
#   what the reference adds over it; "plus" = count - reference's count.
#   targets: ("max", x) = the comparison is at most x; "baseline" = not above the baseline file.
ROWS: list[tuple[str, str, str | None, str | None, tuple[str, float] | str | None]] = [
    ("bare", "bare `f()` (reference)", None, None, None),
    ("lock", "`with threading.Lock():` (reference)", None, None, None),
    ("lock_reused", "`with lock:`, one `threading.Lock()` made before the loop", None, None, None),
    ("raise_catch", 'raise + catch `RuntimeError("open", 1.0)` (reference)', None, None, None),
    ("cguard", "C guard `guard(f)` (reference)", "bare", "added", None),
    ("handle_call", "handle `b.call(f)`", "cguard", "added", ("max", 1.5)),
    ("rate_call", "handle `b.call(f)`, rate policy (issue 11)", "handle_call", "ratio", ("max", 1.15)),
    ("rate_slow_call", "handle `b.call(f)`, rate and slow-call policy", "handle_call", "ratio", None),
    ("decorated", "decorated function `g()`", "handle_call", "ratio", "baseline"),
    ("registry_call", "`Registry.call(name, f)`", "handle_call", "plus", ("max", 150)),
    ("module_call", "`panelboard.call(name, f)`", "registry_call", "plus", None),
    ("with_block", "`with b: pass`", "lock", "ratio", ("max", 1.3)),
    ("permit_success", "`b.try_acquire().success()`", "handle_call", "ratio", "baseline"),
    ("try_acquire_reject", "`b.try_acquire()` rejected (`None`)", "bare", "ratio", "baseline"),
    ("reject_exc", "rejection by `CircuitOpenError` (raise + catch)", "raise_catch", "ratio", ("max", 1.25)),
    ("bare_await", "bare `await af()` (reference)", None, None, None),
    ("acall", "`await b.acall(af)`", "bare_await", "ratio", None),
    ("decorated_async", "decorated `async def`", "bare_await", "ratio", None),
    ("async_with", "`async with b: pass`", "bare_await", "ratio", None),
]
ENTRIES = [row[0] for row in ROWS]
# How the comparison column names the reference.
SHORT = {
    "bare": "bare f()",
    "lock": "Lock()",
    "lock_reused": "reused lock",
    "raise_catch": "raise/catch",
    "cguard": "C guard",
    "handle_call": "handle",
    "registry_call": "Registry.call",
    "bare_await": "bare af()",
}
# Comparisons shown next to the one the target is about.
ALSO = {"with_block": [("lock_reused", "ratio")]}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def interpreter_info(python: str) -> dict[str, str]:
    code = (
        "import json, sys, sysconfig; print(json.dumps({"
        "'version': sys.version.split()[0], "
        "'label': '%d.%d' % sys.version_info[:2] + ('t' if sysconfig.get_config_var('Py_GIL_DISABLED') else ''), "
        "'include': sysconfig.get_paths()['include'], "
        "'ext_suffix': sysconfig.get_config_var('EXT_SUFFIX'), "
        "'cc': sysconfig.get_config_var('CC') or 'cc'}))"
    )
    return json.loads(subprocess.check_output([python, "-c", code], text=True))


def build_cguard(info: dict[str, str], into: Path) -> None:
    """Compiles benches/cguard.c into an extension module for this interpreter."""
    target = into / f"_insns_cguard{info['ext_suffix']}"
    cc = shutil.which("gcc") or shutil.which("cc") or info["cc"].split()[0]
    cmd = [cc, "-O2", "-shared", "-fPIC", f"-I{info['include']}", str(CGUARD_C), "-o", str(target)]
    subprocess.run(cmd, check=True)


def count_total(valgrind: str, python: str, entry: str, n: int, env: dict[str, str], tmp: Path) -> int:
    out = tmp / f"callgrind.{entry}.{n}.out"
    cmd = [
        valgrind,
        "--tool=callgrind",
        "--collect-atstart=yes",
        # One file per thread, of which the main thread's (the loop's) is counted: a rate-policy
        # breaker's ticker thread (src/py/ffi/ticker.rs) runs instructions by the millisecond, as
        # many as the run takes time, not per call.
        "--separate-threads=yes",
        f"--callgrind-out-file={out}",
        python,
        str(LOOP),
        entry,
        str(n),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"callgrind failed on {entry} (n={n}):\n{proc.stderr[-3000:]}")
    files = sorted(tmp.glob(f"{out.name}*"))
    main = [f for f in files if f.name.endswith("-01")] or files
    text = main[0].read_text()
    for file in files:
        file.unlink()
    m = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.MULTILINE)
    if not m:
        raise RuntimeError(f"no summary line in the callgrind output for {entry}")
    return int(m.group(1))


def measure(python: str, n1: int, n2: int, entries: list[str], jobs: int) -> dict[str, float]:
    valgrind = shutil.which("valgrind")
    if not valgrind:
        sys.exit("insns: valgrind not found (make bench-insns installs it with apt-get)")
    info = interpreter_info(python)
    with tempfile.TemporaryDirectory(prefix="insns-") as tmp_name:
        # The C guard's directory is on sys.path, so callgrind writes its files elsewhere: a
        # directory the import system lists must not change between the two counted runs.
        modules, tmp = Path(tmp_name) / "modules", Path(tmp_name) / "out"
        modules.mkdir()
        tmp.mkdir()
        build_cguard(info, modules)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/"),
            "PYTHONHASHSEED": "0",
            # A PYTHONPATH given to this script comes after the C guard's directory: it can put
            # another build of panelboard ahead of the installed one, to compare two builds.
            "PYTHONPATH": os.pathsep.join(filter(None, [str(modules), os.environ.get("PYTHONPATH")])),
        }
        # One plain run of every entry first: it checks the loops work and writes the bytecode
        # caches, so that both counted runs import from the same caches (they write none).
        for entry in entries:
            subprocess.run([python, str(LOOP), entry, "2"], env=env, check=True, timeout=300)
        env["PYTHONDONTWRITEBYTECODE"] = "1"

        def one(entry: str) -> tuple[str, float]:
            t1 = count_total(valgrind, python, entry, n1, env, tmp)
            t2 = count_total(valgrind, python, entry, n2, env, tmp)
            per = round((t2 - t1) / (n2 - n1), 1)
            log(f"[insns] {info['label']} {entry}: {per:,.1f}")
            return entry, per

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            return dict(pool.map(one, entries))


# Report ------------------------------------------------------------------------------------------


def compare(
    counts: dict[str, float], entry: str, ref: str | None, how: str | None
) -> tuple[str, float | None]:
    if ref is None or how is None or ref not in counts or entry not in counts:
        return "", None
    x, r = counts[entry], counts[ref]
    if how == "ratio":
        value = x / r
        return f"{value:.2f}x {SHORT[ref]}", value
    if how == "plus":
        value = x - r
        return f"{SHORT[ref]} {value:+,.0f}", value
    if how == "added":
        bare = counts["bare"]
        if ref == "bare":
            return f"adds {x - bare:,.0f} over a bare f()", None
        value = (x - bare) / (r - bare)
        return f"adds {x - bare:,.0f} = {value:.2f}x what the {SHORT[ref]} adds ({r - bare:,.0f})", value
    raise ValueError(how)


def target_text(target, value: float | None, entry: str, count: float, baseline: dict[str, float] | None):
    if target is None:
        return "", ""
    if target == "baseline":
        if not baseline or entry not in baseline:
            return "not above baseline", "?"
        # Within the counts' own jitter (3.13t moves by a few tenths of a percent run to run).
        met = count <= baseline[entry] * (1 + BASELINE_SLACK)
        return f"≤ baseline {baseline[entry]:,.0f}", "yes" if met else "**no**"
    kind, limit = target
    if value is None:
        return "", "?"
    shown = f"≤ {limit:g}x" if isinstance(limit, float) and limit < 10 else f"≤ +{limit:g}"
    return shown, "yes" if value <= limit else "**no**"


def table(counts: dict[str, float], baseline: dict[str, float] | None) -> list[str]:
    lines = [
        "| entry point | instructions/iter | compared with | target (issues 10, 11) | met | baseline | change |",
        "|---|---:|---|---|---|---:|---:|",
    ]
    for entry, label, ref, how, target in ROWS:
        if entry not in counts:
            continue
        count = counts[entry]
        text, value = compare(counts, entry, ref, how)
        for other, other_how in ALSO.get(entry, []):
            other_text, _ = compare(counts, entry, other, other_how)
            text = f"{text}; {other_text}" if other_text else text
        tgt, met = target_text(target, value, entry, count, baseline)
        base = baseline.get(entry) if baseline else None
        base_text = f"{base:,.0f}" if base else ""
        change = f"{(count - base) / base:+.1%}" if base else ""
        lines.append(f"| {label} | {count:,.0f} | {text} | {tgt} | {met} | {base_text} | {change} |")
    return lines


def source_state() -> str:
    """The commit measured, and whether the bindings' sources differed from it (taken before the
    measurement starts: the extension was built from what is there then)."""
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "src", "python", "Cargo.toml", "Cargo.lock"],
        capture_output=True,
        text=True,
    )
    state = commit.stdout.strip() or "?"
    return state + (" with uncommitted changes to the sources" if dirty.stdout.strip() else "")


def write_md(
    path: Path,
    results: dict[str, dict],
    baseline: dict | None,
    n1: int,
    n2: int,
    command: str,
    source: str,
) -> None:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Instructions per call (callgrind)",
        "",
        f"`{command}` on {now}, commit {source}, "
        f"{platform.machine()} Linux {platform.release()}, valgrind {valgrind_version()}. "
        "Generated by `benches/insns.py`; do not edit by hand.",
        "",
        f"Each entry point runs in a loop (`benches/insns_loop.py`) under `valgrind --tool=callgrind "
        f"--collect-atstart=yes` with N1 = {n1:,} and N2 = {n2:,} iterations (after a warm-up, garbage "
        "collector off, `PYTHONHASHSEED=0`); instructions per iteration = (total at N2 − total at N1) / "
        "(N2 − N1), so start-up and set-up cancel out. Every loop body is the user's code with its objects in "
        "local variables, loop overhead included (the bare `f()` row is that overhead plus a Python call). "
        "Coroutines are driven by `coro.send(None)` until `StopIteration`, with no event loop. The counts "
        "are repeatable for one interpreter binary and extension build (to a fraction of an instruction; "
        "the environment, such as the length of its paths, can move them by about 1%) and unaffected by other "
        'load on the machine, but blind to cache misses and contention. "added" is the count minus the bare '
        "`f()` loop's.",
        "",
        "Targets are issue 10's (issue 11's for the rate policy), stated for CPython 3.11 (shown for 3.13t for information); "
        f'"≤ baseline" allows {BASELINE_SLACK:.1%}, the counts\' jitter. "baseline" is '
        f"`benches/insns-baseline.json` (regenerate with `{REGENERATE}`); CI (`make bench-insns-check`) fails "
        "when an entry point is more than 10% above it.",
        "",
    ]
    for label, result in results.items():
        base = (baseline or {}).get("interpreters", {}).get(label, {})
        lines += [f"## CPython {label} ({result['version']})", ""]
        lines += table(result["insns"], base.get("insns"))
        lines.append("")
    path.write_text("\n".join(lines))
    log(f"[insns] wrote {path}")


def valgrind_version() -> str:
    valgrind = shutil.which("valgrind")
    if not valgrind:
        return "?"
    out = subprocess.run([valgrind, "--version"], capture_output=True, text=True).stdout.strip()
    return out.removeprefix("valgrind-")


def check(results: dict[str, dict], baseline: dict, tolerance: float) -> bool:
    ok = True
    for label, result in results.items():
        base = baseline.get("interpreters", {}).get(label)
        if base is None:
            log(f"[insns-check] no baseline for CPython {label}: run `{REGENERATE}`")
            ok = False
            continue
        if base.get("version") != result["version"]:
            log(
                f"[insns-check] note: the baseline was taken on CPython {base.get('version')}, this is "
                f"{result['version']}: counts may differ by the interpreter alone"
            )
        for entry, count in result["insns"].items():
            ref = base["insns"].get(entry)
            if ref is None:
                log(f"[insns-check] {label} {entry}: {count:,.0f} (not in the baseline)")
                continue
            change = (count - ref) / ref
            verdict = "ok"
            if change > tolerance:
                verdict = f"FAIL: more than {tolerance:.0%} above the baseline"
                ok = False
            elif change < -tolerance:
                verdict = f"ok, {-change:.0%} cheaper: consider `{REGENERATE}`"
            log(
                f"[insns-check] {label} {entry}: {count:,.0f} vs baseline {ref:,.0f} ({change:+.1%}) {verdict}"
            )
    return ok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--python",
        action="append",
        required=True,
        metavar="PATH",
        help="an interpreter to measure, e.g. .venv/bin/python (repeatable); labelled 3.11, 3.13t ...",
    )
    p.add_argument("--n1", type=int, default=2000)
    p.add_argument("--n2", type=int, default=6000)
    p.add_argument("--entries", help="comma-separated subset of: " + ",".join(ENTRIES))
    p.add_argument("--jobs", type=int, default=1, help="valgrind runs at once")
    p.add_argument("--md", type=Path, help="write the report here (benches/insns.md)")
    p.add_argument("--baseline", type=Path, default=DEFAULT_BASELINE)
    p.add_argument("--write-baseline", action="store_true", help="rewrite the baseline with these counts")
    p.add_argument("--check", action="store_true", help="fail if a count is above the baseline + tolerance")
    p.add_argument("--tolerance", type=float, default=0.10)
    p.add_argument("--command", default="", help="the command shown in the report")
    args = p.parse_args()

    entries = args.entries.split(",") if args.entries else ENTRIES
    unknown = set(entries) - set(ENTRIES)
    if unknown:
        p.error(f"unknown entries: {sorted(unknown)}")
    if args.n2 <= args.n1:
        p.error("--n2 must be larger than --n1")

    source = source_state()
    results: dict[str, dict] = {}
    for python in args.python:
        info = interpreter_info(python)
        label, version = info["label"], info["version"]
        log(f"[insns] CPython {label} ({version}): {python}, N1={args.n1}, N2={args.n2}")
        results[label] = {"version": version, "insns": measure(python, args.n1, args.n2, entries, args.jobs)}

    baseline = json.loads(args.baseline.read_text()) if args.baseline.exists() else None
    # The report compares with the baseline as it was before this run rewrote it, if it did: the
    # "change" column then shows what moved since the last regeneration.
    previous = baseline
    if args.write_baseline:
        merged = baseline if baseline else {}
        merged["comment"] = (
            "Instructions per iteration of each entry point (benches/insns.py). Regenerate with "
            f"`{REGENERATE}`; `make bench-insns-check` fails when a count rises more than 10% above it."
        )
        merged["n1"], merged["n2"] = args.n1, args.n2
        merged.setdefault("interpreters", {})
        for label, result in results.items():
            merged["interpreters"][label] = result
        args.baseline.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
        log(f"[insns] wrote {args.baseline}")
        baseline = merged
    if args.md:
        write_md(
            args.md,
            results,
            previous or baseline,
            args.n1,
            args.n2,
            args.command or "benches/insns.py",
            source,
        )
    if args.check:
        if baseline is None:
            sys.exit(f"insns: no baseline at {args.baseline}: run `{REGENERATE}`")
        if not check(results, baseline, args.tolerance):
            sys.exit("insns: an entry point got more expensive than the baseline allows (see above)")
        log("[insns-check] every entry point is within the baseline")


if __name__ == "__main__":
    main()
