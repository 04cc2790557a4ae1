//! Time source of a registry: the monotonic clock read in Rust, or a `ManualClock` for tests.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::config::finite_seconds;
use super::ffi::monotonic;
use crate::engine::RatePolicy;

/// Time shared between a `ManualClock` and every registry that reads it.
pub struct ManualTime {
    start: f64,
    elapsed_ns: AtomicU64,
}

impl ManualTime {
    fn elapsed_ns(&self) -> u64 {
        self.elapsed_ns.load(Ordering::Acquire)
    }
}

/// The engine works in whole milliseconds since the clock's epoch (the registry's creation for the
/// monotonic clock, `start` for a manual one); a rate rule's window in microseconds, and call
/// timing in nanoseconds, of the same clock.
#[derive(Clone)]
pub enum Clock {
    /// The epoch on the monotonic clock, in whole seconds (see `Clock::monotonic`).
    Monotonic(u64),
    Manual(Arc<ManualTime>),
    /// Absolute `CLOCK_MONOTONIC`: one clock for every process of the host (shared registries).
    Host,
}

impl Clock {
    /// The monotonic clock, with its epoch now: the whole second a second before its reading
    /// now. In whole seconds, and that far back so that every later reading of the clock, exact
    /// or published by the ticker (at most `monotonic::lag_us` behind), is later: a reading since
    /// the epoch does not saturate at zero.
    pub fn monotonic() -> Clock {
        let now_s = monotonic::now_ns_since(0) / 1_000_000_000;
        Clock::Monotonic(now_s.saturating_sub(1))
    }

    /// Nanoseconds since the clock's epoch: how calls are timed against `slow_call_duration`.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        match self {
            Clock::Monotonic(epoch_s) => monotonic::now_ns_since(*epoch_s),
            Clock::Manual(time) => time.elapsed_ns(),
            // The same CLOCK_MONOTONIC with no epoch: every process of the host reads the same time.
            Clock::Host => monotonic::now_ns_since(0),
        }
    }

    /// Microseconds since the clock's epoch: the time a rate rule's window counts calls in.
    #[inline]
    pub fn now_us(&self) -> u64 {
        self.now_ns() / 1000
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ns() / 1_000_000
    }

    /// The width word of a rate rule's window on this clock (`RatePolicy::bucket_word`): on the
    /// monotonic clocks, sized for the ticker's lag when the window is wide enough for it, so that
    /// the closed fast path counts successes with published readings (`window_now_us`); the
    /// exact width on a `ManualClock`, whose readings never lag. Every process of a host computes
    /// the same word for a shared window (one lag, a constant).
    pub fn bucket_word(&self, rate: &RatePolicy) -> u64 {
        rate.bucket_word(self.lag_us())
    }

    /// How far this clock's published readings may lag, in µs: `None` on a `ManualClock` (whose
    /// readings never lag, so its windows keep the exact width) or where there is no ticker.
    pub fn lag_us(&self) -> Option<u64> {
        match self {
            Clock::Manual(_) => None,
            Clock::Monotonic(_) | Clock::Host => monotonic::lag_us(),
        }
    }

    /// Microseconds since the clock's epoch for counting a success in a window: the ticker's
    /// published reading (one load, no clock read) when the window `tolerates_lag`, else exactly
    /// `now_us`. Always inlined: it is the clock read of the closed fast path of a
    /// rate-policy success (seconds and nanoseconds to whole microseconds, less the epoch's).
    #[inline(always)]
    pub fn window_now_us(&self, tolerates_lag: bool) -> u64 {
        let epoch_s = match self {
            Clock::Monotonic(epoch_s) => *epoch_s,
            Clock::Host => 0,
            Clock::Manual(time) => return time.elapsed_ns() / 1000,
        };
        monotonic::window_now_us(tolerates_lag, epoch_s)
    }
}

/// A clock that moves only when told to, shared by the registries given it.
#[pyclass(frozen, module = "panelboard")]
pub struct ManualClock {
    pub(crate) time: Arc<ManualTime>,
}

#[pymethods]
impl ManualClock {
    #[new]
    #[pyo3(signature = (start = None), text_signature = "(start=0.0)")]
    fn new(start: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let start = match start {
            Some(start) => finite_seconds(start, "start", f64::MIN)?,
            None => 0.0,
        };
        Ok(ManualClock {
            time: Arc::new(ManualTime {
                start,
                elapsed_ns: AtomicU64::new(0),
            }),
        })
    }

    /// Moves the clock forward by `seconds` (≥ 0).
    fn advance(&self, seconds: &Bound<'_, PyAny>) -> PyResult<()> {
        let seconds = finite_seconds(seconds, "seconds", 0.0)?;
        let ns = (seconds * 1e9).round();
        if ns >= u64::MAX as f64 {
            return Err(PyValueError::new_err("seconds is too large"));
        }
        let ns = ns as u64;
        let mut current = self.time.elapsed_ns();
        loop {
            let Some(next) = current.checked_add(ns) else {
                return Err(PyValueError::new_err(
                    "seconds would move the clock past its range",
                ));
            };
            match self.time.elapsed_ns.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => current = actual,
            }
        }
    }

    /// The current time in seconds.
    fn now(&self) -> f64 {
        self.time.start + self.time.elapsed_ns() as f64 / 1e9
    }

    fn __repr__(&self) -> String {
        format!("ManualClock(now={})", self.now())
    }
}
