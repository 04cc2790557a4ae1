"""Trip policies (issue 11) on a shared-memory table (issue 12): the sliding window lives in the
table's slot, so the failure rate is the host's, whichever processes recorded the calls."""

from __future__ import annotations

import os

import pytest
from helpers import start_workers, stop_workers

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX shared memory and fork")

# Every process gives the breaker the same rate rule (these options are each process's own).
POLICY = dict(failure_threshold=None, failure_rate=0.5, min_calls=4, window=60.0, reset_timeout=60.0)

# Run in a worker: one call through `name` that fails or succeeds; what happened.
ONE_CALL = """
try:
    registry.call({name!r}, fail if {failing} else ok)
    result = "succeeded"
except Boom:
    result = "failed"
except panelboard.CircuitOpenError:
    result = "rejected"
"""


def window_in(worker, name: str) -> tuple[int, int]:
    return worker.eval(
        f"(lambda m: (m.window_calls, m.window_failures))(registry.breaker({name!r}).metrics())"
    )


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_the_failure_rate_is_judged_over_every_process_calls(method, table):
    workers = start_workers(method, table, 2, **POLICY)
    try:
        first, second = workers
        # 3 calls in the host's window, 1 failed: under min_calls, and under the rate.
        assert first.exec(ONE_CALL.format(name="dep", failing=False)) == "succeeded"
        assert second.exec(ONE_CALL.format(name="dep", failing=True)) == "failed"
        assert first.exec(ONE_CALL.format(name="dep", failing=False)) == "succeeded"
        assert window_in(first, "dep") == window_in(second, "dep") == (3, 1)
        assert second.eval("registry.state('dep').value") == "closed"
        # The 4th call of the host (a failure in the other process) makes 2/4 >= 0.5: it trips,
        # although neither process alone has reached min_calls.
        assert second.exec(ONE_CALL.format(name="dep", failing=True)) == "failed"
        assert [w.eval("registry.state('dep').value") for w in workers] == ["open", "open"]
        assert first.exec(ONE_CALL.format(name="dep", failing=False)) == "rejected"
        # The trip started an empty window for everyone.
        assert window_in(first, "dep") == window_in(second, "dep") == (0, 0)
    finally:
        stop_workers(workers)
