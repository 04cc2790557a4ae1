//! The numeric options of a shared breaker, kept in its slot (docs/shared-memory.md, "Options"):
//! stored when the name is created (first creation wins), changed by `configure` in any process,
//! and read by every process at each call that needs them, so that every process judges the
//! breaker by the same rules.
//!
//! Thirteen words hold them. Writers and readers agree through one more word, `options_seq`
//! (`stamp << 40 | sequence << 16 | epoch << 12 | writers in flight`, see [`SeqWord`]), without
//! any lock:
//! - a writer adds one writer, moves the sequence on and stamps the word with the time it starts,
//!   stores the words it changes, then takes its writer away and moves the sequence on again (two
//!   compare-and-swaps, so concurrent writers count each other and never wait for one another);
//! - a reader loads the sequence, the words, and the sequence again: the words are one writer's
//!   whole set when both loads are equal and no writer was in flight. Otherwise it tries again, a
//!   bounded number of times ([`READ_ATTEMPTS`]), and then uses the words as they are, each valid
//!   on its own (which is all a torn read can cost: a mix of old and new values, each in range).
//!   It never waits for a writer.
//!
//! **A writer killed in flight** leaves its count raised. Writers are in flight for a few stores,
//! so writers counted while the last one started more than [`STALE_WRITER_MS`] ago are presumed
//! dead: the next reader that finds them so (the sequence unchanged while it read) forgets them
//! (one CAS: no writers, a new epoch), and so does the next writer. Until then readers pay their
//! few attempts; afterwards nobody does (bug 38, docs/reliability.md). A writer presumed dead that
//! was only stopped finishes harmlessly: its removal counts only in the epoch it was counted in
//! (the worst it can cause is the torn read above, for a writer stopped that long mid-store).
//!
//! **A name deleted and made again while a process configures it** (bug 37): `configure` stores
//! only while the slot's claim is still the incarnation it configures ([`Slot::store_options_of`]:
//! counted in first, then the claim checked, with a `SeqCst` fence between), and a creator that
//! claims the slot waits, after a `SeqCst` fence, until the writers in flight are gone or stale
//! ([`Slot::wait_for_option_writers`]) before it writes the new incarnation's options. Of the two
//! fences one comes first: either the creator sees the writer counted and waits for its stores
//! to be done (its own then replace them), or the writer sees the claim changed and stores nothing.
//!
//! Every access of the protocol is `SeqCst`: in the one total order of those accesses, a word a
//! reader loads between its two loads of the sequence was stored before the second, so a writer
//! whose store it saw had moved the sequence on before that load (or finished before the first).
//! Model-checked in `tests/loom.rs` (`options_*`, `a_configure_of_a_deleted_incarnation_*`,
//! `a_killed_writer_*`).
//!
//! Nothing read from the mapping is trusted: [`TableOptions::decode`] turns any 13 words into
//! options in range that fit together (see its documentation for each fallback), and never panics.

use crate::layout::Slot;
use crate::sync::{fence, AtomicU64, Ordering};
use panelboard_engine::{
    Limits, OpenTime, RatePolicy, MAX_DURATION_MS, MAX_FAILURE_THRESHOLD, MAX_PROBE_COUNT,
    MIN_WINDOW_US, NO_FAILURE_THRESHOLD,
};

/// Words of options in a slot.
pub const OPTION_WORDS: usize = 13;
/// A word meaning "none" for the optional durations (`probe_timeout_ms` reads it as the default).
pub const NONE: u64 = u64::MAX;
/// The `probe_timeout` a shared breaker falls back to when its word is not a valid duration (a
/// shared breaker must have one: it is what reclaims a dead process's half-open permit).
pub const DEFAULT_PROBE_TIMEOUT_MS: u64 = 60_000;
/// Largest `slow_call_duration` in nanoseconds (the largest duration the engine accepts).
pub const MAX_SLOW_CALL_NS: u64 = MAX_DURATION_MS * 1_000_000;
/// Largest `window` in microseconds.
pub const MAX_WINDOW_US: u64 = MAX_DURATION_MS * 1_000;
/// Default `window` (10 s) and `min_calls` (10), as a local breaker has them.
pub const DEFAULT_WINDOW_US: u64 = 10_000_000;
pub const DEFAULT_MIN_CALLS: u64 = 10;

/// A writer counted in `options_seq` while the last writer started longer ago than this is
/// presumed dead (killed between its two updates): a writer is in flight for a few stores.
pub const STALE_WRITER_MS: u64 = 1_000;

