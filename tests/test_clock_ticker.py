"""The ticker thread (issue 11, `src/py/ffi/ticker.rs`): on the monotonic clock the closed fast path
of a rate-policy success takes its time from a reading a thread publishes every millisecond. The
thread exists only while successes use it, a process without a rate rule never has one, and a
forked child, which has no ticker, counts with its own time (the fork handler clears the parent's
reading, which no ticker of the child's would keep fresh)."""

from __future__ import annotations

import os
import sys
import time

import pytest
from helpers import fork_and_check, run_python, wait_until
from panelboard import Registry

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/task")

# The names of this process's threads, as the kernel knows them (a Rust thread is not in
# `threading.enumerate()`).
THREADS = """
import os, sys, time

def threads():
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as fh:
                names.append(fh.read().strip())
        except FileNotFoundError:
            pass  # a thread that just exited
    return names

def ticking():
    return "panelboard-tick" in threads()

def wait(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
"""


def thread_names() -> list[str]:
    namespace: dict[str, object] = {}
    exec(THREADS, namespace)
    return namespace["threads"]()  # type: ignore[operator,no-any-return]


def test_the_ticker_runs_only_while_rate_rule_successes_use_it():
    script = (
        THREADS
        + """
import panelboard
registry = panelboard.Registry()
plain = registry.breaker("plain")
for _ in range(1000):
    plain.call(lambda: None)
assert not ticking(), "a breaker without a rate rule starts no ticker"
rate = registry.breaker("rate", failure_rate=0.5, window=10.0)
rate.call(lambda: None)
assert wait(ticking), "a rate-rule success starts the ticker"
assert wait(lambda: not ticking()), "an idle second stops it"
for _ in range(100):
    rate.call(lambda: None)
assert wait(ticking), "the next success starts it again"
assert rate.metrics().window_calls == 101
print("ok")
"""
    )
    done = run_python("-c", script)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_a_narrow_window_or_a_manual_clock_reads_the_clock_exactly_and_starts_no_ticker():
    """Only a window wide enough for the ticker's lag (about 0.2 s and up) counts with its readings."""
    script = (
        THREADS
        + """
import panelboard
registry = panelboard.Registry()
narrow = registry.breaker("narrow", failure_rate=0.5, window=0.05)
manual = panelboard.Registry(clock=panelboard.ManualClock()).breaker("manual", failure_rate=0.5)
for _ in range(1000):
    narrow.call(lambda: None)
    manual.call(lambda: None)
assert not ticking()
assert manual.metrics().window_calls == 1000
print("ok")
"""
    )
    done = run_python("-c", script)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is not available here")
def test_a_forked_child_counts_its_successes_at_its_own_time():
    """The parent's ticker publishes when the process forks; the child has no ticker. Without the
    fork handler the child would count every success at the reading frozen at the fork: once a
    window has passed, none of them would show in its window."""
    registry = Registry()
    b = registry.breaker("x", failure_rate=0.5, min_calls=1000, window=0.5)
    b.call(lambda: None)  # starts the ticker
    wait_until(lambda: "panelboard-tick" in thread_names(), what="the ticker thread")
    time.sleep(0.05)  # fifty publications
    b.call(lambda: None)

    def child():
        time.sleep(1.2)  # more than 1.1 windows after the fork
        for _ in range(5):
            b.call(lambda: None)
        assert b.metrics().window_calls == 5

    fork_and_check(child)
