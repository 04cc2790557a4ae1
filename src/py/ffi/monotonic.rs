//! The monotonic clock read with one `clock_gettime(CLOCK_MONOTONIC)`: the clock `std::time::Instant`
//! reads on Unix, without the checked `Timespec` arithmetic that `Instant::elapsed` adds around it.
//! A breaker with a rate rule reads the clock for every success it counts in its window, so the
//! reading is on that closed fast path (issue 11: about 70 of the 90 instructions std spends).
//!
//! On Linux that path reads `CLOCK_MONOTONIC_COARSE` instead when the window allows it
//! ([`coarse_lag_ns`]): the same clock as of the last timer tick, which the vDSO returns without
//! reading the time-stamp counter (`rdtscp`, the costliest instruction of a precise reading).

use std::sync::OnceLock;

/// The reading of `clock` (an arbitrary, fixed origin; never goes back): seconds and nanoseconds.
/// `None` if clock_gettime failed, which it cannot with a valid pointer and a clock that exists:
/// the callers then read the epoch (time stands still rather than anything breaking).
///
/// The `timespec` is left uninitialised for `clock_gettime` to fill: zeroing it first (a 16-byte
/// store to the stack just before the call) cost about 2.5 ns per reading on the closed fast path
/// of a rate-policy success (AMD EPYC, issue 11), a third of what the rate policy added to a call.
#[cfg(unix)]
#[inline(always)]
fn read(clock: libc::clockid_t) -> Option<(u64, u32)> {
    let mut now = std::mem::MaybeUninit::<libc::timespec>::uninit();
    // SAFETY: `now` is valid for a write of a `timespec` and outlives the call, and clock_gettime
    // writes nothing else; the clocks read here exist on every Unix this builds for
    // (CLOCK_MONOTONIC_COARSE only on Linux).
    if unsafe { libc::clock_gettime(clock, now.as_mut_ptr()) } != 0 {
        return not_read();
    }
    // SAFETY: clock_gettime succeeded, so it wrote the whole `timespec`.
    let now = unsafe { now.assume_init() };
    // A monotonic clock's seconds and nanoseconds are never negative, its nanoseconds below 10^9.
    Some((now.tv_sec as u64, now.tv_nsec as u32))
}

/// A failed reading, out of line: the branch to it is laid out as the one not taken.
#[cfg(unix)]
#[cold]
fn not_read() -> Option<(u64, u32)> {
    None
}

/// Whole microseconds on the monotonic clock since `epoch_s` (whole seconds on the same clock, no
/// later than any reading: see `Clock::monotonic`), for counting a success in a rate rule's
/// window: as of the last timer tick when `coarse` (Linux's `CLOCK_MONOTONIC_COARSE`: the same
/// origin, behind by less than [`coarse_lag_ns`]; no time-stamp counter read), else exactly
/// `now_ns_since(epoch_s) / 1000`. Elsewhere than Linux, always exact.
///
/// One `clock_gettime` and a few instructions, inlined where it is called (the closed fast path of
/// a rate-policy success): the seconds since the epoch are taken as 32 bits (136 years), so that
/// the result is known to be below 2^53 and the window's bucket arithmetic needs no clamp.
#[cfg(unix)]
#[inline(always)]
pub fn window_now_us(coarse: bool, epoch_s: u64) -> u64 {
    #[cfg(target_os = "linux")]
    let clock = if coarse {
        libc::CLOCK_MONOTONIC_COARSE
    } else {
        libc::CLOCK_MONOTONIC
    };
    #[cfg(not(target_os = "linux"))]
    let clock = {
        let _ = coarse;
        libc::CLOCK_MONOTONIC
    };
    let Some((seconds, nanoseconds)) = read(clock) else {
        return 0;
    };
    u64::from(seconds.wrapping_sub(epoch_s) as u32) * 1_000_000 + u64::from(nanoseconds / 1000)
}

/// Nanoseconds on the monotonic clock since `epoch_s` (whole seconds on it, no later than any
/// reading; 0: the clock's own origin, the same for every process of the host). The product
/// cannot wrap for 584 years after the epoch.
#[cfg(unix)]
#[inline]
pub fn now_ns_since(epoch_s: u64) -> u64 {
    let Some((seconds, nanoseconds)) = read(libc::CLOCK_MONOTONIC) else {
        return 0;
    };
    seconds
        .wrapping_sub(epoch_s)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(u64::from(nanoseconds))
}

/// How far behind the precise clock a coarse reading ([`window_now_us`]) may be: twice the coarse
/// clock's resolution (`clock_getres`, one timer tick: 1 to 10 ms), which leaves a tick's margin
/// for a tick handled late. `None` where there is no coarse clock, or its resolution is unknown or
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
fn now_ns() -> u64 {
    use std::time::Instant;
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let elapsed = ORIGIN.get_or_init(Instant::now).elapsed();
    elapsed
        .as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(elapsed.subsec_nanos()))
}

/// [`now_ns_since`] where there is no `clock_gettime`.
#[cfg(not(unix))]
pub fn now_ns_since(epoch_s: u64) -> u64 {
    now_ns().saturating_sub(epoch_s.saturating_mul(1_000_000_000))
}

/// [`window_now_us`] where there is no `clock_gettime`: always exact.
#[cfg(not(unix))]
pub fn window_now_us(_coarse: bool, epoch_s: u64) -> u64 {
    now_ns_since(epoch_s) / 1000
}