const WRITERS_MASK: u64 = (1 << 12) - 1;
const EPOCH_SHIFT: u32 = 12;
const EPOCHS: u64 = 1 << 4;
const SEQUENCE_SHIFT: u32 = 16;
const SEQUENCES: u64 = 1 << 24;
const STAMP_SHIFT: u32 = 40;
const STAMPS: u64 = 1 << 24;

/// The word `options_seq`, decoded (any 64 bits are some word):
/// - bits 0..12: writers in flight;
/// - bits 12..16: the epoch, moved on each time writers presumed dead are forgotten (a writer's
///   removal counts only in the epoch that counted it);
/// - bits 16..40: the sequence, moved on by every update;
/// - bits 40..64: when the last writer started, host monotonic milliseconds modulo 2^24 (4.6 hours).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqWord(pub u64);

impl SeqWord {
    pub fn writers(self) -> u64 {
        self.0 & WRITERS_MASK
    }

    pub fn epoch(self) -> u64 {
        (self.0 >> EPOCH_SHIFT) % EPOCHS
    }

    fn sequence(self) -> u64 {
        (self.0 >> SEQUENCE_SHIFT) % SEQUENCES
    }

    fn stamp(self) -> u64 {
        self.0 >> STAMP_SHIFT
    }

    fn of(stamp: u64, sequence: u64, epoch: u64, writers: u64) -> SeqWord {
        SeqWord(
            (stamp % STAMPS) << STAMP_SHIFT
                | (sequence % SEQUENCES) << SEQUENCE_SHIFT
                | (epoch % EPOCHS) << EPOCH_SHIFT
                | writers.min(WRITERS_MASK),
        )
    }

    /// Writers are counted, and the last one started more than [`STALE_WRITER_MS`] before
    /// `now_ms`. Every caller reads its clock after loading the word, so a live writer's stamp is
    /// never ahead of it (one clock for the whole table: processes in other time namespaces are
    /// refused); a stamp from the future is garbage and reads as one from long ago, so that no
    /// wait is without end.
    pub fn stale(self, now_ms: u64) -> bool {
        self.writers() != 0 && now_ms.wrapping_sub(self.stamp()) % STAMPS > STALE_WRITER_MS
    }

    /// A writer more, starting at `now_ms`: `(word, the epoch it is counted in)`. Writers presumed
    /// dead (or a count that cannot grow, which only garbage makes) are forgotten first.
    fn started(self, now_ms: u64) -> (SeqWord, u64) {
        let (epoch, writers) = if self.stale(now_ms) || self.writers() == WRITERS_MASK {
            (self.epoch() + 1, 1)
        } else {
            (self.epoch(), self.writers() + 1)
        };
        let word = SeqWord::of(now_ms, self.sequence() + 1, epoch, writers);
        (word, word.epoch())
    }

    /// The writer counted in `epoch` gone (if its epoch is still the word's).
    fn finished(self, epoch: u64) -> SeqWord {
        let writers = if self.epoch() == epoch {
            self.writers().saturating_sub(1)
        } else {
            self.writers()
        };
        SeqWord::of(self.stamp(), self.sequence() + 1, self.epoch(), writers)
    }

    /// The writers presumed dead forgotten.
    fn forgotten(self) -> SeqWord {
        SeqWord::of(self.stamp(), self.sequence() + 1, self.epoch() + 1, 0)
    }
}

/// Times a reader tries for one writer's whole set before it reads each word on its own.
#[cfg(not(loom))]
pub const READ_ATTEMPTS: usize = 4;
#[cfg(loom)]
pub const READ_ATTEMPTS: usize = 2;

/// A shared breaker's numeric options, decoded: every value in the range `configure` accepts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TableOptions {
    /// `NO_FAILURE_THRESHOLD`: the consecutive rule off (`failure_threshold=None`).
    pub failure_threshold: u64,
    pub reset_timeout_ms: u64,
    pub half_open_max_calls: u64,
    pub success_threshold: u64,
    pub probe_timeout_ms: u64,
    pub slow_call_ns: Option<u64>,
    pub failure_rate: Option<f64>,
    pub slow_call_rate: Option<f64>,
    pub window_us: u64,
    pub min_calls: u64,
    pub backoff: f64,
    pub max_reset_timeout_ms: Option<u64>,
    pub jitter: f64,
}

