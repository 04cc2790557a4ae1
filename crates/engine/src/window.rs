//! The sliding time window of a rate policy: how many calls finished in the last `window`
//! microseconds, how many of them failed, how many were slow. Lock-free, allocation-free and
//! pointer-free: a fixed array of atomic words, operated on by reference, so that it can live in a
//! heap struct, or as is in a shared-memory slot (see [`Window::SIZE`]).
//!
//! The window is cut into [`BUCKETS`] buckets of `window / BUCKETS` microseconds (see
//! [`RatePolicy::bucket_us`]; the window keeps the width it was given, so that the closed fast path
//! can count a success without the breaker's configuration). A call is counted in the bucket of the time it finished, and the
//! window holds the current bucket and the `BUCKETS - 1` before it. So a call that finished less than
//! `window - window/10` ago always counts, one that finished `window` ago or more never does
//! (bucket widths are whole microseconds, rounded up: exact for windows that are a multiple of
//! 10 µs). Times are microseconds, not the state word's milliseconds, so that a window of a few
//! milliseconds still has ten buckets.
//!
//! Each counter of a bucket is one word, `tag << 32 | count`, where the tag is the breaker
//! generation (low 8 bits) and the bucket's time index (`time / bucket_us`, low 24 bits). A word
//! whose tag is not the one a recorder expects is stale (an older time, or an older generation):
//! the recorder resets it to its own tag and its count by one compare-and-swap, so no count is lost
//! when several threads find the same stale bucket, and a count can never be added to a bucket of
//! another generation or time. A state change bumps the breaker generation, so the next recorder
//! finds every bucket stale: a new state starts an empty window without anyone clearing it, and an
//! outcome of an older generation can only land in a bucket tagged with that older generation, which
//! the readers of the new one skip.
//!
//! Judging the window takes a sum over the buckets, but a healthy window is judged with one load: a
//! word holds the tag of the newest bucket that was given a failure or a slow call, and a window
//! whose newest such bucket is of another generation or older than the window cannot trip. A
//! success is judged after it is counted, so a success that lifts the window to `min_calls` trips it
//! at once. (The one race: a success and a failure finishing together, each judging the window
//! before seeing the other's count, cannot both miss it, because the counts and that word are
//! written and read with sequentially consistent operations: the later of the two sees both.)
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
/// Set in `newest_bad` once it holds a tag: a zeroed word means "no failure yet", not "one in
/// bucket 0 of generation 0".
const NOTED: u64 = 1 << 32;

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
    /// Microseconds covered by the window (at least 1).
    pub window_us: u64,
    /// Calls the window must hold before a rate can trip (at least 1).
    pub min_calls: u64,
    /// Trip when `failures / calls >= failure_rate`.
    pub failure_rate: Option<f64>,
    /// Trip when `slow / calls >= slow_call_rate`.
    pub slow_call_rate: Option<f64>,
}

impl RatePolicy {
    /// Width of one bucket: `window_us / BUCKETS`, rounded up, at least 1 µs.
    pub fn bucket_us(&self) -> u64 {
        self.window_us.div_ceil(BUCKETS as u64).max(1)
    }

    /// Whether a window holding `counts` opens the breaker.
    pub fn trips(&self, counts: Counts) -> bool {
        if counts.calls == 0 || counts.calls < self.min_calls {
            return false;
        }
        let calls = counts.calls as f64;
        let reached =
            |count: u64, rate: Option<f64>| rate.is_some_and(|r| count as f64 / calls >= r);
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

/// The window's words. Zeroed words are valid (tag 0, count 0, stale for almost everyone; a width
/// of 0 reads as 1 µs).
#[derive(Debug)]
#[repr(C)] // a shared-memory slot holds one as is (crates/shm, docs/shared-memory.md)
pub struct Window {
    /// Bucket width in microseconds.
    bucket_us: AtomicU64,
    /// The tag of the newest bucket given a failure or a slow call (see the module documentation).
    newest_bad: AtomicU64,
    calls: [AtomicU64; BUCKETS],
    failures: [AtomicU64; BUCKETS],
    slow: [AtomicU64; BUCKETS],
}

/// Adds one to `word` under `tag`: resets a stale word to `tag` with a count of one, drops the count
/// if the word already holds a newer tag. Returns the count now in the bucket (0 if dropped).
fn add(word: &AtomicU64, tag: Tag) -> u64 {
    let mut current = word.load(Ordering::SeqCst);
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
        match word.compare_exchange_weak(current, next, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return next & COUNT_MASK,
            Err(actual) => current = actual,
        }
    }
}

impl Window {
    /// Bytes a window occupies (for a shared-memory slot): `2 + 3 * BUCKETS` words.
    pub const SIZE: usize = std::mem::size_of::<[u64; 2 + 3 * BUCKETS]>();

