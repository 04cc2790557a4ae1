//! The sliding time window of a rate policy: how many calls finished in the last `window`
//! milliseconds, how many of them failed, how many were slow. Lock-free, allocation-free and
//! pointer-free: a fixed array of atomic words, operated on by reference, so that it can live in a
//! heap struct, or as is in a shared-memory slot (see [`Window::SIZE`]).
//!
//! The window is cut into [`BUCKETS`] buckets of `window / BUCKETS` milliseconds (see
//! [`RatePolicy::bucket_ms`]). A call is counted in the bucket of the time it finished, and the
//! window holds the current bucket and the `BUCKETS - 1` before it. So a call that finished less than
//! `window - window/10` ago always counts, one that finished `window` ago or more never does
//! (bucket widths are whole milliseconds, rounded up: exact for windows that are a multiple of
//! 10 ms).
//!
//! Each counter of a bucket is one word, `tag << 32 | count`, where the tag is the breaker
//! generation (low 8 bits) and the bucket's time index (`time / bucket_ms`, low 24 bits). A word
//! whose tag is not the one a recorder expects is stale (an older time, or an older generation):
//! the recorder resets it to its own tag and its count by one compare-and-swap, so no count is lost
//! when several threads find the same stale bucket, and a count can never be added to a bucket of
//! another generation or time. A state change bumps the breaker generation, so the next recorder
//! finds every bucket stale: a new state starts an empty window without anyone clearing it, and an
//! outcome of an older generation can only land in a bucket tagged with that older generation, which
//! the readers of the new one skip.
//!
//! Limits of the tags (documented, none can bite in practice): a word left untouched for exactly a
//! multiple of 2^24 buckets *and* 256 generations would read as current; a recorder whose clock
//! reading is older than the bucket it finds (another thread already rolled the slot on to a newer
//! time, a full window later) drops its count, since that call is then outside the window anyway.

use crate::sync::{AtomicU64, Ordering};

/// Buckets per window: the fewest that keep the forgetting error within a tenth of the window.
pub const BUCKETS: usize = 10;

const COUNT_BITS: u32 = 32;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const INDEX_BITS: u32 = 24;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
const GENERATION_TAG_MASK: u64 = 0xFF;

/// The tag of a bucket: generation (low 8 bits) and time index (low 24 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tag(u64);

impl Tag {
    fn new(generation: u32, index: u64) -> Tag {
        Tag(((u64::from(generation) & GENERATION_TAG_MASK) << INDEX_BITS) | (index & INDEX_MASK))
    }

    fn of(word: u64) -> Tag {
        Tag(word >> COUNT_BITS)
    }

    fn word(self, count: u64) -> u64 {
        (self.0 << COUNT_BITS) | (count & COUNT_MASK)
    }

    fn generation(self) -> u64 {
        self.0 >> INDEX_BITS
    }

    fn index(self) -> u64 {
        self.0 & INDEX_MASK
    }

    /// Whether `self` (found in a bucket) is newer than `mine` (a recorder's): a later generation,
    /// or the same generation and a later time. Compared by wrapping differences, so the tags'
    /// wrap-around is harmless.
    fn is_newer_than(self, mine: Tag) -> bool {
        let generations = self.generation().wrapping_sub(mine.generation()) & GENERATION_TAG_MASK;
        if generations != 0 {
            return generations < (GENERATION_TAG_MASK + 1) / 2;
        }
        let indices = self.index().wrapping_sub(mine.index()) & INDEX_MASK;
        indices != 0 && indices < (INDEX_MASK + 1) / 2
    }
}

/// The rate rules of a breaker. Rates are compared as `count / calls >= rate` in `f64`, as Python
/// would, so a rate of exactly the threshold trips.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RatePolicy {
    /// Milliseconds covered by the window (at least 1).
    pub window_ms: u64,
    /// Calls the window must hold before a rate can trip (at least 1).
    pub min_calls: u64,
    /// Trip when `failures / calls >= failure_rate`.
    pub failure_rate: Option<f64>,
    /// Trip when `slow / calls >= slow_call_rate`.
    pub slow_call_rate: Option<f64>,
}

impl RatePolicy {
    /// Width of one bucket: `window_ms / BUCKETS`, rounded up, at least 1 ms.
    pub fn bucket_ms(&self) -> u64 {
        self.window_ms.div_ceil(BUCKETS as u64).max(1)
    }