impl Default for TableOptions {
    /// A local breaker's defaults, with the shared registries' finite `probe_timeout`.
    fn default() -> Self {
        let limits = Limits::default();
        TableOptions {
            failure_threshold: limits.failure_threshold,
            reset_timeout_ms: limits.reset_timeout_ms,
            half_open_max_calls: limits.half_open_max_calls,
            success_threshold: limits.success_threshold,
            probe_timeout_ms: DEFAULT_PROBE_TIMEOUT_MS,
            slow_call_ns: None,
            failure_rate: None,
            slow_call_rate: None,
            window_us: DEFAULT_WINDOW_US,
            min_calls: DEFAULT_MIN_CALLS,
            backoff: 1.0,
            max_reset_timeout_ms: None,
            jitter: 0.0,
        }
    }
}

/// Some options to store (`configure` stores only the ones it was given, so that concurrent
/// `configure`s of different options in different processes all land).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OptionsPatch {
    pub failure_threshold: Option<u64>,
    pub reset_timeout_ms: Option<u64>,
    pub half_open_max_calls: Option<u64>,
    pub success_threshold: Option<u64>,
    pub probe_timeout_ms: Option<u64>,
    pub slow_call_ns: Option<Option<u64>>,
    pub failure_rate: Option<Option<f64>>,
    pub slow_call_rate: Option<Option<f64>>,
    pub window_us: Option<u64>,
    pub min_calls: Option<u64>,
    pub backoff: Option<f64>,
    pub max_reset_timeout_ms: Option<Option<u64>>,
    pub jitter: Option<f64>,
}

impl From<&TableOptions> for OptionsPatch {
    fn from(o: &TableOptions) -> Self {
        OptionsPatch {
            failure_threshold: Some(o.failure_threshold),
            reset_timeout_ms: Some(o.reset_timeout_ms),
            half_open_max_calls: Some(o.half_open_max_calls),
            success_threshold: Some(o.success_threshold),
            probe_timeout_ms: Some(o.probe_timeout_ms),
            slow_call_ns: Some(o.slow_call_ns),
            failure_rate: Some(o.failure_rate),
            slow_call_rate: Some(o.slow_call_rate),
            window_us: Some(o.window_us),
            min_calls: Some(o.min_calls),
            backoff: Some(o.backoff),
            max_reset_timeout_ms: Some(o.max_reset_timeout_ms),
            jitter: Some(o.jitter),
        }
    }
}

/// A ratio's word: its `f64` bits, 0 for none (0.0 is no valid ratio).
fn ratio_word(ratio: Option<f64>) -> u64 {
    ratio.map_or(0, f64::to_bits)
}

fn optional_word(value: Option<u64>) -> u64 {
    value.unwrap_or(NONE)
}

impl OptionsPatch {
    /// The words to store, in slot order (see [`Slot::option_words`]); `None`: left as it is.
    pub fn encode(&self) -> [Option<u64>; OPTION_WORDS] {
        [
            self.failure_threshold,
            self.reset_timeout_ms,
            self.half_open_max_calls,
            self.success_threshold,
            self.probe_timeout_ms,
            self.slow_call_ns.map(optional_word),
            self.failure_rate.map(ratio_word),
            self.slow_call_rate.map(ratio_word),
            self.window_us,
            self.min_calls,
            self.backoff.map(f64::to_bits),
            self.max_reset_timeout_ms.map(optional_word),
            self.jitter.map(f64::to_bits),
        ]
    }

    pub fn is_empty(&self) -> bool {
        self.encode().iter().all(Option::is_none)
    }
}

/// A ratio in (0, 1], or none (0, NaN, anything out of range: that rule off).
fn decode_ratio(word: u64) -> Option<f64> {
    let ratio = f64::from_bits(word);
    (ratio > 0.0 && ratio <= 1.0).then_some(ratio)
}

