"""Memory per breaker (issue 11): at most 512 B per breaker with a rate policy at 100,000 names,
and breakers without one do not pay for its window. Measured as ``benches/policy_bench.py`` does
(the resident-size growth of a fresh process), so that everything a user pays counts: the Python
object, the Rust allocations and the registry's map."""

from __future__ import annotations

import json
import sys

import pytest
from helpers import run_python

NAMES = 100_000
TARGET = 512

MEASURE = """
import gc, json, os, sys
import panelboard

def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

options = json.loads(sys.argv[1])
names = int(sys.argv[2])
registry = panelboard.Registry(**options)
registry.call("warm-up", lambda: None)
keys = [f"svc-{i:07d}" for i in range(names)]
gc.collect()
before = rss()
outcomes = sys.argv[3] if len(sys.argv) > 3 else "success"

def fail():
    raise ValueError

for key in keys:
    registry.call(key, lambda: None)
    if outcomes == "success+failure":
        try:
            registry.call(key, fail)
        except ValueError:
            pass
print((rss() - before) / names)
"""


def bytes_per_breaker(outcomes: str = "success", **options: object) -> float:
    done = run_python("-c", MEASURE, json.dumps(options), str(NAMES), outcomes)
    assert done.returncode == 0, done.stderr
    return float(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_a_rate_policy_breaker_takes_at_most_512_bytes_and_a_plain_one_no_window():
    rate = bytes_per_breaker(failure_rate=0.5)
    alike = bytes_per_breaker(failure_rate=0.5, slow_call_duration=1.0, slow_call_rate=0.5, min_calls=20)
    plain = bytes_per_breaker()
    assert rate <= TARGET, f"{rate:.0f} B per rate-policy breaker at {NAMES:,} names"
    assert alike <= TARGET, f"{alike:.0f} B per breaker with the rate and slow-call rules"
    # The window (264 B) is only made for a rate rule: a plain breaker pays none of it.
    assert plain <= rate - 250, f"plain {plain:.0f} B, rate policy {rate:.0f} B"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_a_breaker_one_thread_calls_with_successes_and_failures_stays_compact():
    """The call counters stay one inline block while a single thread counts (striped, one cache
    line per core, once a second thread does). The closed fast path tells threads apart by their
    CPython thread state, the other paths by a Rust thread number: a thread counting a success and
    a failure was taken for two, and every breaker that had seen both carried stripes (bug 39)."""
    plain = bytes_per_breaker(failure_threshold=1000)
    mixed = bytes_per_breaker("success+failure", failure_threshold=1000)
    assert mixed <= plain + 64, f"{mixed:.0f} B with a success and a failure, {plain:.0f} B without"
