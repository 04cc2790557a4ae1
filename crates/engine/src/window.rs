//! The sliding time window of a rate policy: how many calls finished in the last `window`
//! microseconds, how many of them failed, how many were slow. Lock-free, allocation-free and
//! pointer-free: a fixed array of atomic words, operated on by reference, so that it can live in a
//! heap struct, or as is in a shared-memory slot (see [`Window::SIZE`]).
//!
//! The window is cut into [`BUCKETS`] (9) buckets of `0.9 × window / 8` microseconds (see
//! [`RatePolicy::bucket_us`]; the window keeps the width it was given, so that the closed fast path
//! can count a success without the breaker's configuration). A call is counted in the bucket of the
//! time it finished, and the window holds the current bucket and the `BUCKETS - 1` before it:
//! eight whole buckets, `0.9 × window`, and the current one, so that a call that finished less
//! than `window - window/10` ago always counts, and one that finished more than
//! `window + window/10` ago (nine buckets, `1.0125 × window`, the rounding of the width to whole
//! microseconds included from [`MIN_WINDOW_US`] up) never does: the contract of issue 11, with
//! the fewest buckets that keep it (nine: eight buckets of `0.9 / 8` of a window, where ten
//! buckets would be a tenth each; a window of nine is three words smaller, which leaves room for
//! the lanes within the memory budget of a breaker, see [`crate::lanes`]). Times are
//! microseconds, not the state word's milliseconds, so that a window of a few milliseconds still
//! has nine buckets.
//!
//! Readings that lag: the closed fast path of a breaker on the monotonic clock counts its
//! successes with the reading a ticker thread publishes every millisecond ([`crate::ticker`]: one
//! load, no clock read), behind the true time by up to a lag (8 ms in the bindings). A window wide
//! enough for that lag (about 25 lags: 0.2 s for a lag of 8 ms) gets buckets a little wider,
//! `(0.9 × window + lag) / 8` ([`RatePolicy::lagging_bucket_us`]), so that the contract above
//! holds for readings up to the lag late; its width word carries the [`LAGGING`] mark, which
//! tells the fast path that a lagging reading will do. Narrower windows, and a `ManualClock`'s,
//! keep `0.9 × window / 8` and exact readings.
//!
//! Each counter of a bucket is one word, `tag << 30 | count`, where the tag is the breaker
//! generation (low 8 bits) and the bucket's time index (`time / bucket_us`, low 26 bits). A word
//! whose tag is not the one a recorder expects is stale (an older time, or an older generation):
//! the recorder resets it to its own tag and its count by one compare-and-swap, so no count is lost
//! when several threads find the same stale bucket, and a count can never be added to a bucket of
//! another generation or time. A state change bumps the breaker generation, so the next recorder
//! finds every bucket stale: a new state starts an empty window without anyone clearing it, and an
//! outcome of an older generation can only land in a bucket tagged with that older generation, which
//! the readers of the new one skip.
//!
//! On a free-threaded build the successes a breaker's threads count on the closed fast path go,
//! for every thread but the first, into lanes of their own ([`crate::lanes`]), which every reader
//! adds to the `calls` words.
//!
//! Judging the window takes a sum over the buckets, but a healthy window is judged with one load: a
//! word holds the tag of the newest bucket that was given a failure or a slow call, and a window
//! whose newest such bucket is of another generation or older than the window cannot trip. A
//! success is judged after it is counted, so a success that lifts the window to `min_calls` trips it
//! at once. The one race is a success and a failure finishing together in one bucket, each judging
//! the window before seeing the other's count. They cannot both miss it: the failure notes its
//! bucket (a release CAS) and then reads that bucket's call count with a read-modify-write, which
//! reads the newest count; if that is older than the success's CAS of the same word, the success's
//! CAS read the failure's RMW and so sees the note, and judges the window itself (model-checked:
//! `tests/loom.rs`, `window_success_races_the_failure_that_trips`). Across a bucket boundary the
//! race can leave the trip to the next call that counts.
//!
//! Who is stale when a recorder finds another tag in its slot is decided without comparing
//! truncated tags: a tag of another generation is stale unless the recorder's own generation is no
//! longer the breaker's (it asks the state word); a tag of another time is stale unless the
//! recorder's bucket is a whole window older than the newest bucket anyone counted in (the bucket
//! of `newest_us`, the newest time a recorder rolled a slot at, a whole word), in which case the
//! recorder is late and drops its count, its call being outside the window anyway. It is a time,
//! not a bucket index, so that a recorder that read the width just before a `configure` changed it
//! cannot leave an index of the old width there (bug 43: going from narrower buckets to wider
//! ones, that index lay far in the future of the new width, every later recorder took itself for
//! late, and the rate rules stayed off until the clock caught up, for days).
//!
//! Limit of the tags (documented; it cannot bite in practice): a word left untouched for a whole
//! multiple of 9 * 2^26 buckets (the least common multiple of the 9 slots and the 2^26 tags),
//! give or take one window (two hours for the narrowest window, 100 µs; 7.9 days for 10 ms, two
//! years for a second, 21 for the default 10 s), *and* of 256 generations would read as current.
//!
//! A bucket counts up to 2^30 - 1 calls (a billion; a bucket of a one-hour window, 6.75 minutes,
//! fills at 2.6 million calls a second, one of the longest window, 2^35 ms, in 45 days at 278 a
//! second). A call that finds its bucket full is not counted, and neither are its
//! failure and its slowness, so that the bucket's rates stay those of the calls it holds (bug 42:
//! with 22-bit counts, a bucket of a 10 s window filled in a quarter of a second at 16 million
//! calls a second, while its failures went on counting, so that a failure rate of 0.5 read as 1.0
//! and tripped the breaker). A full bucket thus speaks for the earlier part of its time only:
//! outcomes in the rest of it are not counted, and a change of rate shows from the next bucket on,
//! at most `0.9 / 8` of a window later.

use crate::lanes::{Lane, Lanes};
use crate::sync::{AtomicU64, Ordering};

/// Sums of a window tried before a reader takes a sum that cannot overstate its rates (see
/// `Window::sum`).
const SUM_ATTEMPTS: usize = 4;

/// Buckets per window: the fewest that keep the forgetting error within a tenth of the window
/// (see the module documentation: `B` buckets of width `w` keep a call of age up to `(B - 1) w`
/// and forget one of `B w`, so `(B - 1) w >= 0.9 × window` and `B w <= 1.1 × window`, which
/// takes `B >= 5.5`; nine leave room for rounding widths to whole microseconds and for a
/// clock's lag).
#[cfg(not(loom))]
pub const BUCKETS: usize = 9;
/// Under loom, two buckets: the same code over fewer words, so that the models stay small (what
/// they check, the atomicity of counting, resetting and judging, does not depend on the count).
#[cfg(loom)]
pub const BUCKETS: usize = 2;