impl TableOptions {
    /// Options from any 13 words (slot order), each validated on its own, then made to fit
    /// together. Out-of-range values fall back as follows, so that the breaker keeps working and
    /// keeps a trip rule, whoever wrote the words:
    /// - counts and durations are clamped into their range (`failure_threshold`, `min_calls`: 1 ..
    ///   2^32 - 1; `half_open_max_calls`, `success_threshold`: 1 .. 65535; durations: at most
    ///   2^35 ms; `window`: 100 µs .. 2^35 ms), `u64::MAX` meaning none where an option can be
    ///   none (`failure_threshold`, `slow_call_duration`, `max_reset_timeout`);
    /// - `probe_timeout` of 0 or none is the default 60 s (a shared breaker must have one);
    /// - a rate that is not in (0, 1] (0, NaN, negative, above 1) is none: that rule is off;
    /// - `backoff` that is not a finite number >= 1 is 1 (no growth); `jitter` outside [0, 1) is 0;
    /// - `slow_call_rate` without `slow_call_duration` is none, and `max_reset_timeout` below
    ///   `reset_timeout` is `reset_timeout` (what the engine makes of them anyway);
    /// - with no trip rule left (the consecutive rule off and no rate rule), the consecutive rule
    ///   is back with the default `failure_threshold` of 5.
    pub fn decode(words: [u64; OPTION_WORDS]) -> TableOptions {
        let [failure_threshold, reset_timeout_ms, half_open_max_calls, success_threshold, probe_timeout_ms, slow_call_ns, failure_rate, slow_call_rate, window_us, min_calls, backoff, max_reset_timeout_ms, jitter] =
            words;
        let reset_timeout_ms = reset_timeout_ms.min(MAX_DURATION_MS);
        let slow_call_ns = (slow_call_ns != NONE).then(|| slow_call_ns.min(MAX_SLOW_CALL_NS));
        let slow_call_rate = decode_ratio(slow_call_rate).filter(|_| slow_call_ns.is_some());
        let failure_rate = decode_ratio(failure_rate);
        let mut failure_threshold = match failure_threshold {
            NO_FAILURE_THRESHOLD => NO_FAILURE_THRESHOLD,
            threshold => threshold.clamp(1, MAX_FAILURE_THRESHOLD),
        };
        if failure_threshold == NO_FAILURE_THRESHOLD
            && failure_rate.is_none()
            && slow_call_rate.is_none()
        {
            failure_threshold = Limits::default().failure_threshold;
        }
        let backoff = f64::from_bits(backoff);
        let jitter = f64::from_bits(jitter);
        TableOptions {
            failure_threshold,
            reset_timeout_ms,
            half_open_max_calls: half_open_max_calls.clamp(1, MAX_PROBE_COUNT),
            success_threshold: success_threshold.clamp(1, MAX_PROBE_COUNT),
            probe_timeout_ms: match probe_timeout_ms {
                0 | NONE => DEFAULT_PROBE_TIMEOUT_MS,
                ms => ms.min(MAX_DURATION_MS),
            },
            slow_call_ns,
            failure_rate,
            slow_call_rate,
            window_us: window_us.clamp(MIN_WINDOW_US, MAX_WINDOW_US),
            min_calls: min_calls.clamp(1, MAX_FAILURE_THRESHOLD),
            backoff: if backoff.is_finite() && backoff >= 1.0 {
                backoff
            } else {
                1.0
            },
            max_reset_timeout_ms: (max_reset_timeout_ms != NONE)
                .then(|| max_reset_timeout_ms.clamp(reset_timeout_ms, MAX_DURATION_MS)),
            jitter: if (0.0..1.0).contains(&jitter) {
                jitter
            } else {
                0.0
            },
        }
    }

    /// What the engine runs with.
    pub fn limits(&self) -> Limits {
        Limits {
            failure_threshold: self.failure_threshold,
            reset_timeout_ms: self.reset_timeout_ms,
            half_open_max_calls: self.half_open_max_calls,
            success_threshold: self.success_threshold,
            probe_timeout_ms: Some(self.probe_timeout_ms),
            rate: (self.failure_rate.is_some() || self.slow_call_rate.is_some()).then_some(
                RatePolicy {
                    window_us: self.window_us,
                    min_calls: self.min_calls,
                    failure_rate: self.failure_rate,
                    slow_call_rate: self.slow_call_rate,
                },
            ),
            open_time: OpenTime {
                backoff: self.backoff,
                max_ms: self.max_reset_timeout_ms.unwrap_or(MAX_DURATION_MS),
                jitter: self.jitter,
            },
        }
    }

    /// The width word of the window's buckets for these options on a host whose published clock
    /// readings lag by up to `lag_us` (set in the slot's window when the name is created, and by a
    /// `configure` that changes `window`). Every process of a host computes the same word.
    pub fn bucket_word(&self, lag_us: Option<u64>) -> u64 {
        bucket_word(self.window_us, lag_us)
    }
}

/// The width word of a window of `window_us` (see `RatePolicy::bucket_word`).
pub fn bucket_word(window_us: u64, lag_us: Option<u64>) -> u64 {
    RatePolicy {
        window_us,
        min_calls: 1,
        failure_rate: None,
        slow_call_rate: None,
    }
    .bucket_word(lag_us)
}

/// Options read from a slot, and whether they are one writer's whole set (`false`: a writer was
/// in flight at every attempt, or one died in flight; each option was read on its own).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReadOptions {
    pub options: TableOptions,
    pub whole: bool,
}