    /// Whether a window holding `counts` opens the breaker.
    pub fn trips(&self, counts: Counts) -> bool {
        if counts.calls == 0 || counts.calls < self.min_calls {
            return false;
        }
        let calls = counts.calls as f64;
        let reached = |count: u64, rate: Option<f64>| rate.is_some_and(|r| count as f64 / calls >= r);
        reached(counts.failures, self.failure_rate) || reached(counts.slow, self.slow_call_rate)
    }
}

/// What a window holds: calls finished (successes and failures), failures, slow calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub calls: u64,
    pub failures: u64,
    pub slow: u64,
}

/// The window's words. Zeroed words are valid (tag 0, count 0, stale for almost everyone).
#[derive(Debug)]
pub struct Window {
    calls: [AtomicU64; BUCKETS],
    failures: [AtomicU64; BUCKETS],
    slow: [AtomicU64; BUCKETS],
}

/// Adds one to `word` under `tag`: resets a stale word to `tag` with a count of one, drops the count
/// if the word already holds a newer tag. Returns the count now in the bucket (0 if dropped).
fn add(word: &AtomicU64, tag: Tag) -> u64 {
    let mut current = word.load(Ordering::Acquire);
    loop {
        let found = Tag::of(current);
        let next = if found == tag {
            let count = current & COUNT_MASK;
            if count == COUNT_MASK {
                return count; // saturated: 4 billion calls in one bucket
            }
            current + 1
        } else if found.is_newer_than(tag) {
            return 0;
        } else {
            tag.word(1)
        };
        match word.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return next & COUNT_MASK,
            Err(actual) => current = actual,
        }
    }
}

impl Window {
    /// Bytes a window occupies (for a shared-memory slot): `3 * BUCKETS` words.
    pub const SIZE: usize = std::mem::size_of::<[u64; 3 * BUCKETS]>();

    #[cfg(not(loom))]
    pub const fn new() -> Window {
        #[allow(clippy::declare_interior_mutable_const)]
        const ZERO: AtomicU64 = AtomicU64::new(0);
        Window {
            calls: [ZERO; BUCKETS],
            failures: [ZERO; BUCKETS],
            slow: [ZERO; BUCKETS],
        }
    }