/// The mark, in a window's width word, of a width sized for readings that lag
/// ([`RatePolicy::lagging_bucket_us`]): [`Window::tolerates_lag`] tells the recorders of
/// successes that a lagging reading will do.
pub const LAGGING: u64 = 1 << 63;

/// The mark, in a window's width word, of a change of width in progress (`set_bucket_us_with`):
/// its words are being cleared, and a sum reads nothing. Outside the bits a bucket index is
/// computed from (the reciprocal and the shift), so recorders count on with the new width.
const CLEARING: u64 = 1 << 62;

/// The shortest window (in microseconds) whose buckets, whole microseconds wide, keep the
/// forgetting error within a tenth of it.
pub const MIN_WINDOW_US: u64 = 100;

const COUNT_BITS: u32 = 30;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const INDEX_BITS: u32 = 26;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
const GENERATION_TAG_MASK: u64 = 0xFF;
/// `newest_bad`: `generation (low 8 bits) << 56 | (bucket index + 1)`, the index whole (56 bits
/// last two billion years at a microsecond per bucket); 0 means "no failure yet".
const NOTE_INDEX_BITS: u32 = 56;
const NOTE_INDEX_MASK: u64 = (1 << NOTE_INDEX_BITS) - 1;

fn pack_note(generation: u32, index: u64) -> u64 {
    ((u64::from(generation) & GENERATION_TAG_MASK) << NOTE_INDEX_BITS)
        | (index.saturating_add(1) & NOTE_INDEX_MASK)
}

/// The generation tag and the bucket index of a note, if there is one.
fn unpack_note(note: u64) -> Option<(u64, u64)> {
    let index = note & NOTE_INDEX_MASK;
    (index != 0).then(|| (note >> NOTE_INDEX_BITS, index - 1))
}