impl Slot {
    /// The option words, in the order of [`OptionsPatch::encode`] and [`TableOptions::decode`].
    pub fn option_words(&self) -> [&AtomicU64; OPTION_WORDS] {
        [
            &self.failure_threshold,
            &self.reset_timeout_ms,
            &self.half_open_max_calls,
            &self.success_threshold,
            &self.probe_timeout_ms,
            &self.slow_call_ns,
            &self.failure_rate,
            &self.slow_call_rate,
            &self.window_us,
            &self.min_calls,
            &self.backoff,
            &self.max_reset_timeout_ms,
            &self.jitter,
        ]
    }

    /// Stores the options `patch` gives, for every process (see the module documentation): the
    /// creation's store (the slot is claimed), or a store whose slot nobody can re-create.
    pub fn store_options(&self, patch: &OptionsPatch) {
        self.write_options(None, patch, crate::sync::now_ms, || ());
    }

    /// `configure`'s store: the options `patch` gives, and `also` (the window's new width) in the
    /// same section, only while the slot's claim is still `claim`, the incarnation configured.
    /// `false`, having stored nothing, when the name was deleted meanwhile: its next incarnation
    /// keeps its creator's options (bug 37).
    pub fn store_options_of(&self, claim: u64, patch: &OptionsPatch, also: impl FnOnce()) -> bool {
        self.store_options_of_at(claim, patch, also, crate::sync::now_ms())
    }

    /// [`Slot::store_options_of`], at host time `now_ms`.
    pub fn store_options_of_at(
        &self,
        claim: u64,
        patch: &OptionsPatch,
        also: impl FnOnce(),
        now_ms: u64,
    ) -> bool {
        self.write_options(Some(claim), patch, || now_ms, also)
    }

    fn write_options(
        &self,
        claim: Option<u64>,
        patch: &OptionsPatch,
        now_ms: impl Fn() -> u64,
        also: impl FnOnce(),
    ) -> bool {
        let epoch = self.begin_options_write(now_ms);
        // Counted in before the claim is checked, and a creator claims before it looks for
        // writers: with a fence on each side, one of the two sees the other.
        fence(Ordering::SeqCst);
        let still = claim.is_none_or(|claim| self.claim.load(Ordering::SeqCst) == claim);
        if still {
            also();
            for (word, value) in self.option_words().into_iter().zip(patch.encode()) {
                if let Some(value) = value {
                    word.store(value, Ordering::SeqCst);
                }
            }
        }
        self.end_options_write(epoch);
        still
    }

    /// Counts a writer in (see [`SeqWord::started`]); returns the epoch it is counted in. The
    /// clock is read after each load of the word, so that a stamp another writer put there is
    /// never in the future of this one's reading (it would look stale, and that writer forgotten).
    pub fn begin_options_write(&self, now_ms: impl Fn() -> u64) -> u64 {
        let mut seen = self.options_seq.load(Ordering::SeqCst);
        loop {
            let (word, epoch) = SeqWord(seen).started(now_ms());
            match self.options_seq.compare_exchange(
                seen,
                word.0,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return epoch,
                Err(actual) => seen = actual,
            }
        }
    }

    /// Counts the writer of `epoch` out.
    pub fn end_options_write(&self, epoch: u64) {
        let mut seen = self.options_seq.load(Ordering::SeqCst);
        loop {
            let word = SeqWord(seen).finished(epoch);
            match self.options_seq.compare_exchange(
                seen,
                word.0,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return,
                Err(actual) => seen = actual,
            }
        }
    }

    /// Waits until no writer of the options is in flight, or those in flight are stale: what a
    /// creator does after claiming the slot (and a `SeqCst` fence) and before writing the new
    /// incarnation's options, which a `configure` of the deleted incarnation that checked its
    /// claim in time is still storing (bug 37). A writer is in flight for a few stores; one that
    /// is not done [`STALE_WRITER_MS`] after the last writer started is presumed dead, so the
    /// wait is bounded whatever the word holds.
    pub fn wait_for_option_writers(&self, now_ms: impl Fn() -> u64, pause: impl Fn(u32)) {
        let mut round = 0u32;
        loop {
            let seen = SeqWord(self.options_seq.load(Ordering::SeqCst));
            if seen.writers() == 0 || seen.stale(now_ms()) {
                return;
            }
            pause(round);
            round = round.saturating_add(1);
        }
    }

    /// The options, as one writer's whole set if a few attempts can get one (see the module
    /// documentation); never waits longer, and any words give options in range.
    pub fn read_options(&self) -> ReadOptions {
        self.read_options_at(crate::sync::now_ms)
    }