    /// An empty window of buckets `bucket_us` wide (see [`RatePolicy::bucket_us`]).
    pub fn new(bucket_us: u64) -> Window {
        Window {
            bucket_us: AtomicU64::new(bucket_us),
            newest_bad: AtomicU64::new(0),
            calls: std::array::from_fn(|_| AtomicU64::new(0)),
            failures: std::array::from_fn(|_| AtomicU64::new(0)),
            slow: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// The bucket index of `now_us`.
    #[inline]
    fn index(&self, now_us: u64) -> u64 {
        now_us / self.bucket_us.load(Ordering::Relaxed).max(1)
    }

    /// Gives the window buckets `bucket_us` wide; a change of width forgets everything (the old
    /// tags mean other times). A recorder running concurrently may still land a count of the old
    /// width, which only makes one window approximate.
    pub fn set_bucket_us(&self, bucket_us: u64) {
        if self.bucket_us.swap(bucket_us, Ordering::AcqRel) != bucket_us {
            self.newest_bad.store(0, Ordering::SeqCst);
            for words in [&self.calls, &self.failures, &self.slow] {
                for word in words {
                    word.store(0, Ordering::SeqCst);
                }
            }
        }
    }

    /// Counts the success of a call of generation `generation` finished at `now_us`, and tells
    /// whether the window may now trip (it holds a failure or a slow call of this generation):
    /// only then does it need judging ([`Window::trips`]). The closed fast path of a breaker with
    /// a rate rule: one CAS of the bucket's word and one load.
    #[inline]
    pub fn record_success(&self, generation: u32, now_us: u64) -> bool {
        let index = self.index(now_us);
        let tag = Tag::new(generation, index);
        add(&self.calls[(index % BUCKETS as u64) as usize], tag) != 0
            && self.may_trip(generation, index)
    }

    /// Whether the newest bucket with a failure or slow call is of `generation` and inside the
    /// window that ends at bucket `index`.
    #[inline]
    fn may_trip(&self, generation: u32, index: u64) -> bool {
        let noted = self.newest_bad.load(Ordering::SeqCst);
        let newest = Tag(noted & !NOTED);
        let current = Tag::new(generation, index);
        noted & NOTED != 0
            && newest.generation() == current.generation()
            && current.index().wrapping_sub(newest.index()) & INDEX_MASK < BUCKETS as u64
    }

    /// Notes that bucket `tag` holds a failure or a slow call (never moving the note back).
    fn note_bad(&self, tag: Tag) {
        let mut current = self.newest_bad.load(Ordering::SeqCst);
        loop {
            let found = Tag(current & !NOTED);
            if current & NOTED != 0 && (found == tag || found.is_newer_than(tag)) {
                return;
            }
            match self.newest_bad.compare_exchange_weak(
                current,
                tag.0 | NOTED,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Counts one call of generation `generation` that finished at `now_us` (a failure and/or slow
    /// as told). Returns how many calls its bucket holds now (0: dropped as late, see the module
    /// documentation).
    pub fn record(&self, generation: u32, now_us: u64, failure: bool, slow: bool) -> u64 {
        let index = self.index(now_us);
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
        if failure || slow {
            self.note_bad(tag);
        }
        in_bucket
    }

    /// The counts of generation `generation` in the window that ends at `now_us`.
    pub fn counts(&self, generation: u32, now_us: u64) -> Counts {
        let index = self.index(now_us);
        let sum = |words: &[AtomicU64; BUCKETS]| -> u64 {
            let mut total = 0;
            for age in 0..BUCKETS as u64 {
                let Some(bucket_index) = index.checked_sub(age) else {
                    break;
                };
                let word = words[(bucket_index % BUCKETS as u64) as usize].load(Ordering::SeqCst);
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

    /// Whether the window of `generation` at `now_us` opens the breaker by `policy`. A window with
    /// no failure and no slow call in it is judged with one load.
    pub fn trips(&self, policy: &RatePolicy, generation: u32, now_us: u64) -> bool {
        self.may_trip(generation, self.index(now_us))
            && policy.trips(self.counts(generation, now_us))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn policy(window_us: u64, min_calls: u64, rate: f64) -> RatePolicy {
        RatePolicy {
            window_us,
            min_calls,
            failure_rate: Some(rate),
            slow_call_rate: None,
        }
    }

    fn window(p: &RatePolicy) -> Window {
        Window::new(p.bucket_us())
    }

    #[test]
    fn size_is_thirty_two_words_and_zeroed_words_are_empty() {
        assert_eq!(Window::SIZE, 256);
        assert_eq!(std::mem::size_of::<Window>(), Window::SIZE);
        let w = Window::new(0);
        assert_eq!(w.counts(0, 0), Counts::default());
        assert_eq!(w.counts(3, 123_456), Counts::default());
        assert!(!w.trips(&policy(1000, 1, 0.5), 0, 0));
    }

    #[test]
    fn a_success_asks_for_judging_only_with_a_failure_in_the_window() {
        let p = policy(1000, 2, 0.3);
        let w = window(&p);
        assert!(!w.record_success(4, 0));
        w.record(4, 10, true, false);
        assert!(w.record_success(4, 20));
        assert!(w.trips(&p, 4, 20), "1 failure in 3 calls >= 0.3");
        assert!(
            w.record_success(4, 999),
            "the failure is still in the window"
        );
        assert!(!w.record_success(4, 1000), "and gone a window later");
        assert!(!w.record_success(5, 20), "another generation");
    }

    #[test]
    fn a_new_width_forgets_everything() {
        let p = policy(1000, 1, 0.5);
        let w = window(&p);
        w.record(1, 10, true, true);
        w.set_bucket_us(100);
        assert_eq!(w.counts(1, 10).calls, 1, "same width: nothing forgotten");
        w.set_bucket_us(50);
        assert_eq!(w.counts(1, 10), Counts::default());
    }

    #[test]
    fn counts_age_out_bucket_by_bucket() {
        let p = policy(1000, 1, 0.5);
        let w = window(&p);
        w.record(1, 0, true, false);
        w.record(1, 50, false, true);
        assert_eq!(
            w.counts(1, 899),
            Counts {
                calls: 2,
                failures: 1,
                slow: 1
            }
        );
        assert_eq!(w.counts(1, 999).calls, 2, "within the window");
        assert_eq!(w.counts(1, 1000).calls, 0, "a whole window later");
    }

    #[test]
    fn another_generation_sees_an_empty_window_and_resets_on_record() {
        let p = policy(1000, 1, 0.5);
        let w = window(&p);
        w.record(1, 10, true, false);
        assert_eq!(w.counts(2, 10), Counts::default());
        w.record(2, 10, false, false);
        assert_eq!(w.counts(2, 10).calls, 1);
        assert_eq!(w.counts(2, 10).failures, 0);
        // A late recorder of generation 1 finds a newer tag and drops its count.
        assert_eq!(w.record(1, 10, true, false), 0);
        assert_eq!(w.counts(2, 10).calls, 1);
        assert_eq!(w.counts(2, 10).failures, 0);
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
