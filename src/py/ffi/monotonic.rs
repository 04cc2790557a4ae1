//! The monotonic clock read with one `clock_gettime(CLOCK_MONOTONIC)`: the clock `std::time::Instant`
//! reads on Unix, without the checked `Timespec` arithmetic that `Instant::elapsed` adds around it.
//! A breaker with a rate rule reads the clock for every success it counts in its window, so the
//! reading is on that closed fast path (issue 11: about 70 of the 90 instructions std spends).
//!
//! That path reads the ticker's published reading instead when the window allows it
//! ([`lag_us`], `super::ticker`): one load, where a `clock_gettime`, even of
//! `CLOCK_MONOTONIC_COARSE`, cost more than the rest of the window's work.

#[cfg(not(unix))]
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
    // writes nothing else; the clock read here exists on every Unix this builds for.
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

/// Whole microseconds on the monotonic clock since `epoch_s` (whole seconds on the same clock),
/// for counting a success in a rate rule's window: as last published by the ticker thread when the
/// window tolerates `lag` (`super::ticker`: one load; up to `ticker::LAG_US` behind, never ahead),
/// else exactly `now_ns_since(epoch_s) / 1000`. Elsewhere than Unix, always exact.
#[cfg(unix)]
#[inline(always)]
pub fn window_now_us(lag: bool, epoch_s: u64) -> u64 {
    if lag {
        super::ticker::now_us().saturating_sub(epoch_s.saturating_mul(1_000_000))
    } else {
        now_ns_since(epoch_s) / 1000
    }
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

/// How far behind the exact clock a reading of [`window_now_us`] may be, in µs: the ticker's
/// lag; `None` where there is no ticker (then the windows count with exact readings).
pub fn lag_us() -> Option<u64> {
    #[cfg(unix)]
    {
        Some(super::ticker::LAG_US)
    }
    #[cfg(not(unix))]
    {
        None
    }
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
pub fn window_now_us(_lag: bool, epoch_s: u64) -> u64 {
    now_ns_since(epoch_s) / 1000
}
