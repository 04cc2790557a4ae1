//! The monotonic clock read with one `clock_gettime(CLOCK_MONOTONIC)`: the clock `std::time::Instant`
//! reads on Unix, without the checked `Timespec` arithmetic that `Instant::elapsed` adds around it.
//! A breaker with a rate rule reads the clock for every success it counts in its window, so the
//! reading is on that closed fast path (issue 11: about 70 of the 90 instructions std spends).

/// Nanoseconds on the monotonic clock (an arbitrary, fixed origin; never goes back).
#[cfg(unix)]
#[inline]
pub fn now_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable `timespec` that outlives the call, and clock_gettime writes
    // nothing else; CLOCK_MONOTONIC exists on every Unix this builds for (it cannot fail with a
    // valid pointer, and if it did `now` would stay zero: time would stand still, not break).
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
    }
    // A monotonic clock's seconds and nanoseconds are never negative.
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}

/// Nanoseconds on the monotonic clock, through `std::time::Instant` where there is no
/// `clock_gettime`.
#[cfg(not(unix))]
pub fn now_ns() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let elapsed = ORIGIN.get_or_init(Instant::now).elapsed();
    elapsed
        .as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(elapsed.subsec_nanos()))
}
