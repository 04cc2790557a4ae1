"""panelboard runs in the main interpreter only, and refuses, with a clear `ImportError`, to be
imported in any other (issue 8, item 3).

Its native part keeps process-wide state (type objects, the `State` members, the asyncio helpers):
a subinterpreter that imported it first used to leave the main interpreter with the objects of a
destroyed interpreter (`state(x) is State.CLOSED` was False, `@breaker` raised
`NameError: isinstance`, listener errors were lost). Each case runs in a fresh process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PREAMBLE = '''
import logging, sys

def import_in_subinterpreter(config):
    """Imports panelboard in a new subinterpreter; returns the error text, or None if it worked."""
    code = "import panelboard"
    if sys.version_info >= (3, 13):
        import _interpreters
        interp = _interpreters.create(config)
        try:
            failure = _interpreters.run_string(interp, code)
            return None if failure is None else failure.formatted
        finally:
            _interpreters.destroy(interp)
    import _xxsubinterpreters as interpreters
    interp = interpreters.create()
    try:
        interpreters.run_string(interp, code)
        return None
    except interpreters.RunFailedError as e:
        return str(e)
    finally:
        interpreters.destroy(interp)

def check_refused(config):
    error = import_in_subinterpreter(config)
    assert error is not None, "panelboard was imported in a subinterpreter"
    assert "ImportError" in error and "interpreter" in error, error

def check_main_interpreter_works():
    import panelboard
    from panelboard import Registry, State

    assert panelboard.state("never-seen") is State.CLOSED

    @panelboard.breaker("decorated")
    def twice(x):
        return 2 * x

    assert twice(21) == 42
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("panelboard").addHandler(handler)
    registry = Registry(failure_threshold=1)

    @registry.on_state_change
    def broken(name, old, new):
        raise RuntimeError("listener failed")

    try:
        registry.call("x", lambda: 1 / 0)
    except ZeroDivisionError:
        pass
    assert registry.state("x") is State.OPEN
    # (Transitions are logged there too: only the listener's error carries an exception.)
    errors = [r.exc_info[1].args for r in records if r.exc_info]
    assert errors == [("listener failed",)], records
'''

CONFIGS = ["legacy", "isolated"] if sys.version_info >= (3, 13) else ["default"]


def run(code: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", PREAMBLE + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), (
        f"exit status {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    )


@pytest.mark.parametrize("config", CONFIGS)
def test_a_subinterpreter_importing_first_is_refused_and_the_main_interpreter_works(config):
    run(
        f"""
        check_refused({config!r})
        check_refused({config!r})  # and again: the first refusal left nothing half-made behind
        check_main_interpreter_works()
        print("ok")
        """
    )


@pytest.mark.parametrize("config", CONFIGS)
def test_a_subinterpreter_importing_after_the_main_interpreter_is_refused(config):
    run(
        f"""
        import panelboard
        registry = panelboard.Registry()
        registry.force_open("kept")
        check_refused({config!r})
        assert registry.state("kept") is panelboard.State.FORCED_OPEN
        check_main_interpreter_works()
        print("ok")
        """
    )
