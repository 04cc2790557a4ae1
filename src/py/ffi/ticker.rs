//! The ticker thread: it publishes the monotonic clock every millisecond for the closed fast path
//! of a rate-policy success, which then counts the call in its window with one load of the
//! published reading instead of a `clock_gettime` (issue 11: the clock read was most of what a
//! rate rule added to a call, 1.24x the consecutive-only path against 1.10x with the load, on
//! CPython 3.11). The protocol on the words is the engine's (`panelboard_engine::ticker`,
//! model-checked): a reading is published only while a ticker runs, and a reader that finds none
//! reads the clock itself and starts one.
//!
//! The thread is started by the first success that finds no reading (never at import, never for
//! a process without a rate rule on the monotonic clock), and stops after a second in which no
//! reader took a reading: an idle process has no thread waking a thousand times a second. It is a
//! plain Rust thread that never touches Python, so it holds nothing the interpreter needs, and it
//! is simply gone when the process exits. A forked child has no ticker: the fork handler clears
//! the words, and the child's first reader starts its own.
//!
//! How fresh a reading is depends on the operating system running the thread on time: a period
//! of 1 ms, and the windows that count with it are sized for [`LAG_US`] (8 ms) of lag, so that
//! the window's `± window/10` contract holds for readings up to 7 ms later than the period. A
//! process kept off the CPU longer than that (a machine far out of CPU) may count successes of
//! that moment early in the window by as much (README, "Choosing a trip policy").

use std::sync::Once;
use std::time::Duration;

use super::monotonic;
use crate::engine::Ticker;

/// The published reading of this process (µs on `CLOCK_MONOTONIC`, its own origin).
static TICKER: Ticker = Ticker::new();

/// Time between two publications.
const PERIOD: Duration = Duration::from_millis(1);

/// Publications no reader took before the ticker stops (a second's worth).
const IDLE_TICKS: u32 = 1000;

/// How far behind the exact clock a published reading may be, in µs (what the windows that count
/// with it are sized for: `Clock::lag_us`): a period and 7 ms for the thread to run late.
pub const LAG_US: u64 = 8_000;

/// The stack of the ticker thread: it calls `clock_gettime` and `nanosleep`, nothing deeper.
const STACK_BYTES: usize = 64 * 1024;

static AT_FORK: Once = Once::new();

/// Microseconds on the monotonic clock (`now_ns_since(0) / 1000`), as last published (up to
/// [`LAG_US`] behind), or read exactly when no ticker publishes (then one is started).
#[inline(always)]
pub fn now_us() -> u64 {
    match TICKER.read() {
        Some(now_us) => now_us,
        None => read_and_start(),
    }
}

/// [`now_us`] when nothing is published: an exact reading, and a ticker started if none runs.
#[cold]
#[inline(never)]
fn read_and_start() -> u64 {
    let now_us = monotonic::now_ns_since(0) / 1000;
    if TICKER.claim_start() {
        start();
    }
    now_us
}

/// Registers the fork handler that clears the reading in a child (once per process, at the
/// module's import: registered later, a fork racing the registration, or a ticker's start, could
/// leave a child with a reading or a start claimed and no ticker).
pub fn watch_forks() {
    AT_FORK.call_once(|| {
        // SAFETY: the handler is a plain `extern "C"` function that only does atomic stores
        // (async-signal-safe, as a fork child handler must be); registering it has no other
        // effect, and it is registered once per process (a child inherits it).
        unsafe {
            libc::pthread_atfork(None, None, Some(forget_in_child));
        }
    });
}

fn start() {
    let spawned = std::thread::Builder::new()
        .name("panelboard-tick".to_owned()) // 15 bytes: a Linux thread name's limit
        .stack_size(STACK_BYTES)
        .spawn(run);
    if spawned.is_err() {
        // No thread to be had (a limit on threads): every reader reads the clock itself.
        TICKER.refused();
    }
}

/// The fork child handler: the child has no ticker.
extern "C" fn forget_in_child() {
    TICKER.forget();
}

/// The ticker thread's loop: publish, and stop after [`IDLE_TICKS`] publications nobody took.
fn run() {
    let mut idle = 0;
    loop {
        if TICKER.publish(monotonic::now_ns_since(0) / 1000) {
            idle = 0;
        } else {
            idle += 1;
        }
        if idle >= IDLE_TICKS {
            if TICKER.stop() {
                return;
            }
            idle = 0; // a reader took the last reading meanwhile: go on
        }
        std::thread::sleep(PERIOD);
    }
}
