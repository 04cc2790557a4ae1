//! Per-breaker call counters that stay exact under concurrency without becoming a point of contention.
//!
//! A single shared counter would make every call write the same cache line, which is exactly what the
//! read-only fast path avoids. Instead each breaker keeps a few cache-line-sized stripes; a thread
//! always bumps the stripe it was assigned (relaxed atomics, so two threads sharing a stripe still
//! lose nothing), and a read sums the stripes.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug)]
pub enum Counter {
    Successes = 0,
    Failures = 1,
    Ignored = 2,
    Rejected = 3,
}

const COUNTERS: usize = 4;

#[repr(align(64))]
#[derive(Default)]
struct Stripe([AtomicU64; COUNTERS]);

/// Totals read from the stripes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Finished calls: successes + failures + ignored (derived, so a call costs one increment).
    pub calls: u64,
    pub successes: u64,
    pub failures: u64,
    pub ignored: u64,
    pub rejected: u64,
}

pub struct Counters {
    stripes: Box<[Stripe]>,
}

/// One stripe per core (a power of two, at most 8): enough to keep threads apart on the machines
/// this runs on, small enough for a million breakers.
fn stripe_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        cores.clamp(1, 8).next_power_of_two()
    })
}

/// A number that differs between threads, found without thread-local storage (which costs a
/// `__tls_get_addr` call in a shared library): the address of the current stack frame. Thread
/// stacks are separate mappings megabytes apart, so the bits above 64 KiB tell threads apart; a
/// multiplicative hash spreads them over the stripes. Two threads landing on one stripe only
/// share a cache line; the counts stay exact.
#[inline]
fn this_thread_stripe() -> usize {
    let marker = 0u8;
    let address = std::hint::black_box(&marker) as *const u8 as usize;
    ((address >> 16).wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as usize)) >> (usize::BITS - 8)
}

impl Counters {
    pub fn new() -> Counters {
        Counters {
            stripes: (0..stripe_count()).map(|_| Stripe::default()).collect(),
        }
    }

    #[inline]
    pub fn add(&self, counter: Counter) {
        let stripe = &self.stripes[this_thread_stripe() & (self.stripes.len() - 1)];
        stripe.0[counter as usize].fetch_add(1, Relaxed);
    }

    pub fn totals(&self) -> Totals {
        let sum = |c: Counter| self.stripes.iter().map(|s| s.0[c as usize].load(Relaxed)).sum();
        let (successes, failures, ignored) =
            (sum(Counter::Successes), sum(Counter::Failures), sum(Counter::Ignored));
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
    fn stripes_are_a_power_of_two_cache_lines() {
        assert!(stripe_count().is_power_of_two());
        assert_eq!(std::mem::align_of::<Stripe>(), 64);
    }
}
