"""Issue 8, item 6: a decorated sync function is pickled and copied by reference to its
module-level name, as functions are, so ``multiprocessing`` and ``ProcessPoolExecutor`` can run it
(each process has its own registry: the breaker is the one the child's import decorated it with)."""

from __future__ import annotations

import copy
import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor

import panelboard
import pytest

guard = panelboard.Registry().breaker("pickled")


@guard
def double(x):
    return 2 * x


@guard
async def adouble(x):
    return 2 * x


class Service:
    @guard
    def triple(self, x):
        return 3 * x


def calls_made_here(x):
    """Runs the guarded function in whichever process this is; reports that process's count."""
    return double(x), double.breaker.metrics().calls


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_guarded_functions_pickle_by_reference(protocol):
    for fn in (double, adouble, Service.triple):
        assert pickle.loads(pickle.dumps(fn, protocol)) is fn
    method = pickle.loads(pickle.dumps(Service().triple, protocol))
    assert method(2) == 6


def test_copy_and_deepcopy_return_the_same_guarded_function():
    assert copy.copy(double) is double
    assert copy.deepcopy(double) is double
    assert copy.deepcopy({"f": double})["f"] is double


def test_a_local_function_cannot_be_pickled_like_a_local_plain_function():
    @guard
    def local():
        return 1

    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(local)
    assert copy.copy(local) is local


def test_a_callable_without_a_qualname_gives_a_clear_type_error():
    class Callable:
        def __call__(self):
            return 1

    guarded = guard(Callable())
    with pytest.raises(TypeError, match="pickle"):
        pickle.dumps(guarded)


@pytest.mark.parametrize("method", ["spawn", "fork", "forkserver"])
def test_process_pool_runs_a_guarded_function(method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} on this platform")
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        assert list(pool.map(double, [1, 2, 3])) == [2, 4, 6]
        value, calls = pool.submit(calls_made_here, 5).result(timeout=60)
    assert value == 10
    assert calls >= 1, "the child counted its call on its own breaker"