    /// [`Slot::read_options`], with the host's clock `now_ms` (read only when writers are counted
    /// and none started or finished during an attempt: to tell whether they are presumed dead, and
    /// then forget them).
    pub fn read_options_at(&self, now_ms: impl FnOnce() -> u64) -> ReadOptions {
        let words = self.option_words();
        let mut values = [0u64; OPTION_WORDS];
        let mut clock = Some(now_ms);
        for attempt in 1..=READ_ATTEMPTS {
            let before = self.options_seq.load(Ordering::SeqCst);
            for (value, word) in values.iter_mut().zip(words) {
                *value = word.load(Ordering::SeqCst);
            }
            let after = self.options_seq.load(Ordering::SeqCst);
            if before == after {
                let seen = SeqWord(before);
                if seen.writers() == 0 {
                    return ReadOptions {
                        options: TableOptions::decode(values),
                        whole: true,
                    };
                }
                // Counted writers, none starting or finishing meanwhile: ones in flight now, or
                // ones killed in flight. Stale ones are forgotten, once, by whoever sees it first.
                if let Some(now_ms) = clock.take() {
                    if seen.stale(now_ms())
                        && self
                            .options_seq
                            .compare_exchange(
                                before,
                                seen.forgotten().0,
                                Ordering::SeqCst,
                                Ordering::SeqCst,
                            )
                            .is_ok()
                    {
                        break;
                    }
                }
            }
            if attempt < READ_ATTEMPTS {
                crate::sync::spin();
            }
        }
        ReadOptions {
            options: TableOptions::decode(values),
            whole: false,
        }
    }

    /// What the engine runs with (`read_options`, then `TableOptions::limits`).
    pub fn limits(&self) -> Limits {
        self.read_options().options.limits()
    }

    /// Whether the options have a rate rule (`failure_rate`, or `slow_call_rate` with
    /// `slow_call_duration`), read word by word and validated like the others: the closed fast
    /// path asks it at every success, to count the success in the slot's window only then (bug 33).
    #[inline]
    pub fn has_rate_rule(&self) -> bool {
        decode_ratio(self.failure_rate.load(Ordering::Relaxed)).is_some()
            || (decode_ratio(self.slow_call_rate.load(Ordering::Relaxed)).is_some()
                && self.slow_call_ns().is_some())
    }

