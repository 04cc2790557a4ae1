"""``python -m panelboard inspect NAME [--json]``: every breaker of a shared table (issue 12).

Reads the table through ``_core.shared_table_rows``, which attaches read-only in effect (it creates
nothing and changes nothing), so inspecting a live server's table is safe. Prints one line per
breaker: its name, state, consecutive failures, counters and the seconds until an open breaker
half-opens; then, after a blank line, one line per breaker with the numeric options every process
follows (the table's); ``--json`` prints the rows as a JSON list instead (options under
``"options"``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

USAGE = "usage: python -m panelboard inspect NAME [--json]"

COLUMNS = (
    ("name", "NAME"),
    ("state", "STATE"),
    ("consecutive_failures", "CONSEC"),
    ("calls", "CALLS"),
    ("successes", "SUCCESSES"),
    ("failures", "FAILURES"),
    ("ignored", "IGNORED"),
    ("rejected", "REJECTED"),
    ("times_opened", "OPENED"),
    ("retry_after", "RETRY-AFTER"),
)


# The numeric options of a shared breaker, in the table (each row's "options").
OPTIONS = (
    "failure_threshold",
    "reset_timeout",
    "half_open_max_calls",
    "success_threshold",
    "probe_timeout",
    "failure_rate",
    "slow_call_duration",
    "slow_call_rate",
    "window",
    "min_calls",
    "backoff",
    "max_reset_timeout",
    "jitter",
)
DURATIONS = {"reset_timeout", "probe_timeout", "slow_call_duration", "window", "max_reset_timeout"}


def shown_name(name: str) -> str:
    """The name as typed, or its repr when it holds characters a terminal would not show as such
    (a newline, a NUL, a lone surrogate), so that each row stays one line and names stay distinct."""
    if name.isprintable() and name.strip() == name and name:
        try:
            name.encode(sys.stdout.encoding or "utf-8")
            return name
        except UnicodeEncodeError:
            pass
    return ascii(name)


def cell(key: str, row: dict[str, Any]) -> str:
    value = row[key]
    if key == "name":
        return shown_name(value)
    if key == "retry_after":
        return f"{value:.3f}s"
    return str(value)


def option_cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in DURATIONS:
        return f"{value:g}s"
    return f"{value:g}" if isinstance(value, float) else str(value)


def aligned(lines: list[list[str]]) -> list[str]:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return ["  ".join(value.ljust(width) for value, width in zip(line, widths)).rstrip() for line in lines]


def render(table: str, rows: Sequence[dict[str, Any]]) -> str:
    ordered = sorted(rows, key=lambda r: r["name"])
    lines = [[title for _, title in COLUMNS]]
    lines += [[cell(key, row) for key, _ in COLUMNS] for row in ordered]
    text = [f"table {table}: {len(rows)} breaker{'' if len(rows) == 1 else 's'}"]
    text += aligned(lines)
    if ordered:
        options = [["NAME", *OPTIONS]]
        options += [
            [cell("name", row), *(option_cell(key, row["options"][key]) for key in OPTIONS)]
            for row in ordered
        ]
        text.append("")
        text += aligned(options)
    return "\n".join(text)


def run(argv: Sequence[str]) -> int:
    args = [a for a in argv if a != "--json"]
    if len(args) != 1:
        print(USAGE, file=sys.stderr)
        return 2
    table = args[0]
    from ._core import shared_table_rows

    try:
        rows = shared_table_rows(table)
    except FileNotFoundError:
        print(f"panelboard inspect: no shared table named {table!r}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as err:
        print(f"panelboard inspect: {err}", file=sys.stderr)
        return 1
    if "--json" in argv:
        print(json.dumps(rows, ensure_ascii=True, indent=1))
    else:
        print(render(table, rows))
    return 0
