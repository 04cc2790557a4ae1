//! The monotonic clock read with one `clock_gettime(CLOCK_MONOTONIC)`: the clock `std::time::Instant`
//! reads on Unix, without the checked `Timespec` arithmetic that `Instant::elapsed` adds around it.
//! A breaker with a rate rule reads the clock for every success it counts in its window, so the
//! reading is on that closed fast path (issue 11: about 70 of the 90 instructions std spends).
//!
//! On Linux that path reads `CLOCK_MONOTONIC_COARSE` instead when the window allows it
//! ([`coarse_lag_ns`]): the same clock as of the last timer tick, which the vDSO returns without
//! reading the time-stamp counter (`rdtscp`, the costliest instruction of a precise reading).

use std::sync::OnceLock;

/// Nanoseconds of `clock` (an arbitrary, fixed origin; never goes back).
#[cfg(unix)]
#[inline]
fn read(clock: libc::clockid_t) -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable `timespec` that outlives the call, and clock_gettime writes
    // nothing else; the clocks read here exist on every Unix this builds for (CLOCK_MONOTONIC_COARSE
    // only on Linux) (it cannot fail with a valid pointer, and if it did `now` would stay zero: time
    // would stand still, not break).
    unsafe {
        libc::clock_gettime(clock, &mut now);
    }
    // A monotonic clock's seconds and nanoseconds are never negative.
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}

/// Nanoseconds on the monotonic clock (an arbitrary, fixed origin; never goes back).
#[cfg(unix)]
#[inline]
pub fn now_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC)
}

/// Nanoseconds on the monotonic clock as of its last tick (Linux's `CLOCK_MONOTONIC_COARSE`: the
/// same origin as [`now_ns`], behind it by less than [`coarse_lag_ns`]); elsewhere, [`now_ns`].
#[inline]
pub fn coarse_now_ns() -> u64 {
    #[cfg(target_os = "linux")]
    {
        read(libc::CLOCK_MONOTONIC_COARSE)
    }
    #[cfg(not(target_os = "linux"))]
    {
        now_ns()
    }
}

/// How far behind the precise clock a [`coarse_now_ns`] reading may be: twice the coarse clock's
/// resolution (`clock_getres`, one timer tick: 1 to 10 ms), which leaves a tick's margin for a
/// tick handled late. `None` where there is no coarse clock, or its resolution is unknown or
/// above 10 ms (then nothing reads it).
pub fn coarse_lag_ns() -> Option<u64> {
    static LAG: OnceLock<Option<u64>> = OnceLock::new();
    *LAG.get_or_init(|| coarse_resolution_ns().map(|ns| ns.saturating_mul(2)))
}

#[cfg(target_os = "linux")]
fn coarse_resolution_ns() -> Option<u64> {
    let mut resolution = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `resolution` is a valid, writable `timespec` that outlives the call; clock_getres
    // writes nothing else.
    let status = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut resolution) };
    let ns = (resolution.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(resolution.tv_nsec as u64);
    (status == 0 && ns > 0 && ns <= 10_000_000).then_some(ns)
}

#[cfg(not(target_os = "linux"))]
fn coarse_resolution_ns() -> Option<u64> {
    None
}

/// Nanoseconds on the monotonic clock, through `std::time::Instant` where there is no
/// `clock_gettime`.
#[cfg(not(unix))]
pub fn now_ns() -> u64 {
    use std::time::Instant;
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let elapsed = ORIGIN.get_or_init(Instant::now).elapsed();
    elapsed
        .as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(elapsed.subsec_nanos()))
}