/// The tag of a bucket: generation (low 8 bits) and time index (low 26 bits).
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

    /// `Tag::new(generation, index).word(0)`, with the fewest instructions (the closed fast path
    /// compares a bucket's word with it): each part shifted into place, the shifts dropping the
    /// bits a tag does not keep.
    #[inline(always)]
    fn word_of(generation: u32, index: u64) -> u64 {
        (u64::from(generation) << (u64::BITS - 8))
            | ((index << (u64::BITS - INDEX_BITS)) >> (u64::BITS - INDEX_BITS - COUNT_BITS))
    }

    fn generation(self) -> u64 {
        self.0 >> INDEX_BITS
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
    /// Width of one bucket: `0.9 × window_us / (BUCKETS - 1)`, rounded up, at least 1 µs (the
    /// [lagging width](RatePolicy::lagging_bucket_us) for no lag).
    pub fn bucket_us(&self) -> u64 {
        #[cfg(not(loom))]
        return Self::width_for(self.window_us, 0).max(1);
        // Under loom, with two buckets, `window / 2`: the models place their times in the
        // buckets of that width (what they check, the atomicity of counting, does not depend on
        // the width).
        #[cfg(loom)]
        return self.window_us.div_ceil(BUCKETS as u64).max(1);
    }

    /// The narrowest width `w` whose `BUCKETS - 1` buckets hold `0.9 × window_us + lag_us`.
    fn width_for(window_us: u64, lag_us: u64) -> u64 {
        window_us
            .saturating_mul(9)
            .saturating_add(lag_us.saturating_mul(10))
            .div_ceil(10 * (BUCKETS as u64 - 1))
    }

    /// Width of one bucket when the times counted in the window may each be up to `lag_us` behind
    /// the true time (a reading published periodically), if the window is wide enough for
    /// that: `None` otherwise (then count with an exact clock and [`RatePolicy::bucket_us`]).
    ///
    /// With buckets `w` wide, the window holds an outcome while the bucket of its reading is fewer
    /// than [`BUCKETS`] (9) buckets before the reader's: a reading age up to `8w` always counts,
    /// one of `9w` or more never does. Each of the two readings may be late by up to `lag_us`, so
    /// a true age `a` reads as `a ± lag_us`; the contract (younger than `0.9 × window` always
    /// counts, older than `1.1 × window` never does) holds when `8w >= 0.9 × window + lag_us` and
    /// `9w <= 1.1 × window - lag_us`. The narrowest such `w` is taken; one exists once the window
    /// is at least about `25 × lag_us` (200 ms for a lag of 8 ms).
    pub fn lagging_bucket_us(&self, lag_us: u64) -> Option<u64> {
        let window = self.window_us;
        let width = Self::width_for(window, lag_us);
        (width
            .saturating_mul(10 * BUCKETS as u64)
            .saturating_add(lag_us.saturating_mul(10))
            <= window.saturating_mul(11))
        .then_some(width)
    }

    /// What the width word of this policy's [`Window`] holds (`Window::new`,
    /// `Window::set_bucket_us`) on a clock whose lagging readings lag by up to `lag_us` (`None`:
    /// no lagging readings): the [lagging width](RatePolicy::lagging_bucket_us) marked
    /// [`LAGGING`], so that the closed fast path may count its successes with lagging readings, or
    /// else the exact width.
    pub fn bucket_word(&self, lag_us: Option<u64>) -> u64 {
        match lag_us.and_then(|lag| self.lagging_bucket_us(lag)) {
            Some(width) => width | LAGGING,
            None => self.bucket_us(),
        }
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
    /// Bucket width in microseconds, marked [`LAGGING`] when sized for readings that lag.
    bucket_us: AtomicU64,
    /// The newest time (µs, whole) at which a recorder rolled a slot on to a new bucket: a
    /// recorder whose bucket is a full window older than this time's is late, and drops its count.
    newest_us: AtomicU64,
    /// The tag of the newest bucket given a failure or a slow call (see the module documentation).
    newest_bad: AtomicU64,
    calls: [AtomicU64; BUCKETS],
    failures: [AtomicU64; BUCKETS],
    slow: [AtomicU64; BUCKETS],
}

/// Times are below 2^55 µs (a `u64` of nanoseconds divided by 1000 is); later ones are taken as
/// the last of them.
const TIME_BITS: u32 = 55;
const MAX_TIME_US: u64 = (1 << TIME_BITS) - 1;
/// A width word holds the width's reciprocal (`MAGIC_BITS` bits) and a shift (6 bits) instead of
/// the width, so that finding a bucket takes a multiplication, not a 64-bit division (10 to 18
/// cycles on the machines measured, on the closed fast path of every success).
const MAGIC_BITS: u32 = 56;
const MAGIC_MASK: u64 = (1 << MAGIC_BITS) - 1;

/// The width word of buckets `width` µs wide (a width that may carry the [`LAGGING`] mark; 0
/// reads as 1): `LAGGING | shift << 56 | magic`, where `shift = ceil(log2 width)` and
/// `magic = ceil(2^(55 + shift) / width)`, which makes `t * magic >> (55 + shift)` exactly
/// `t / width` for every `t < 2^55` (Granlund and Montgomery, "Division by invariant integers
/// using multiplication", theorem 4.2: `magic * width - 2^(55 + shift) < width <= 2^shift`).
/// The magic has at most 56 bits: `width > 2^(shift - 1)`.
fn width_word(width: u64) -> u64 {
    let mark = width & LAGGING;
    let width = (width & !LAGGING).max(1);
    let shift = u64::BITS - (width - 1).leading_zeros();
    let magic = (1u128 << (TIME_BITS + shift)).div_ceil(u128::from(width));
    mark | u64::from(shift) << MAGIC_BITS | (magic as u64 & MAGIC_MASK)
}

/// The bucket index of `now_us` in buckets of the width word `word` (see [`width_word`]; a zeroed
/// word puts every time in bucket 0).
#[inline]
fn index_of(word: u64, now_us: u64) -> u64 {
    let magic = u128::from(word & MAGIC_MASK);
    let shift = ((word >> MAGIC_BITS) & 0x3F) as u32;
    // `t * magic >> (55 + shift)` as the high word of `(t << 9) * magic`, shifted: no shift of a
    // 128-bit value by a variable amount.
    let t = u128::from(now_us.min(MAX_TIME_US) << (u64::BITS - TIME_BITS));
    (((t * magic) >> u64::BITS) as u64) >> shift
}

/// The slot of bucket `index` in a window's arrays.
#[inline]
fn slot_of(index: u64) -> usize {
    (index % BUCKETS as u64) as usize
}

/// Adds one to `word` under `tag`: resets a stale word to `tag` with a count of one, unless
/// `late(found tag)` says this recorder is the stale one (its generation is no longer current, or
/// its bucket is a full window older than the newest), which drops the count. Returns the count
/// now in the bucket, 0 if the call was not counted: dropped as late, or its bucket full (see the
/// module documentation: a call its bucket cannot hold is not counted at all).
fn add(word: &AtomicU64, tag: Tag, late: &impl Fn(Tag) -> bool) -> u64 {
    let mut current = word.load(Ordering::SeqCst);
    loop {
        let found = Tag::of(current);
        let next = if found == tag {
            let count = current & COUNT_MASK;
            if count == COUNT_MASK {
                return 0; // full: a billion calls in one bucket
            }
            current + 1
        } else if late(found) {
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

/// How [`Window::count_success_in`] counts a success.
#[derive(Clone, Copy, Debug)]
pub enum Counting<'a> {
    /// With compare-and-swaps, in the window's own words, or in the lane given: other threads,
    /// or other processes (a shared-memory slot's window), count beside it.
    Shared(Option<&'a Lane>),
    /// In the window's own words, the common case with a load and a store of the bucket's word
    /// instead of a compare-and-swap: for a caller that no other reader or writer of the window
    /// runs beside, a window of one process whose every reader and writer holds one lock while it
    /// touches the window (CPython's GIL, on a build that has one; never a shared-memory slot's
    /// window, which other processes write). A `lock`ed instruction, which waits for every
    /// earlier load and store, cost a rate-policy success more than the rest of its count
    /// together. The rest (a stale bucket, a full one) is `add`'s loop, as always. Memory-safe
    /// whatever the caller does: a writer running beside it after all could only make a count go
    /// missing. Model-checked with the lock: `tests/loom.rs`,
    /// `a_success_counted_alone_under_the_gil_races_the_failure_that_trips`.
    Alone,
}

impl Window {
    /// Bytes a window occupies (for a shared-memory slot): `3 + 3 * BUCKETS` words.
    pub const SIZE: usize = std::mem::size_of::<[u64; 3 + 3 * BUCKETS]>();

    /// An empty window of buckets `bucket_us` wide (see [`RatePolicy::bucket_us`]; or
    /// [`RatePolicy::bucket_word`], a width that may carry the [`LAGGING`] mark).
    pub fn new(bucket_us: u64) -> Window {
        Window {
            bucket_us: AtomicU64::new(width_word(bucket_us)),
            newest_us: AtomicU64::new(0),
            newest_bad: AtomicU64::new(0),
            calls: std::array::from_fn(|_| AtomicU64::new(0)),
            failures: std::array::from_fn(|_| AtomicU64::new(0)),
            slow: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// The bucket index of `now_us`.
    #[inline]
    fn index(&self, now_us: u64) -> u64 {
        index_of(self.bucket_us.load(Ordering::Relaxed), now_us)
    }

    /// Whether the window's width was sized for readings that lag ([`RatePolicy::bucket_word`]):
    /// then a success may be counted with a lagging reading.
    #[inline]
    pub fn tolerates_lag(&self) -> bool {
        self.bucket_us.load(Ordering::Relaxed) & LAGGING != 0
    }

    /// The last bucket of the window a reader at `now_us` sums: its own, or the newest any
    /// recorder has rolled a slot on to, if that is later. A reader whose clock reading is old (a
    /// thread preempted between reading the clock and judging, while others moved time on) would
    /// otherwise sum a torn window: slots whose call counts were already rolled on to newer
    /// buckets (no longer its window's) while their failure counts, rolled only by the next
    /// failure, still were, and it could trip on failures whose calls it did not count (bug 32,
    /// docs/reliability.md).
    #[inline]
    fn judged_index(&self, now_us: u64) -> u64 {
        self.index(now_us.max(self.newest_us.load(Ordering::SeqCst)))
    }

    /// Gives the window buckets `bucket_us` wide (a width word, see [`Window::new`]); a change of
    /// width, or of its mark, forgets everything (the old
    /// tags mean other times). A recorder running concurrently may still land a count of the old
    /// width, which only makes one window approximate (`newest_us` is a time, the same under
    /// any width, and a note of a failing bucket of the old width is taken back by its recorder,
    /// see `record`).
    ///
    /// Returns whether the width changed (then the caller clears the window's lanes too).
    pub fn set_bucket_us(&self, bucket_us: u64) -> bool {
        self.set_bucket_us_with(bucket_us, None)
    }

    /// [`Window::set_bucket_us`], forgetting the counts of `lanes` too. The width word carries the
    /// [`CLEARING`] mark while the words are cleared, so that a sum that overlaps the clearing
    /// reads no rate the window never had (see `sum`).
    pub fn set_bucket_us_with(&self, bucket_us: u64, lanes: Option<&Lanes>) -> bool {
        let word = width_word(bucket_us);
        let changed = self.bucket_us.swap(word | CLEARING, Ordering::SeqCst) & !CLEARING != word;
        if changed {
            self.newest_bad.store(0, Ordering::SeqCst);
            for words in [&self.calls, &self.failures, &self.slow] {
                for word in words {
                    word.store(0, Ordering::SeqCst);
                }
            }
            if let Some(lanes) = lanes {
                lanes.clear();
            }
        }
        // Unless another change of width came meanwhile (it clears, and ends its own marking).
        let _ = self.bucket_us.compare_exchange(
            word | CLEARING,
            word,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        changed
    }

    /// Counts the success of a call of generation `generation` finished at `now_us`, and tells
    /// whether the window may now trip (it holds a failure or a slow call of this generation):
    /// only then does it need judging ([`Window::trips`]). The closed fast path of a breaker with
    /// a rate rule: two loads, one CAS of the bucket's word, one load. `still_current`: whether
    /// `generation` is still the breaker's (closed) generation, asked only when the bucket holds
    /// another generation's counts.
    #[inline]
    pub fn record_success(
        &self,
        generation: u32,
        now_us: u64,
        still_current: impl Fn() -> bool,
    ) -> bool {
        self.count_success(generation, |_| now_us, still_current)
            .is_some()
    }

    /// [`Window::record_success`] at the time `clock(tolerates_lag)` reads, where `tolerates_lag`
    /// says whether a reading that lags (the ticker's) will do (see [`Window::tolerates_lag`]:
    /// the one load of the width word serves both). Returns the time read when the window may now
    /// trip (judge it at that time), `None` when it cannot. Always inlined: it is most of the
    /// closed fast path of a rate-policy success (a call out of line costs 10% more instructions).
    ///
    /// The common case is a straight line: the bucket already holds this generation's count for
    /// this time (every success but the first of each bucket), so one comparison of the loaded
    /// word against the tag (which also rules out a full bucket) and one CAS count the call;
    /// the rest (a stale bucket to reset or a late recorder, a full bucket, a CAS lost to
    /// another thread) is [`add`]'s loop, out of line. The atomic steps are the same either way:
    /// a load of the bucket's word, then CASes of the value last seen.
    #[inline(always)]
    pub fn count_success(
        &self,
        generation: u32,
        clock: impl FnOnce(bool) -> u64,
        still_current: impl Fn() -> bool,
    ) -> Option<u64> {
        self.count_success_in(Counting::Shared(None), generation, clock, still_current)
    }

    /// [`Window::count_success`], counted as `counting` says: in one of the window's lanes (see
    /// [`crate::Lanes`]) instead of its own words, the same atomic steps on the lane's word; or,
    /// for a caller no other reader or writer of the window runs beside, with a store instead of
    /// the CAS (see [`Counting::Alone`]).
    #[inline(always)]
    pub fn count_success_in(
        &self,
        counting: Counting<'_>,
        generation: u32,
        clock: impl FnOnce(bool) -> u64,
        still_current: impl Fn() -> bool,
    ) -> Option<u64> {
        let (lane, alone) = match counting {
            Counting::Shared(lane) => (lane, false),
            Counting::Alone => (None, true),
        };
        let width = self.bucket_us.load(Ordering::Relaxed);
        let now_us = clock(width & LAGGING != 0);
        let index = index_of(width, now_us);
        let calls = match lane {
            Some(lane) => &lane.calls,
            None => &self.calls,
        };
        let word = &calls[slot_of(index)];
        let current = word.load(Ordering::SeqCst);
        // Zero in the tag's bits when the word holds this call's tag; below `COUNT_MASK` when, as
        // well, the bucket is not full.
        let counted = (current ^ Tag::word_of(generation, index)) < COUNT_MASK
            && if alone {
                // Release, not SeqCst: a sequentially consistent store is a `lock`ed exchange on
                // x86. The lock every caller holds orders it with every other access.
                word.store(current + 1, Ordering::Release);
                true
            } else {
                word.compare_exchange(current, current + 1, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            };
        if !counted
            && !self.count_success_again(
                word,
                lane.is_some(),
                generation,
                index,
                now_us,
                still_current,
            )
        {
            return None;
        }
        self.may_trip(generation, index).then_some(now_us)
    }

    /// The rest of [`Window::count_success`], when its one CAS did not count the call in `word`
    /// (a lane's when `in_lane`): whether it is counted now (false: dropped as late, or its
    /// bucket full). A lane's word that is full sends the call to the window's own word, so that
    /// failures (counted there) stop counting only when successes do (bug 42).
    #[cold]
    #[inline(never)]
    fn count_success_again(
        &self,
        word: &AtomicU64,
        in_lane: bool,
        generation: u32,
        index: u64,
        now_us: u64,
        still_current: impl Fn() -> bool,
    ) -> bool {
        let tag = Tag::new(generation, index);
        let late = self.lateness(index, now_us, tag, still_current);
        add(word, tag, &late) != 0
            || (in_lane
                && word.load(Ordering::SeqCst) == tag.word(COUNT_MASK)
                && add(&self.calls[slot_of(index)], tag, &late) != 0)
    }

    /// The test of a recorder of `tag` (bucket `index`) finding another tag in its slot: late when
    /// its generation is no longer current, or when its bucket is a whole window older than the
    /// newest one (then the slot holds a newer time, and its call is outside the window anyway).
    /// Otherwise the slot is stale and reset. Only a recorder that finds another tag moves
    /// `newest_us` on (to `now_us`, the time its bucket `index` is of), before it resets the
    /// slot: a late recorder that sees the newer tag sees the newer time too.
    #[inline]
    fn lateness<'a>(
        &'a self,
        index: u64,
        now_us: u64,
        tag: Tag,
        still_current: impl Fn() -> bool + 'a,
    ) -> impl Fn(Tag) -> bool + 'a {
        move |found: Tag| {
            let newest = self.index(
                self.newest_us
                    .fetch_max(now_us, Ordering::AcqRel)
                    .max(now_us),
            );
            if found.generation() != tag.generation() {
                !still_current()
            } else {
                index.saturating_add(BUCKETS as u64) <= newest
            }
        }
    }

    /// Whether the newest bucket with a failure or slow call is of `generation` and inside the
    /// window that ends at bucket `index`, or after it: a success counted with a lagging reading
    /// may land in a bucket before that of a failure recorded just before it with an exact
    /// reading (one bucket before, with a reading within its lag: a lagging width is more than
    /// twice the lag; more, when the OS ran the ticker late), and must still ask for judging (bug
    /// 36: the breaker tripped one call late). The judge sums the window that ends at the newest
    /// bucket anyway (`judged_index`).
    #[inline]
    fn may_trip(&self, generation: u32, index: u64) -> bool {
        let Some((noted_generation, noted_index)) =
            unpack_note(self.newest_bad.load(Ordering::SeqCst))
        else {
            return false;
        };
        let index = index & NOTE_INDEX_MASK;
        noted_generation == u64::from(generation) & GENERATION_TAG_MASK
            && index.saturating_sub(noted_index) < BUCKETS as u64
    }

    /// Notes that bucket `index` of `generation` holds a failure or a slow call: never moving the
    /// note back to an earlier bucket of the same generation, and replacing another generation's
    /// note only while `generation` is still current (a late recorder must not hide the current
    /// generation's failures).
    /// Returns the note written, if it wrote one.
    fn note_bad(
        &self,
        generation: u32,
        index: u64,
        still_current: impl Fn() -> bool,
    ) -> Option<u64> {
        let note = pack_note(generation, index);
        let mut current = self.newest_bad.load(Ordering::SeqCst);
        loop {
            if let Some((noted_generation, noted_index)) = unpack_note(current) {
                let same = noted_generation == u64::from(generation) & GENERATION_TAG_MASK;
                if (same && noted_index >= index & NOTE_INDEX_MASK) || (!same && !still_current()) {
                    return None;
                }
            }
            match self.newest_bad.compare_exchange_weak(
                current,
                note,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return Some(note),
                Err(actual) => current = actual,
            }
        }
    }

    /// Counts one call of generation `generation` that finished at `now_us` (a failure and/or slow
    /// as told). Returns how many calls its bucket holds now (0: not counted, being late or its
    /// bucket full, and its failure and slowness not counted either; see the module
    /// documentation).
    ///
    /// `still_current`: whether `generation` is still the breaker's (closed) generation, asked only
    /// when a bucket holds another generation's counts (see [`Window::record_success`]).
    pub fn record(
        &self,
        generation: u32,
        now_us: u64,
        failure: bool,
        slow: bool,
        still_current: impl Fn() -> bool,
    ) -> u64 {
        let width = self.bucket_us.load(Ordering::SeqCst);
        let index = index_of(width, now_us);
        let slot = slot_of(index);
        let tag = Tag::new(generation, index);
        let late = self.lateness(index, now_us, tag, &still_current);
        let in_bucket = add(&self.calls[slot], tag, &late);
        if in_bucket == 0 {
            return 0;
        }
        if failure {
            add(&self.failures[slot], tag, &late);
        }
        if slow {
            add(&self.slow[slot], tag, &late);
        }
        if failure || slow {
            let noted = self.note_bad(generation, index, &still_current);
            // A `set_bucket_us` since the width was read cleared the note: one of the old width
            // would read as a bucket far from any of the new one (bug 43), and it may have kept a
            // failure recorded meanwhile under the new width from noting its bucket. So it is
            // replaced by the note of this time's bucket under the new width, unless a newer note
            // replaced it meanwhile (noting a bucket lets the judges sum the window, which decides).
            if let Some(note) = noted {
                // A read-modify-write: it reads the newest width, whatever the memory model
                // lets a load see (the width's swap comes before the note's reset).
                let now_width = self.bucket_us.fetch_add(0, Ordering::SeqCst);
                if now_width != width {
                    let _ = self.newest_bad.compare_exchange(
                        note,
                        pack_note(generation, index_of(now_width, now_us)),
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    );
                }
            }
        }
        in_bucket
    }

    /// The buckets of generation `generation` in the window that ends at `now_us`, newest first,
    /// each as its whole time index (`time / bucket width`) and its counts (zero for a bucket
    /// holding another generation or time). Loads only: what the Redis sync worker reads to push
    /// the counts added since its last round (a bucket's counts only grow while it is current).
    pub fn buckets(&self, generation: u32, now_us: u64) -> [(u64, Counts); BUCKETS] {
        self.buckets_with(generation, now_us, &[])
    }

    /// [`Window::buckets`], with the calls counted in `lanes` added.
    pub fn buckets_with(
        &self,
        generation: u32,
        now_us: u64,
        lanes: &[Lane],
    ) -> [(u64, Counts); BUCKETS] {
        let width = self.bucket_us.load(Ordering::SeqCst);
        if width & CLEARING != 0 {
            return [(0, Counts::default()); BUCKETS];
        }
        let index = index_of(width, now_us.max(self.newest_us.load(Ordering::SeqCst)));
        let buckets = std::array::from_fn(|age| {
            let Some(bucket_index) = index.checked_sub(age as u64) else {
                return (0, Counts::default());
            };
            let slot = slot_of(bucket_index);
            let tag = Tag::new(generation, bucket_index);
            let count = |words: &[AtomicU64; BUCKETS]| {
                let word = words[slot].load(Ordering::SeqCst);
                if Tag::of(word) == tag {
                    word & COUNT_MASK
                } else {
                    0
                }
            };
            (
                bucket_index,
                Counts {
                    calls: count(&self.calls)
                        + lanes.iter().map(|lane| count(&lane.calls)).sum::<u64>(),
                    failures: count(&self.failures),
                    slow: count(&self.slow),
                },
            )
        });
        // Read during a change of width: partly cleared (see `sum`), so nothing.
        if self.bucket_us.load(Ordering::SeqCst) == width {
            buckets
        } else {
            [(0, Counts::default()); BUCKETS]
        }
    }

    /// The width of a bucket in microseconds.
    pub fn bucket_us(&self) -> u64 {
        self.bucket_us.load(Ordering::Relaxed).max(1)
    }

    /// The counts of generation `generation` in the window that ends at `now_us`.
    pub fn counts(&self, generation: u32, now_us: u64) -> Counts {
        self.sum(generation, now_us, false, &[])
    }

    /// [`Window::counts`], with the calls counted in `lanes` added.
    pub fn counts_with(&self, generation: u32, now_us: u64, lanes: &[Lane]) -> Counts {
        self.sum(generation, now_us, false, lanes)
    }

    /// `counts`, reading the current bucket's call count with a read-modify-write when `newest`
    /// (see the module documentation: what judging after a failure needs).
    ///
    /// The sum reads failures first, then calls: a reader preempted in between while other
    /// threads moved time on by several buckets would find the calls of those slots rolled on to
    /// newer buckets (not its window's) and add up failures without their calls, a rate the
    /// window never had (bug 41: the 16-thread sliding-window test tripped once on 3.13t under
    /// load). A slot is only ever given a bucket after the judged one by a recorder that first
    /// moved `newest_us` past it, so a sum during which `newest_us` did not move past the
    /// judged bucket is whole; otherwise it is done again at the newer bucket. Should time move
    /// on under every attempt (a reader preempted again and again), the last sum reads the calls
    /// first: a slot rolled on under it then loses failures, never calls (only a failure that
    /// lands during that sum can show without its call: one call's worth).
    ///
    /// The calls counted in `lanes` are added, each lane's current bucket read with a
    /// read-modify-write as well when `newest` (a success counted in a lane races a failure as
    /// one counted in the window's own words does).
    ///
    /// A sum during which the width changed is empty: `set_bucket_us` clears the words one by one
    /// (and the lanes after them), and a sum of some cleared and some not could read a rate the
    /// window never had (the failures' calls cleared, a lane's successes not). The clearing
    /// stores come after the width's swap, so a sum that read a cleared word reads the new width.
    fn sum(&self, generation: u32, now_us: u64, newest: bool, lanes: &[Lane]) -> Counts {
        let width = self.bucket_us.load(Ordering::SeqCst);
        if width & CLEARING != 0 {
            return Counts::default();
        }
        let mut index = index_of(width, now_us.max(self.newest_us.load(Ordering::SeqCst)));
        let mut attempt = 1;
        let counts = loop {
            let last = attempt == SUM_ATTEMPTS;
            let counts = self.sum_at(generation, index, newest, last, lanes);
            let newest_now = index_of(width, self.newest_us.load(Ordering::SeqCst));
            if last || newest_now <= index {
                break counts;
            }
            index = newest_now;
            attempt += 1;
        };
        if self.bucket_us.load(Ordering::SeqCst) == width {
            counts
        } else {
            Counts::default()
        }
    }

    /// The counts of the window that ends at bucket `index` (see `sum`), its calls read first
    /// when `calls_first`.
    fn sum_at(
        &self,
        generation: u32,
        index: u64,
        newest: bool,
        calls_first: bool,
        lanes: &[Lane],
    ) -> Counts {
        let sum = |words: &[AtomicU64; BUCKETS], newest: bool| -> u64 {
            let mut total = 0;
            for age in 0..BUCKETS as u64 {
                let Some(bucket_index) = index.checked_sub(age) else {
                    break;
                };
                let word = &words[slot_of(bucket_index)];
                let word = if newest && age == 0 {
                    word.fetch_add(0, Ordering::SeqCst)
                } else {
                    word.load(Ordering::SeqCst)
                };
                if Tag::of(word) == Tag::new(generation, bucket_index) {
                    total += word & COUNT_MASK;
                }
            }
            total
        };
        let calls = || {
            sum(&self.calls, newest)
                + lanes
                    .iter()
                    .map(|lane| sum(&lane.calls, newest))
                    .sum::<u64>()
        };
        if calls_first {
            let calls = calls();
            let failures = sum(&self.failures, false);
            let slow = sum(&self.slow, false);
            return Counts {
                calls,
                failures,
                slow,
            };
        }
        // Failures and slow calls first: a healthy window (none of either) never needs its calls
        // summed to know that it does not trip, and a failure that lands meanwhile (its call is
        // counted before it) cannot show without its call.
        let failures = sum(&self.failures, false);
        let slow = sum(&self.slow, false);
        let calls = calls();
        Counts {
            calls,
            failures,
            slow,
        }
    }

    /// Whether the window of `generation` at `now_us` opens the breaker by `policy`. A window with
    /// no failure and no slow call in it is judged with one load. `after_bad`: judged by the
    /// recorder of a failure or slow call, which must read the newest call count of its bucket
    /// (see the module documentation).
    pub fn trips(
        &self,
        policy: &RatePolicy,
        generation: u32,
        now_us: u64,
        after_bad: bool,
    ) -> bool {
        self.trips_with(policy, generation, now_us, after_bad, None)
    }

    /// [`Window::trips`], with the calls counted in `lanes` added: the lanes made by now, which
    /// the judge of a failure or slow call (`after_bad`) reads with a read-modify-write of their
    /// state word, after noting its bucket (see [`crate::lanes`]).
    pub fn trips_with(
        &self,
        policy: &RatePolicy,
        generation: u32,
        now_us: u64,
        after_bad: bool,
        lanes: Option<&Lanes>,
    ) -> bool {
        if !self.may_trip(generation, self.judged_index(now_us)) {
            return false;
        }
        let lanes = match lanes {
            Some(lanes) if after_bad => lanes.made_for_judge(),
            Some(lanes) => lanes.made(),
            None => &[],
        };
        policy.trips(self.sum(generation, now_us, after_bad, lanes))
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

    /// Bug 42: a full bucket counts neither the call nor its failure, so its rate stays that of
    /// the calls it holds (before, calls stopped at the limit and failures went on: half of the
    /// calls failing read as all of them, and tripped a breaker at 0.6).
    #[test]
    fn a_full_bucket_counts_neither_the_call_nor_its_failure() {
        let p = policy(1_000_000, 5, 0.6);
        let w = window(&p);
        let (generation, now) = (3, 50_000);
        let index = w.index(now);
        let tag = Tag::new(generation, index);
        let held = COUNT_MASK - 4;
        w.calls[slot_of(index)].store(tag.word(held), Ordering::SeqCst);
        w.failures[slot_of(index)].store(tag.word(held / 2), Ordering::SeqCst);
        assert_eq!(w.record(generation, now, false, false, || true), held + 1);
        for _ in 0..3 {
            assert_eq!(w.count_success(generation, |_| now, || true), None);
        }
        assert_eq!(w.counts(generation, now).calls, COUNT_MASK);
        assert_eq!(
            w.record(generation, now, true, true, || true),
            0,
            "the bucket is full"
        );
        assert_eq!(w.count_success(generation, |_| now, || true), None);
        let counts = w.counts(generation, now);
        assert_eq!(
            (counts.calls, counts.failures, counts.slow),
            (COUNT_MASK, held / 2, 0)
        );
        assert!(!w.trips(&p, generation, now, true));
        for _ in 0..1000 {
            w.record(generation, now, true, false, || true);
        }
        assert_eq!(w.counts(generation, now).failures, held / 2);
        // The next bucket counts again.
        let next = now + p.bucket_us();
        assert_eq!(w.record(generation, next, true, false, || true), 1);
        assert_eq!(w.counts(generation, next).failures, held / 2 + 1);
    }

    /// Bug 42 with the lanes: a success that finds its lane's word full counts in the window's
    /// own word instead, so that failures stop counting only when successes do.
    #[test]
    fn a_full_lane_sends_its_successes_to_the_windows_own_word() {
        let p = policy(1_000_000, 5, 0.6);
        let w = window(&p);
        let lanes = Lanes::new();
        assert!(lanes.lane(1).is_none());
        let lane = lanes.lane(2).expect("a second thread's lane");
        let (generation, now) = (3, 50_000);
        let index = w.index(now);
        lane.calls[slot_of(index)].store(
            Tag::new(generation, index).word(COUNT_MASK),
            Ordering::SeqCst,
        );
        w.calls[slot_of(index)].store(
            Tag::new(generation, index).word(COUNT_MASK - 2),
            Ordering::SeqCst,
        );
        for _ in 0..2 {
            assert_eq!(
                w.count_success_in(Counting::Shared(Some(lane)), generation, |_| now, || true),
                None
            );
        }
        let counts = w.counts_with(generation, now, lanes.made());
        assert_eq!(
            counts.calls,
            2 * COUNT_MASK,
            "both counted, in the window's own word"
        );
        // Now every word is full: neither a success nor a failure counts.
        assert_eq!(
            w.count_success_in(Counting::Shared(Some(lane)), generation, |_| now, || true),
            None
        );
        assert_eq!(w.record(generation, now, true, false, || true), 0);
        assert_eq!(w.counts_with(generation, now, lanes.made()), counts);
    }

    /// Bug 32: a reader whose clock reading is older than the buckets others rolled on to must
    /// not judge a torn window (failures whose calls were rolled away).
    #[test]
    fn a_reader_with_an_old_clock_reading_judges_the_newest_window() {
        let p = policy(1_000_000, 5, 0.6); // nine buckets of 112.5 ms
        let w = window(&p);
        let last = BUCKETS as u64 - 1;
        let at = |bucket: u64| bucket * p.bucket_us();
        for i in 0..10 {
            w.record(0, at(0), i < 8, false, || true); // bucket 0: 8 failures in 10 calls
        }
        for _ in 0..5 {
            w.record_success(0, at(last), || true); // bucket 8: 5 successes (8 / 15 < 0.6)
        }
        for bucket in last + 1..2 * last + 1 {
            for _ in 0..10 {
                w.record_success(0, at(bucket), || true); // the call words of slots 0..7 roll on
            }
        }
        // Judged at bucket 8, the slot of bucket 0 would count its 8 failures but none of its
        // calls: 8 / 5. The newest window (buckets 8..=16) holds no failure.
        assert!(!w.trips(&p, 0, at(last), true));
        assert_eq!(
            w.counts(0, at(last)),
            Counts {
                calls: 5 + 10 * last,
                failures: 0,
                slow: 0
            }
        );
    }

    #[test]
    fn size_is_thirty_words_and_zeroed_words_are_empty() {
        assert_eq!(Window::SIZE, 240);
        assert_eq!(std::mem::size_of::<Window>(), Window::SIZE);
        let w = Window::new(0);
        assert_eq!(w.counts(0, 0), Counts::default());
        assert_eq!(w.counts(3, 123_456), Counts::default());
        assert!(!w.trips(&policy(1000, 1, 0.5), 0, 0, false));
    }

    #[test]
    fn a_success_asks_for_judging_only_with_a_failure_in_the_window() {
        let p = policy(1000, 2, 0.3);
        let w = window(&p);
        assert!(!w.record_success(4, 0, || true));
        w.record(4, 10, true, false, || true);
        assert!(w.record_success(4, 20, || true));
        assert!(w.trips(&p, 4, 20, false), "1 failure in 3 calls >= 0.3");
        assert!(
            w.record_success(4, 10 + 899, || true),
            "the failure is still in the window 0.9 windows later"
        );
        assert!(
            !w.record_success(4, 10 + 1101, || true),
            "and gone 1.1 windows later"
        );
        assert!(!w.record_success(5, 20, || true), "another generation");
    }

    /// Bug 36: a success counted with a lagging reading that lags into the bucket before the
    /// failure recorded just before it (with an exact reading) still asks for judging, and the
    /// judge counts both.
    #[test]
    fn a_lagging_success_just_after_a_failure_in_a_newer_bucket_asks_for_judging() {
        let lag = 4_000;
        let p = policy(60_000_000, 2, 0.5);
        let word = p.bucket_word(Some(lag));
        let width = word & !LAGGING;
        let w = Window::new(word);
        let boundary = 7 * width;
        w.record(2, boundary + 1, true, false, || true); // exact reading: the newer bucket
        let lagging = boundary - lag / 2; // the next success's lagging reading: the bucket before
        assert!(w.record_success(2, lagging, || true));
        assert!(
            w.trips(&p, 2, lagging, false),
            "1 failure in 2 calls >= 0.5"
        );
        assert!(
            w.record_success(2, boundary - width - 1, || true),
            "two buckets before (a ticker the OS ran late): still judged"
        );
        assert!(
            !w.record_success(2, boundary + 9 * width, || true),
            "a whole window after the failure: nothing to judge"
        );
    }

    #[test]
    fn a_new_width_forgets_everything() {
        let p = policy(1000, 1, 0.5);
        let w = window(&p);
        w.record(1, 10, true, true, || true);
        w.set_bucket_us(p.bucket_us());
        assert_eq!(w.counts(1, 10).calls, 1, "same width: nothing forgotten");
        w.set_bucket_us(50);
        assert_eq!(w.counts(1, 10), Counts::default());
    }

    #[test]
    fn counts_age_out_bucket_by_bucket() {
        let p = policy(1000, 1, 0.5);
        let w = window(&p);
        w.record(1, 0, true, false, || true);
        w.record(1, 50, false, true, || true);
        assert_eq!(
            w.counts(1, 899),
            Counts {
                calls: 2,
                failures: 1,
                slow: 1
            }
        );
        assert_eq!(w.counts(1, 899).calls, 2, "within 0.9 windows");
        assert_eq!(w.counts(1, 1101).calls, 0, "more than 1.1 windows later");
        let width = p.bucket_us();
        assert_eq!(
            w.counts(1, 9 * width - 1).calls,
            2,
            "the 9th bucket still holds it"
        );
        assert_eq!(w.counts(1, 9 * width).calls, 0, "the 10th forgets it");
    }

    #[test]
    fn another_generation_sees_an_empty_window_and_resets_on_record() {
        let p = policy(1000, 1, 0.5);
        let w = window(&p);
        w.record(1, 10, true, false, || true);
        assert_eq!(w.counts(2, 10), Counts::default());
        w.record(2, 10, false, false, || true);
        assert_eq!(w.counts(2, 10).calls, 1);
        assert_eq!(w.counts(2, 10).failures, 0);
        // A late recorder of generation 1 finds a newer tag and drops its count.
        assert_eq!(w.record(1, 10, true, false, || false), 0);
        assert_eq!(w.counts(2, 10).calls, 1);
        assert_eq!(w.counts(2, 10).failures, 0);
    }

    #[test]
    fn the_newest_failure_note_compares_whole_indices() {
        let p = policy(100, 1, 0.5);
        let w = window(&p);
        w.record(3, 0, true, false, || true);
        // Far more than 2^26 buckets later (a tag's index would have wrapped): the note moves on.
        let later = 7 << 40;
        w.record(3, later, true, false, || true);
        assert!(w.may_trip(3, later / p.bucket_us()));
        // A late failure of an older bucket does not move it back.
        w.record(3, later - 20, true, false, || true);
        assert!(w.may_trip(3, later / p.bucket_us()));
        // Another generation's note is replaced only by a current recorder.
        w.record(4, later, true, false, || false);
        assert!(w.may_trip(3, later / p.bucket_us()));
        w.record(4, later, true, false, || true);
        assert!(w.may_trip(4, later / p.bucket_us()) && !w.may_trip(3, later / p.bucket_us()));
    }

    #[test]
    fn a_word_from_long_ago_is_reset_not_mistaken_for_a_newer_one() {
        let p = policy(10, 1, 0.5);
        let w = window(&p);
        w.record(7, 3, true, true, || true);
        // Half the tag's index range later (where a wrapping comparison turns around), and with
        // generation tags that look newer by wrapping: the old words are stale, the count lands.
        let later = 3 + (1 << (INDEX_BITS - 1)) + 5;
        assert_eq!(w.record(7, later, false, false, || true), 1);
        assert_eq!(w.record(7 + 200, later + 1, true, false, || true), 1);
        assert_eq!(w.counts(7 + 200, later + 1).failures, 1);
    }

    /// The exact width keeps the contract (8 buckets hold 0.9 windows, 9 fit in 1.1) for every
    /// window from `MIN_WINDOW_US` up, rounded to whole microseconds: every width to 200 ms and
    /// a spread of wider ones to the longest window.
    #[test]
    fn nine_buckets_of_whole_microseconds_keep_a_tenth_of_every_window() {
        let longest = crate::machine::MAX_DURATION_MS * 1000;
        let spread = (0..=35).map(|bits| (1u64 << bits).max(MIN_WINDOW_US) * 1000 - 1);
        for window_us in (MIN_WINDOW_US..200_000).chain(spread).chain([longest]) {
            let p = policy(window_us, 1, 0.5);
            let width = p.bucket_us();
            assert!(8 * width * 10 >= 9 * window_us, "{window_us} µs: {width}");
            assert!(9 * width * 10 <= 11 * window_us, "{window_us} µs: {width}");
            assert_eq!(p.lagging_bucket_us(0), Some(width));
        }
    }

    /// The lagging width keeps the contract for readings up to the lag late, whichever of the
    /// two readings (the recorder's, the reader's) lags: true ages just under 0.9 windows always
    /// count, ages just over 1.1 windows never do, counted through a window itself.
    #[test]
    fn a_lagging_width_keeps_the_contract_for_readings_up_to_its_lag_late() {
        for lag in [1_000u64, 2_000, 8_000, 20_000] {
            let narrow = policy(24 * lag, 1, 0.5);
            assert_eq!(narrow.lagging_bucket_us(lag), None);
            assert_eq!(narrow.bucket_word(Some(lag)), narrow.bucket_us());
            for window_us in [
                25 * lag + 100,
                50 * lag,
                10_000_000,
                10_000_001,
                123_456_789,
            ] {
                let p = policy(window_us, 1, 0.5);
                let width = p
                    .lagging_bucket_us(lag)
                    .expect("a window of 25 lags and 100 µs fits the lag");
                let word = p.bucket_word(Some(lag));
                assert_eq!(word, width | LAGGING);
                assert_eq!(p.bucket_word(None), p.bucket_us());
                let keep = (9 * window_us).div_ceil(10) - 1; // younger than 0.9 windows
                let forget = 11 * window_us / 10 + 1; // older than 1.1 windows
                for finished in [lag, lag + 1, lag + width - 1, lag + 7 * width + 3] {
                    for (recorder_lag, reader_lag) in [(0, 0), (lag, 0), (0, lag), (lag, lag)] {
                        for (age, counts) in [(keep, 1), (keep / 2, 1), (0, 1), (forget, 0)] {
                            let w = Window::new(word);
                            assert!(w.tolerates_lag());
                            w.record(1, finished - recorder_lag, false, false, || true);
                            let read = finished + age - reader_lag;
                            assert_eq!(
                                w.counts(1, read).calls,
                                counts,
                                "window {window_us} µs, lag {lag}: finished at {finished}, \
                                 age {age}, readings {recorder_lag} and {reader_lag} late"
                            );
                        }
                    }
                }
            }
        }
        assert!(!Window::new(policy(1000, 1, 0.5).bucket_us()).tolerates_lag());
    }

    /// The width word's reciprocal finds the same bucket as a division, for widths from 1 µs to
    /// the widest window's (lagging) bucket and times up to 2^55 µs, around every multiple of the
    /// width.
    #[test]
    fn the_reciprocal_of_a_width_divides_exactly() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let longest = policy(crate::machine::MAX_DURATION_MS * 1000, 1, 0.5);
        let widest = longest
            .lagging_bucket_us(1 << 20)
            .expect("the longest window fits any lag");
        let mut widths = vec![1, 2, 3, 7, 10, 100, 1000, 1_000_889, widest, (1 << 41) + 1];
        widths.extend((0..2000).map(|_| 1 + next() % widest));
        widths.extend((0..42).map(|bits| 1u64 << bits));
        for width in widths {
            for marked in [width, width | LAGGING] {
                let word = width_word(marked);
                assert_eq!(word & LAGGING, marked & LAGGING);
                let mut times = vec![0, 1, MAX_TIME_US, MAX_TIME_US - 1];
                for _ in 0..20 {
                    let multiple = (next() % (MAX_TIME_US / width)) * width;
                    times.extend([multiple, multiple.saturating_sub(1), multiple + 1]);
                    times.push(next() % (1 << 45));
                }
                for t in times {
                    assert_eq!(index_of(word, t), t / width, "{t} / {width}");
                }
            }
        }
        assert_eq!(
            index_of(width_word(0), 12_345),
            12_345,
            "a width of 0 reads as 1"
        );
        assert_eq!(index_of(0, 12_345), 0, "a zeroed word: one bucket");
    }

    #[test]
    fn buckets_list_the_generations_counts_by_time_index() {
        let p = policy(1000, 1, 0.5); // buckets of 113 us
        let w = window(&p);
        w.record(2, 50, true, false, || true);
        w.record(2, 250, false, true, || true);
        w.record(2, 260, false, false, || true);
        let buckets = w.buckets(2, 299);
        assert_eq!(buckets[0].0, 2, "newest first, whole time index");
        assert_eq!(
            buckets[0].1,
            Counts {
                calls: 2,
                failures: 0,
                slow: 1
            }
        );
        assert_eq!(buckets[1], (1, Counts::default()));
        assert_eq!(
            buckets[2],
            (
                0,
                Counts {
                    calls: 1,
                    failures: 1,
                    slow: 0
                }
            )
        );
        let total: u64 = w.buckets(2, 299).iter().map(|(_, c)| c.calls).sum();
        assert_eq!(total, w.counts(2, 299).calls);
        assert!(w
            .buckets(3, 299)
            .iter()
            .all(|(_, c)| *c == Counts::default()));
        assert!(
            w.buckets(2, 1050)
                .iter()
                .all(|(i, c)| *i > 0 && c.failures == 0),
            "bucket 0 left the window"
        );
    }

    /// The closed fast path compares a bucket's word with `Tag::word_of` and counts the call
    /// with one CAS only when they match: a wrong `word_of` would send every success the long
    /// way, counting right but slowly, which no other test would see.
    #[test]
    fn the_fast_tag_word_is_the_tag_with_a_count_of_zero() {
        for generation in [0, 1, 7, 255, 256, 0x1FF_FFFF, u32::MAX] {
            let indices = [
                0,
                1,
                9,
                12_345,
                INDEX_MASK,
                INDEX_MASK + 1,
                7 << 40,
                MAX_TIME_US,
            ];
            for index in indices {
                assert_eq!(
                    Tag::word_of(generation, index),
                    Tag::new(generation, index).word(0),
                    "generation {generation}, index {index}"
                );
            }
        }
        // A bucket's first success resets its word to the tag, the second adds one to it.
        let w = Window::new(1000);
        let slot = &w.calls[slot_of(index_of(w.bucket_us.load(Ordering::Relaxed), 5_500))];
        assert!(!w.record_success(3, 5_500, || true));
        let first = slot.load(Ordering::SeqCst);
        assert_eq!(first ^ Tag::word_of(3, 5), 1, "reset to the tag, count 1");
        assert!(!w.record_success(3, 5_999, || true));
        assert_eq!(slot.load(Ordering::SeqCst), first + 1);
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