    /// `slow_call_duration` alone (one load, validated like the others): whether calls of this
    /// breaker are timed, which the closed fast path asks at every call.
    #[inline]
    pub fn slow_call_ns(&self) -> Option<u64> {
        let ns = self.slow_call_ns.load(Ordering::Relaxed);
        (ns != NONE).then(|| ns.min(MAX_SLOW_CALL_NS))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn sample() -> TableOptions {
        TableOptions {
            failure_threshold: NO_FAILURE_THRESHOLD,
            reset_timeout_ms: 1_500,
            half_open_max_calls: 3,
            success_threshold: 2,
            probe_timeout_ms: 9_000,
            slow_call_ns: Some(250_000_000),
            failure_rate: Some(0.25),
            slow_call_rate: Some(0.75),
            window_us: 2_000_000,
            min_calls: 7,
            backoff: 2.5,
            max_reset_timeout_ms: Some(60_000),
            jitter: 0.125,
        }
    }

    fn stored(slot: &Slot) -> [u64; OPTION_WORDS] {
        slot.option_words().map(|w| w.load(Ordering::Relaxed))
    }

    #[test]
    fn options_round_trip_through_a_slot() {
        let slot = Slot::zeroed();
        for options in [TableOptions::default(), sample()] {
            slot.store_options(&OptionsPatch::from(&options));
            let read = slot.read_options();
            assert_eq!(
                read,
                ReadOptions {
                    options,
                    whole: true
                }
            );
            assert_eq!(slot.slow_call_ns(), options.slow_call_ns);
        }
        let limits = sample().limits();
        let rate = limits.rate.expect("a rate rule");
        assert_eq!((rate.window_us, rate.min_calls), (2_000_000, 7));
        assert_eq!(limits.open_time.max_ms, 60_000);
        assert_eq!(TableOptions::default().limits().rate, None);
    }

    #[test]
    fn a_patch_changes_only_the_options_it_gives() {
        let slot = Slot::zeroed();
        slot.store_options(&OptionsPatch::from(&sample()));
        slot.store_options(&OptionsPatch {
            min_calls: Some(40),
            failure_rate: Some(None),
            ..OptionsPatch::default()
        });
        let read = slot.read_options();
        assert!(read.whole);
        assert_eq!(
            read.options,
            TableOptions {
                min_calls: 40,
                failure_rate: None,
                ..sample()
            }
        );
        assert!(OptionsPatch::default().is_empty());
    }

    #[test]
    fn a_writer_that_died_in_flight_is_forgotten_once_stale() {
        let slot = Slot::zeroed();
        slot.store_options(&OptionsPatch::from(&sample()));
        // A writer's first update at time 5_000, and nothing after it.
        let _ = slot.begin_options_write(|| 5_000);
        let seq = |slot: &Slot| SeqWord(slot.options_seq.load(Ordering::SeqCst));
        let stuck = seq(&slot);
        assert_eq!(stuck.writers(), 1);
        // Young: it may be storing; readers take each word on their own and forget nothing.
        let read = slot.read_options_at(|| 5_000 + STALE_WRITER_MS);
        assert_eq!(
            read,
            ReadOptions {
                options: sample(),
                whole: false
            }
        );
        assert_eq!(
            seq(&slot),
            stuck,
            "a reader changes nothing while it may be alive"
        );
        // Stale: the first reader forgets it; the next reads are whole at the first attempt,
        // and never read the clock again.
        let read = slot.read_options_at(|| 5_001 + STALE_WRITER_MS);
        assert!(!read.whole);
        assert_eq!(seq(&slot).writers(), 0);
        assert_ne!(seq(&slot).epoch(), stuck.epoch());
        let read = slot.read_options_at(|| panic!("no clock read without writers"));
        assert_eq!(
            read,
            ReadOptions {
                options: sample(),
                whole: true
            }
        );
        // A stuck writer is also forgotten by the next writer that finds it stale.
        let _ = slot.begin_options_write(|| 9_000);
        let _ = slot.begin_options_write(|| 9_000);
        let epoch = slot.begin_options_write(|| 9_001 + STALE_WRITER_MS);
        assert_eq!(seq(&slot).writers(), 1, "the two stuck ones forgotten");
        slot.end_options_write(epoch);
        assert!(slot.read_options_at(|| panic!("no writers")).whole);
    }

    #[test]
    fn a_writer_presumed_dead_that_finishes_counts_out_nobody_else() {
        let slot = Slot::zeroed();
        let stopped = slot.begin_options_write(|| 0);
        // Presumed dead (a reader forgets it), then another writer starts.
        let _ = slot.read_options_at(|| STALE_WRITER_MS + 1);
        let live = slot.begin_options_write(|| STALE_WRITER_MS + 2);
        // The stopped one finishes: the live one is still counted, so readers are not misled.
        slot.end_options_write(stopped);
        assert_eq!(
            SeqWord(slot.options_seq.load(Ordering::SeqCst)).writers(),
            1
        );
        assert!(!slot.read_options_at(|| STALE_WRITER_MS + 3).whole);
        slot.end_options_write(live);
        assert!(slot.read_options_at(|| STALE_WRITER_MS + 3).whole);
    }

    #[test]
    fn a_configure_of_a_slot_whose_claim_changed_stores_nothing() {
        let slot = Slot::zeroed();
        slot.store_options(&OptionsPatch::from(&sample()));
        slot.claim.store(7, Ordering::SeqCst);
        let patch = OptionsPatch {
            min_calls: Some(3),
            ..OptionsPatch::default()
        };
        let mut ran = false;
        assert!(!slot.store_options_of(8, &patch, || ran = true));
        assert!(!ran);
        assert_eq!(slot.read_options().options, sample());
        assert!(slot.store_options_of(7, &patch, || ran = true));
        assert!(ran);
        assert_eq!(slot.read_options().options.min_calls, 3);
    }

    #[test]
    fn waiting_for_writers_is_bounded_whatever_the_word_holds() {
        let slot = Slot::zeroed();
        slot.wait_for_option_writers(|| panic!("no writers: no clock"), |_| panic!("no wait"));
        // A writer that never finishes: waited for until stale, on the caller's clock.
        let _ = slot.begin_options_write(|| 100);
        let now = std::cell::Cell::new(100);
        slot.wait_for_option_writers(|| now.get(), |_| now.set(now.get() + 10));
        assert!(now.get() > 100 + STALE_WRITER_MS);
        // Any word (garbage stamps from the future included) ends the wait in bounded time.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            slot.options_seq.store(seed, Ordering::SeqCst);
            let now = std::cell::Cell::new(seed.rotate_left(17));
            let start = now.get();
            slot.wait_for_option_writers(|| now.get(), |_| now.set(now.get() + 1));
            assert!(now.get().wrapping_sub(start) <= STALE_WRITER_MS + 1);
            let _ = slot.read_options_at(|| start);
            let epoch = slot.begin_options_write(|| start);
            slot.end_options_write(epoch);
        }
    }

