//! A clock reading published by a ticker thread, for readers that tolerate a small lag: the closed
//! fast path of a rate-policy success, which counts the call in the bucket of the time it
//! finished. Reading the clock (a vDSO `clock_gettime`, even the coarse one) cost that path more
//! than the rest of the window's work together (issue 11: 1.24x the consecutive-only path per call
//! with the clock read, 1.10x with a load of a published reading, CPython 3.11); a load of a word
//! that changes once a millisecond costs a cache hit.
//!
//! The bindings own the thread (`src/py/ffi/ticker.rs`): it publishes the exact clock every
//! millisecond while readers use it, and stops after a second in which none did. This module is
//! the protocol on the words, which keeps one promise whatever the interleaving: **a reading is
//! published only while a ticker runs**. A ticker stops by clearing the reading before it lets
//! anyone start another, and a reader that finds no reading reads the clock itself (and starts a
//! ticker), so no reader ever takes a reading that no ticker keeps fresh. After a `fork`, the child
//! has no ticker: its fork handler clears the words ([`Ticker::forget`]). How fresh a published
//! reading is depends on the operating system running the ticker on time (a millisecond's period;
//! the windows that use it are sized for 8 ms of lag, see `Clock::lag_us` in the bindings).
//! Model-checked: `tests/loom.rs`, `a_stopping_ticker_never_leaves_a_reading_behind`.

use crate::sync::{AtomicU64, Ordering};

/// The mark of a published reading in `now` (0 is "none": a reading of 0 µs is still published).
const LIVE: u64 = 1 << 63;

/// `running`: no ticker runs (or one is stopping, its reading already cleared).
const STOPPED: u64 = 0;
/// `running`: a ticker runs, or is being started.
const RUNNING: u64 = 1;
/// `running`: a ticker could not be started (the thread was refused): readers read the clock.
const REFUSED: u64 = 2;

/// The words of a published reading (see the module documentation). All zero: no ticker, nothing
/// published.
#[derive(Debug)]
#[repr(C)]
pub struct Ticker {
    /// The published reading (µs, `LIVE`-marked), or 0.
    now: AtomicU64,
    /// Whether a reader took the reading since the ticker last published one (1) or not (0).
    used: AtomicU64,
    /// [`STOPPED`], [`RUNNING`] or [`REFUSED`].
    running: AtomicU64,
}

impl Default for Ticker {
    fn default() -> Ticker {
        Ticker::new()
    }
}

impl Ticker {
    /// No ticker, nothing published (a `const fn`, for a `static`).
    #[cfg(not(loom))]
    pub const fn new() -> Ticker {
        Ticker {
            now: AtomicU64::new(0),
            used: AtomicU64::new(0),
            running: AtomicU64::new(STOPPED),
        }
    }

    /// No ticker, nothing published (loom's atomics have no `const fn new`).
    #[cfg(loom)]
    pub fn new() -> Ticker {
        Ticker {
            now: AtomicU64::new(0),
            used: AtomicU64::new(0),
            running: AtomicU64::new(STOPPED),
        }
    }

    /// The published reading, if a ticker keeps one: `None` tells the reader to read the clock
    /// itself, and to start a ticker ([`Ticker::claim_start`]). Marks the reading used (a store
    /// only when it is not already marked: once per publication, not once per reader).
    #[inline(always)]
    pub fn read(&self) -> Option<u64> {
        let now = self.now.load(Ordering::Relaxed);
        if now == 0 {
            return None;
        }
        if self.used.load(Ordering::Relaxed) == 0 {
            self.used.store(1, Ordering::Relaxed);
        }
        Some(now & !LIVE)
    }

    /// Whether the caller is to start a ticker (it found none running; none other will be started
    /// until it calls [`Ticker::refused`] or the ticker it starts stops).
    pub fn claim_start(&self) -> bool {
        // A load first: while a ticker is starting (or refused), every reader comes here, and a
        // compare-and-swap each would take the line from the others.
        self.running.load(Ordering::Relaxed) == STOPPED
            && self
                .running
                .compare_exchange(STOPPED, RUNNING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// The ticker the caller claimed could not be started: no one tries again (readers read the
    /// clock themselves).
    pub fn refused(&self) {
        self.running.store(REFUSED, Ordering::Release);
    }

    /// The ticker publishes `now_us` (below 2^63): returns whether a reader took the previous
    /// reading.
    pub fn publish(&self, now_us: u64) -> bool {
        self.now.store(now_us | LIVE, Ordering::SeqCst);
        self.used.swap(0, Ordering::SeqCst) != 0
    }

    /// The ticker, idle, asks to stop: the reading is cleared first, so that readers read the
    /// clock from then on. `false` when a reader took the reading meanwhile (the ticker goes on,
    /// and publishes again at its next tick); `true` when it is to stop (another may be started
    /// from then on, and the stopping one must publish nothing more).
    pub fn stop(&self) -> bool {
        self.now.store(0, Ordering::SeqCst);
        if self.used.load(Ordering::SeqCst) != 0 {
            return false;
        }
        self.running.store(STOPPED, Ordering::Release);
        true
    }

    /// In the child of a `fork`, which has no ticker: nothing published, none running (a fork
    /// handler may call it: atomic stores only).
    pub fn forget(&self) {
        self.now.store(0, Ordering::SeqCst);
        self.used.store(0, Ordering::SeqCst);
        self.running.store(STOPPED, Ordering::SeqCst);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_reading_is_read_only_while_published() {
        let t = Ticker::new();
        assert_eq!(t.read(), None);
        assert!(t.claim_start());
        assert!(!t.claim_start(), "one ticker at a time");
        assert!(!t.publish(0), "nobody read before");
        assert_eq!(t.read(), Some(0), "a reading of 0 µs is a reading");
        assert!(t.publish(1_234), "read since the last publication");
        assert!(!t.publish(1_235), "not read since");
        assert_eq!(t.read(), Some(1_235));
        assert!(!t.stop(), "read since the last publication: it goes on");
        assert_eq!(t.read(), None, "cleared until the next tick");
        assert!(t.publish(1_236));
        assert!(t.stop());
        assert_eq!(t.read(), None);
        assert!(t.claim_start(), "stopped: another may start");
        t.refused();
        assert!(!t.claim_start(), "refused: no one tries again");
        t.forget();
        assert!(t.claim_start(), "a forked child starts its own");
    }
}