    #[cfg(loom)]
    pub fn new() -> Window {
        Window {
            calls: std::array::from_fn(|_| AtomicU64::new(0)),
            failures: std::array::from_fn(|_| AtomicU64::new(0)),
            slow: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Counts one call of generation `generation` that finished at `now_ms` (a failure and/or slow
    /// as told). Returns how many calls its bucket holds now (0: dropped as late, see the module
    /// documentation).
    pub fn record(
        &self,
        policy: &RatePolicy,
        generation: u32,
        now_ms: u64,
        failure: bool,
        slow: bool,
    ) -> u64 {
        let index = now_ms / policy.bucket_ms();
        let slot = (index % BUCKETS as u64) as usize;
        let tag = Tag::new(generation, index);
        let in_bucket = add(&self.calls[slot], tag);
        if in_bucket == 0 {
            return 0;
        }
        if failure {
            add(&self.failures[slot], tag);
        }
        if slow {
            add(&self.slow[slot], tag);
        }
        in_bucket
    }

    /// The counts of generation `generation` in the window that ends at `now_ms`.
    pub fn counts(&self, policy: &RatePolicy, generation: u32, now_ms: u64) -> Counts {
        let index = now_ms / policy.bucket_ms();
        let sum = |words: &[AtomicU64; BUCKETS]| -> u64 {
            let mut total = 0;
            for age in 0..BUCKETS as u64 {
                let Some(bucket_index) = index.checked_sub(age) else {
                    break;
                };
                let word = words[(bucket_index % BUCKETS as u64) as usize].load(Ordering::Acquire);
                if Tag::of(word) == Tag::new(generation, bucket_index) {
                    total += word & COUNT_MASK;
                }
            }
            total
        };
        // Failures and slow calls first: a healthy window (none of either) never needs its calls
        // summed to know that it does not trip.
        let failures = sum(&self.failures);
        let slow = sum(&self.slow);
        let calls = sum(&self.calls);
        Counts {
            calls,
            failures,
            slow,
        }
    }

    /// Whether the window of `generation` at `now_ms` opens the breaker. Reads only the failure and
    /// slow words when neither rule has anything to count.
    pub fn trips(&self, policy: &RatePolicy, generation: u32, now_ms: u64) -> bool {
        let index = now_ms / policy.bucket_ms();
        let any = |words: &[AtomicU64; BUCKETS]| {
            (0..BUCKETS as u64).any(|age| {
                index.checked_sub(age).is_some_and(|i| {
                    let word = words[(i % BUCKETS as u64) as usize].load(Ordering::Acquire);
                    Tag::of(word) == Tag::new(generation, i) && word & COUNT_MASK != 0
                })
            })
        };
        let failures = policy.failure_rate.is_some() && any(&self.failures);
        let slow = policy.slow_call_rate.is_some() && any(&self.slow);
        (failures || slow) && policy.trips(self.counts(policy, generation, now_ms))
    }

    /// Forgets everything (a changed bucket width makes the old tags meaningless). A recorder
    /// running concurrently may still land a count of the old width.
    pub fn clear(&self) {
        for words in [&self.calls, &self.failures, &self.slow] {
            for word in words {
                word.store(0, Ordering::Release);
            }
        }
    }
}

#[cfg(not(loom))]
impl Default for Window {
    fn default() -> Self {
        Window::new()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn policy(window_ms: u64, min_calls: u64, rate: f64) -> RatePolicy {
        RatePolicy {
            window_ms,
            min_calls,
            failure_rate: Some(rate),
            slow_call_rate: None,
        }
    }

    #[test]
    fn size_is_thirty_words_and_zeroed_words_are_empty() {
        assert_eq!(Window::SIZE, 240);
        assert_eq!(std::mem::size_of::<Window>(), Window::SIZE);
        let w = Window::new();
        let p = policy(1000, 1, 0.5);
        assert_eq!(w.counts(&p, 0, 0), Counts::default());
        assert_eq!(w.counts(&p, 3, 123_456), Counts::default());
    }

    #[test]
    fn counts_age_out_bucket_by_bucket() {
        let w = Window::new();
        let p = policy(1000, 1, 0.5);
        w.record(&p, 1, 0, true, false);
        w.record(&p, 1, 50, false, true);
        assert_eq!(
            w.counts(&p, 1, 899),
            Counts {
                calls: 2,
                failures: 1,
                slow: 1
            }
        );
        assert_eq!(w.counts(&p, 1, 999).calls, 2, "within the window");
        assert_eq!(w.counts(&p, 1, 1000).calls, 0, "a whole window later");
    }

    #[test]
    fn another_generation_sees_an_empty_window_and_resets_on_record() {
        let w = Window::new();
        let p = policy(1000, 1, 0.5);
        w.record(&p, 1, 10, true, false);
        assert_eq!(w.counts(&p, 2, 10), Counts::default());
        w.record(&p, 2, 10, false, false);
        assert_eq!(w.counts(&p, 2, 10).calls, 1);
        assert_eq!(w.counts(&p, 2, 10).failures, 0);
        // A late recorder of generation 1 finds a newer tag and drops its count.
        assert_eq!(w.record(&p, 1, 10, true, false), 0);
        assert_eq!(w.counts(&p, 2, 10).calls, 1);
        assert_eq!(w.counts(&p, 2, 10).failures, 0);
    }

    #[test]
    fn tags_compare_by_wrapping_difference() {
        let old = Tag::new(255, INDEX_MASK);
        let new = Tag::new(0, 0);
        assert!(new.is_newer_than(old));
        assert!(!old.is_newer_than(new));
        assert!(Tag::new(3, 0).is_newer_than(Tag::new(3, INDEX_MASK)));
        assert!(!Tag::new(3, 5).is_newer_than(Tag::new(3, 5)));
    }

    #[test]
    fn trips_reads_the_rates_exactly() {
        let p = policy(1000, 10, 0.3);
        let c = |calls, failures| Counts {
            calls,
            failures,
            slow: 0,
        };
        assert!(p.trips(c(10, 3)), "exactly the threshold");
        assert!(!p.trips(c(10, 2)));
        assert!(!p.trips(c(9, 9)), "below min_calls");
        assert!(!p.trips(c(0, 0)));
    }
}
