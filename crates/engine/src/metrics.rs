//! Per-breaker call counters that stay exact under concurrency without becoming a point of contention.
//!
//! A single shared counter would make every call from every thread write the same cache line, which
//! is exactly what the read-only fast path avoids. So a breaker counts in a compact inline block
//! while only one thread uses it (the common case for most of a million breakers), and the first
//! time a second thread counts, it gets cache-line-sized stripes: each thread then bumps the stripe
//! it was assigned (relaxed atomics, so two threads sharing a stripe still lose nothing), and a read
//! sums everything.

use once_cell::race::OnceBox;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug)]
pub enum Counter {
    Successes = 0,
    Failures = 1,
    Ignored = 2,
    Rejected = 3,
}

const COUNTERS: usize = 4;
const NO_THREAD: usize = usize::MAX;

#[repr(align(64))]
#[derive(Default)]
struct Stripe([AtomicU64; COUNTERS]);

/// Totals read from the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Finished calls: successes + failures + ignored (derived, so a call costs one increment).
    pub calls: u64,
    pub successes: u64,
    pub failures: u64,
    pub ignored: u64,
    pub rejected: u64,
}

#[derive(Default)]
struct Block([AtomicU64; COUNTERS]);

pub struct Counters {
    /// The thread (see `this_thread`) that counts in `local`; `NO_THREAD` until the first count.
    home: AtomicUsize,
    local: Block,
    /// Made when a second thread counts; from then on every other thread counts in its own stripe
    /// (through `add_as`; the first one keeps its block when it counts with `add_at_home`). One
    /// word until then (a `OnceBox`; a `OnceLock` of the slice would be three): most breakers are
    /// only ever counted by one thread, and every breaker carries this.
    stripes: OnceBox<Box<[Stripe]>>,
}

/// One stripe per core (a power of two, at most 8): enough to keep threads apart on the machines
/// this runs on, small enough for hot breakers to stay cheap.
fn stripe_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        cores.clamp(1, 8).next_power_of_two()
    })
}

/// A small number per thread, handed out in order, so that consecutive threads get different
/// stripes.
#[inline]
fn this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static ID: usize = NEXT.fetch_add(1, Relaxed) & (usize::MAX >> 1);
    }
    ID.with(|id| *id)
}

impl Counters {
    pub fn new() -> Counters {
        Counters {
            home: AtomicUsize::new(NO_THREAD),
            local: Block::default(),
            stripes: OnceBox::new(),
        }
    }

    #[inline]
    pub fn add(&self, counter: Counter) {
        self.add_as(counter, this_thread());
    }

    /// `add` by a caller that has a number for its thread at hand (the bindings use CPython's
    /// thread state), which spares the thread-local read: in a shared library that is a call to
    /// `__tls_get_addr`, on every guarded call. `me` is any number below `usize::MAX` that tells
    /// the calling thread apart from the others counting now; two threads given one number only
    /// share a block or stripe, whose relaxed atomics lose nothing.
    #[inline]
    pub fn add_as(&self, counter: Counter, me: usize) {
        debug_assert_ne!(me, NO_THREAD);
        if let Some(stripes) = self.stripes.get() {
            stripes[me & (stripes.len() - 1)].0[counter as usize].fetch_add(1, Relaxed);
            return;
        }
        let home = self.home.load(Relaxed);
        let mine = home == me
            || (home == NO_THREAD
                && self
                    .home
                    .compare_exchange(NO_THREAD, me, Relaxed, Relaxed)
                    .is_ok());
        if mine {
            self.local.0[counter as usize].fetch_add(1, Relaxed);
        } else {
            let stripes = self
                .stripes
                .get_or_init(|| Box::new((0..stripe_count()).map(|_| Stripe::default()).collect()));
            stripes[me & (stripes.len() - 1)].0[counter as usize].fetch_add(1, Relaxed);
        }
    }

    /// `add_as` when `me` is the thread that counts in the inline block (the common case: one
    /// thread counts), which then counts there whether or not other threads have stripes (only
    /// that thread writes the block; `totals` sums it and the stripes). `false`: nothing was
    /// counted, `add_as` counts. A load and a relaxed add, nothing that allocates or panics, for
    /// callers that want no unwinding guard around it.
    #[inline]
    pub fn add_at_home(&self, counter: Counter, me: usize) -> bool {
        if self.home.load(Relaxed) != me {
            return false;
        }
        self.local.0[counter as usize].fetch_add(1, Relaxed);
        true
    }