    #[test]
    fn garbage_decodes_to_options_in_range_that_fit_together() {
        let garbage = TableOptions::decode([
            NO_FAILURE_THRESHOLD,
            u64::MAX - 1,
            0,
            u64::MAX - 1,
            0,
            u64::MAX - 1,
            f64::NAN.to_bits(),
            0.5f64.to_bits(),
            0,
            0,
            f64::NEG_INFINITY.to_bits(),
            3,
            1.0f64.to_bits(),
        ]);
        assert_eq!(
            garbage,
            TableOptions {
                failure_threshold: NO_FAILURE_THRESHOLD, // the slow-call rate is a trip rule
                reset_timeout_ms: MAX_DURATION_MS,
                half_open_max_calls: 1,
                success_threshold: MAX_PROBE_COUNT,
                probe_timeout_ms: DEFAULT_PROBE_TIMEOUT_MS,
                slow_call_ns: Some(MAX_SLOW_CALL_NS),
                failure_rate: None,
                slow_call_rate: Some(0.5),
                window_us: MIN_WINDOW_US,
                min_calls: 1,
                backoff: 1.0,
                max_reset_timeout_ms: Some(MAX_DURATION_MS),
                jitter: 0.0,
            }
        );
        // No trip rule left: the consecutive rule is back, with the default threshold.
        let mut words = OptionsPatch::from(&sample()).encode().map(Option::unwrap);
        words[6] = 2.0f64.to_bits(); // failure_rate above 1
        words[5] = NONE; // no slow_call_duration, so no slow-call rate
        let options = TableOptions::decode(words);
        assert_eq!(
            (
                options.failure_threshold,
                options.failure_rate,
                options.slow_call_rate
            ),
            (5, None, None)
        );
    }

    /// Any words: decoding never panics, and what it gives is in range and fits together.
    #[test]
    fn fuzz_option_words() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let specials = [
            0,
            1,
            NONE,
            NONE - 1,
            f64::NAN.to_bits(),
            f64::INFINITY.to_bits(),
            (-1.0f64).to_bits(),
            0.5f64.to_bits(),
            1.0f64.to_bits(),
            1e300f64.to_bits(),
        ];
        let slot = Slot::zeroed();
        for round in 0..50_000 {
            let words: [u64; OPTION_WORDS] = std::array::from_fn(|_| match next() % 3 {
                0 => specials[(next() % specials.len() as u64) as usize],
                1 => next() % 100_000,
                _ => next(),
            });
            for (word, value) in slot.option_words().into_iter().zip(words) {
                word.store(value, Ordering::Relaxed);
            }
            if round % 5 == 0 {
                slot.options_seq.store(next(), Ordering::Relaxed);
            }
            let read = slot.read_options();
            assert_eq!(stored(&slot), words, "reading changes nothing");
            let o = read.options;
            assert!(o.failure_threshold == NO_FAILURE_THRESHOLD || o.failure_threshold >= 1);
            assert!(o.failure_threshold != NO_FAILURE_THRESHOLD || o.limits().rate.is_some());
            assert!(o.reset_timeout_ms <= MAX_DURATION_MS);
            assert!((1..=MAX_PROBE_COUNT).contains(&o.half_open_max_calls));
            assert!((1..=MAX_PROBE_COUNT).contains(&o.success_threshold));
            assert!((1..=MAX_DURATION_MS).contains(&o.probe_timeout_ms));
            assert!(o.slow_call_ns.is_none_or(|ns| ns <= MAX_SLOW_CALL_NS));
            for rate in [o.failure_rate, o.slow_call_rate].into_iter().flatten() {
                assert!(rate > 0.0 && rate <= 1.0);
            }
            assert!(o.slow_call_rate.is_none() || o.slow_call_ns.is_some());
            assert!((MIN_WINDOW_US..=MAX_WINDOW_US).contains(&o.window_us));
            assert!((1..=MAX_FAILURE_THRESHOLD).contains(&o.min_calls));
            assert!(o.backoff.is_finite() && o.backoff >= 1.0);
            assert!((0.0..1.0).contains(&o.jitter));
            assert!(o
                .max_reset_timeout_ms
                .is_none_or(|ms| (o.reset_timeout_ms..=MAX_DURATION_MS).contains(&ms)));
            assert!(slot.slow_call_ns().is_none_or(|ns| ns <= MAX_SLOW_CALL_NS));
            // The engine runs with them without panicking.
            let limits = o.limits();
            let now = next();
            let machine = slot.machine.machine(&limits).with_window(&slot.window);
            machine.observe(|| now);
            let _ = machine.retry_after_ms(slot.machine.machine_word(), || now);
        }
    }
}
