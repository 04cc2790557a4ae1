"""Where the time goes when two threads share one handle on free-threaded CPython: a perf profile.

Runs four workloads under ``perf record`` on the free-threaded interpreter it is started with, on
1 and 2 threads, and writes the hottest functions of each to ``benches/ft_profile.md``:

- ``shared handle``: every thread calls ``b.call(f)`` on one ``Breaker`` object made by the main
  thread;
- ``handle per thread``: each thread calls ``registry.breaker("svc")`` once (the same breaker),
  then ``b.call(f)``;
- ``Registry.call, a name per thread``: each thread calls ``registry.call(own_name, f)`` on one
  shared ``Registry`` object.

Throughput, with a control that uses no panelboard (a ``dict`` shared by the threads against one
per thread), is measured by ``benches/ft_scaling.py``; this script shows where the time goes.

Run: ``.venv-ft/bin/python benches/ft_profile.py`` (needs ``perf``; Linux only).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

CALLS = 3_000_000
TOP = 6

WORKLOADS = {
    "shared handle": """
        r = panelboard.Registry(); shared = r.breaker("svc")
        def f(): return 1
        def work(i):
            b = shared
            for _ in range(CALLS): b.call(f)
    """,
    "handle per thread": """
        r = panelboard.Registry()
        def f(): return 1
        def work(i):
            b = r.breaker("svc")
            for _ in range(CALLS): b.call(f)
    """,
    "Registry.call, a name per thread": """
        r = panelboard.Registry()
        def work(i):
            name, reg = f"svc-{i}", r
            def g(): return 1
            for _ in range(CALLS): reg.call(name, g)
    """,
}

RUNNER = """
import sys, threading, panelboard
CALLS = {calls}
{body}
threads = [threading.Thread(target=work, args=(i,)) for i in range(int(sys.argv[1]))]
for t in threads: t.start()
for t in threads: t.join()
"""


def profile(body: str, threads: int, workdir: Path) -> list[tuple[str, str]]:
    """The hottest functions of one run under `perf record`."""
    script = workdir / "workload.py"
    script.write_text(RUNNER.format(calls=CALLS, body=textwrap.dedent(body)))
    data = workdir / "perf.data"
    subprocess.run(
        ["perf", "record", "-F", "999", "-o", str(data), sys.executable, str(script), str(threads)],
        check=True,
        capture_output=True,
    )
    report = subprocess.run(
        ["perf", "report", "-i", str(data), "--no-children", "--sort", "symbol", "--stdio"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = []
    for line in report.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].endswith("%") and parts[1] == "[.]":
            rows.append((parts[0], parts[2]))
        if len(rows) == TOP:
            break
    return rows


def main() -> None:
    if getattr(sys, "_is_gil_enabled", lambda: True)():
        sys.exit("run this with a free-threaded interpreter (python3.13t)")
    lines = [
        f"Python {sys.version.split()[0]}, GIL disabled, {os.cpu_count()} CPUs; {CALLS:,} calls per "
        f"thread; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; `perf record -F 999`, "
        "share of samples by function.",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, body in WORKLOADS.items():
            lines.append(f"## {name}")
            lines.append("")
            results = {n: profile(body, n, Path(tmp)) for n in (1, 2)}
            lines.append("| 1 thread | | 2 threads | |")
            lines.append("|---|---|---|---|")
            for a, b in zip(results[1], results[2]):
                lines.append(f"| {a[0]} | `{a[1]}` | {b[0]} | `{b[1]}` |")
            lines.append("")
    text = "\n".join(lines)
    print(text)
    (Path(__file__).parent / "ft_profile.md").write_text(
        "# Free-threaded profile: a shared Python object, not the breaker, is what stops scaling\n\n"
        "Written by `benches/ft_profile.py` (see its docstring for the workloads).\n\n" + text
    )


if __name__ == "__main__":
    main()