    /// True once a second thread has counted here.
    pub fn is_striped(&self) -> bool {
        self.stripes.get().is_some()
    }

    pub fn totals(&self) -> Totals {
        let sum = |c: Counter| {
            let striped: u64 = self.stripes.get().map_or(0, |stripes| {
                stripes.iter().map(|s| s.0[c as usize].load(Relaxed)).sum()
            });
            self.local.0[c as usize].load(Relaxed) + striped
        };
        let (successes, failures, ignored) = (
            sum(Counter::Successes),
            sum(Counter::Failures),
            sum(Counter::Ignored),
        );
        Totals {
            calls: successes + failures + ignored,
            successes,
            failures,
            ignored,
            rejected: sum(Counter::Rejected),
        }
    }
}

impl Default for Counters {
    fn default() -> Self {
        Counters::new()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counts_are_exact_across_threads() {
        let counters = Arc::new(Counters::new());
        let handles: Vec<_> = (0..16)
            .map(|_| {
                let c = counters.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        c.add(Counter::Successes);
                        c.add(Counter::Failures);
                    }
                    c.add(Counter::Rejected);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let t = counters.totals();
        assert_eq!(t.successes, 160_000);
        assert_eq!(t.failures, 160_000);
        assert_eq!(t.calls, 320_000);
        assert_eq!(t.rejected, 16);
        assert_eq!(t.ignored, 0);
    }

    #[test]
    fn one_thread_counts_inline_and_a_second_one_gets_stripes() {
        let counters = Arc::new(Counters::new());
        counters.add(Counter::Successes);
        counters.add(Counter::Rejected);
        assert!(!counters.is_striped());
        let other = counters.clone();
        std::thread::spawn(move || other.add(Counter::Successes))
            .join()
            .unwrap();
        assert!(counters.is_striped());
        counters.add(Counter::Failures);
        let t = counters.totals();
        assert_eq!((t.successes, t.failures, t.rejected, t.calls), (2, 1, 1, 3));
    }

    #[test]
    fn the_first_thread_counts_at_home_even_once_others_have_stripes() {
        let counters = Arc::new(Counters::new());
        // Nobody counted yet: the block has no thread, so `add_at_home` leaves it to `add_as`.
        assert!(!counters.add_at_home(Counter::Successes, 3));
        assert_eq!(counters.totals(), Totals::default());
        counters.add_as(Counter::Successes, 3);
        assert!(counters.add_at_home(Counter::Successes, 3));
        assert!(
            !counters.add_at_home(Counter::Successes, 4),
            "not its block"
        );
        let other = counters.clone();
        let second = std::thread::spawn(move || {
            for _ in 0..1_000 {
                other.add_as(Counter::Successes, 4);
            }
        });
        for _ in 0..1_000 {
            assert!(counters.add_at_home(Counter::Successes, 3));
        }
        second.join().unwrap();
        let handles: Vec<_> = (0..2)
            .map(|i| {
                let c = counters.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if !c.add_at_home(Counter::Failures, 3 + i) {
                            c.add_as(Counter::Failures, 3 + i);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(counters.is_striped());
        let t = counters.totals();
        assert_eq!((t.successes, t.failures, t.calls), (2_002, 20_000, 22_002));
    }

    #[test]
    fn threads_given_one_number_still_count_exactly() {
        // `add_as` with a number that two threads share (the bindings' thread-state key can
        // collide): they count in one block, and nothing is lost.
        let counters = Arc::new(Counters::new());
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let c = counters.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        c.add_as(Counter::Successes, 7 + i % 2);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let t = counters.totals();
        assert_eq!(t.successes, 40_000);
        assert_eq!(t.calls, 40_000);
    }

    #[test]
    fn stripes_are_a_power_of_two_cache_lines() {
        assert!(stripe_count().is_power_of_two());
        assert_eq!(std::mem::align_of::<Stripe>(), 64);
    }
}
