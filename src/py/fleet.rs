//! The private entry points of the Redis sync worker (`panelboard/_redis.py`, issue 13): read a
//! breaker's word and configuration, install the fleet's state into the word, hold or release its
//! fleet gate. The worker is the only caller; the hot path never comes here.
//!
//! Words travel as their raw bits so that an install is a compare-and-swap against exactly the
//! word the worker read: a local change made meanwhile fails the install and is pushed first.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use super::core::{Breaker, BreakerCore};
use super::registry::Registry;
use crate::engine::remote::Target;
use crate::engine::{Mode, Word};

fn mode_index(mode: Mode) -> u8 {
    match mode {
        Mode::Closed => 0,
        Mode::Open => 1,
        Mode::HalfOpen => 2,
        Mode::ForcedOpen => 3,
        Mode::Disabled => 4,
    }
}

/// `(name, core id, Breaker)` for every breaker of the registry; the id tells a breaker deleted and
/// made again under the same name from the one the worker synced before (the worker keeps a
/// handle on the old one, so its id is not reused while it is compared).
#[pyfunction]
#[pyo3(name = "_fleet_breakers", signature = (registry, /))]
pub fn fleet_breakers<'py>(py: Python<'py>, registry: &Registry) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for core in registry.cores(py) {
        let id = std::ptr::from_ref::<BreakerCore>(&core) as usize;
        let name = core.py_name(py)?;
        list.append((name, id, Breaker { core }))?;
    }
    Ok(list)
}

/// `(bits, mode, generation, count, rejected, open_remaining_ms, (config_version,
/// failure_threshold, reset_timeout_ms, half_open_max_calls, success_threshold,
/// probe_timeout_ms or -1, policy), reopens, trip_ms, window)`, where `policy` is the trip-policy
/// options `(failure_rate, slow_call_ns, slow_call_rate, window_us, min_calls, backoff,
/// max_reset_timeout_ms, jitter)` (`None` where unset), which the fleet shares with the five: `count` is the failures of a closed word or
/// the permits out of a half-open one; modes are 0 closed, 1 open, 2 half-open, 3 forced open,
/// 4 disabled. `reopens`: which reopen since the breaker closed the current open period is (0
/// unless open times vary); `trip_ms`: a fresh draw of the open time of a trip from closed (what
/// the fleet opens for when its own counts trip it). `window`: `None` without a rate rule, else
/// `(bucket_ms, min_calls, failure_rate or -1, slow_call_rate or -1, buckets)` where `buckets`
/// lists `(time index, calls, failures, slow)` of the closed word's generation in the local window
/// (empty unless closed): the worker pushes what they gained since its last read.
#[pyfunction]
#[pyo3(name = "_fleet_read", signature = (breaker, /))]
pub fn fleet_read<'py>(py: Python<'py>, breaker: &Breaker) -> PyResult<Bound<'py, PyTuple>> {
    let core: &BreakerCore = &breaker.core;
    let config = core.config.load();
    let word = core.storage.slots().machine_word();
    let limits = &config.limits;
    let policy = &config.policy;
    let count = match word.mode() {
        Mode::HalfOpen => word.in_flight(),
        Mode::Closed => word.failures(),
        _ => 0,
    };
    let clock = &core.hub.get().clock;
    let now = clock.now_ms();
    // The open period this word was given, backed off or jittered (not the base reset_timeout):
    // the worker publishes it as the fleet's open timer with a trip or a probe failure.
    let resolved = core.limits(&config);
    let machine = core.machine(&resolved);
    let remaining = machine.retry_after_ms(word, || now);
    let reopens = match word.mode() {
        Mode::Open => machine.open_period(word).1,
        _ => 0,
    };
    let trip_ms = machine.draw_open_ms(0);
    let probe_timeout: i64 = limits
        .probe_timeout_ms
        .map_or(-1, |ms| i64::try_from(ms).unwrap_or(i64::MAX));
    let window = match (resolved.rate, core.window()) {
        (Some(rate), Some(window)) => {
            let buckets = PyList::empty(py);
            if word.mode() == Mode::Closed {
                let lanes = core.lanes().map_or(&[][..], |lanes| lanes.made());
                for (index, counts) in window.buckets_with(word.generation(), clock.now_us(), lanes)
                {
                    if counts.calls > 0 {
                        buckets.append((index, counts.calls, counts.failures, counts.slow))?;
                    }
                }
            }
            // The fleet counts in buckets of whole milliseconds of the server's clock.
            let bucket_ms = rate.bucket_us().div_ceil(1000).max(1);
            Some((
                bucket_ms,
                rate.min_calls,
                rate.failure_rate.unwrap_or(-1.0),
                rate.slow_call_rate.unwrap_or(-1.0),
                buckets,
            ))
        }
        _ => None,
    };
    (
        word.bits(),
        mode_index(word.mode()),
        word.generation(),
        count,
        core.storage.totals().rejected,
        remaining,
        (
            config.version,
            limits.failure_threshold,
            limits.reset_timeout_ms,
            limits.half_open_max_calls,
            limits.success_threshold,
            probe_timeout,
            (
                policy.failure_rate,
                config.slow_call_ns,
                policy.slow_call_rate,
                policy.window.1,
                policy.min_calls,
                policy.backoff,
                policy.max_reset_timeout.map(|(_, ms)| ms),
                policy.jitter,
            ),
        ),
        reopens,
        trip_ms,
        window,
    )
        .into_pyobject(py)
}

/// Installs a fleet state into the breaker's word if it is still `expected` (its raw bits):
/// `target` 0 closed with `arg` failures, 1 open for `arg` more milliseconds (the fleet's
/// `reopens`-th reopen since it closed: see `Target::Open`), 2 a fresh half-open
/// period with no permit out, 3 forced open, 4 disabled. Announces the transition, if any, like
/// any other. Returns `(installed, bits, generation)` of the word now in place.
#[pyfunction]
#[pyo3(name = "_fleet_install", signature = (breaker, expected, target, arg, reopens = 0, /))]
pub fn fleet_install(
    py: Python<'_>,
    breaker: &Breaker,
    expected: u64,
    target: u8,
    arg: u64,
    reopens: u64,
) -> PyResult<(bool, u64, u32)> {
    let target = match target {
        0 => Target::Closed { failures: arg },
        1 => Target::Open {
            remaining_ms: arg,
            reopens,
        },
        2 => Target::HalfOpen,
        3 => Target::ForcedOpen,
        4 => Target::Disabled,
        _ => return Err(PyValueError::new_err("target must be 0..=4")),
    };
    let core: &BreakerCore = &breaker.core;
    let config = core.config.load();
    let clock = &core.hub.get().clock;
    let limits = core.limits(&config);
    let machine = core.machine(&limits);
    match machine.install(Word::from_bits(expected), target, || clock.now_ms()) {
        Ok(installed) => {
            core.count_opening(installed.transition);
            core.announce(py, installed.transition);
            Ok((true, installed.word.bits(), installed.word.generation()))
        }
        Err(actual) => Ok((false, actual.bits(), actual.generation())),
    }
}

/// Holds the breaker's fleet gate with `leases` probe permits for word generation `generation`,
/// or releases it (`generation` < 0): the breaker then decides alone, as a local one.
#[pyfunction]
#[pyo3(name = "_fleet_gate", signature = (breaker, generation, leases, /))]
pub fn fleet_gate(breaker: &Breaker, generation: i64, leases: u64) {
    let gate = &breaker.core.fleet_gate;
    match u32::try_from(generation) {
        Ok(generation) => gate.hold(generation, leases),
        Err(_) => gate.release(),
    }
}
