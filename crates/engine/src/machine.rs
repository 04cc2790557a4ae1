//! The breaker state machine: plain Rust, no PyO3.
//!
//! A breaker's whole state is one 64-bit word that the machine does not own: it works on a
//! `&AtomicU64` (plus a second word that only schedules probe reclaims, a third that holds the
//! current open period's length when `backoff`/`jitter` vary it, and, with a rate rule, the
//! pointer-free [`Window`] of `crate::window`), so the same code can later run over memory shared
//! between processes. Every change of state is one compare-and-swap of that word: a rate rule's
//! trip too, which exactly one of the recorders that see the rule met wins.
//!
//! ```text
//!  63   61 60              36 35                                   0
//! +-------+------------------+--------------------------------------+
//! | mode  | generation (25)  | payload (36, meaning depends on mode)|
//! +-------+------------------+--------------------------------------+
//!   Closed      consecutive failures
//!   Open        opened_at: clock milliseconds, modulo 2^36 (about 795 days)
//!   HalfOpen    probes in flight (bits 0..16), probe successes (bits 16..32)
//!   ForcedOpen / Disabled   unused (0)
//! ```
//!
//! Limits of a 64-bit word, chosen so that neither can bite in practice:
//! - the generation wraps after 2^25 (33.5 million) transitions: an outcome whose call stayed in
//!   flight across exactly a multiple of that many transitions would be taken as current;
//! - times are kept modulo 2^36 ms and compared by wrapping difference (`elapsed_ms`), so they work
//!   for any process lifetime; only an open breaker left untouched for a multiple of ~795 days
//!   (give or take `CLOCK_SKEW_MS`) can stay open up to that much longer than its timeout.
//!
//! Rules the layout enforces:
//! - every change of mode (and every reset or probe reclaim) bumps the generation, and an outcome is
//!   applied only if the word still carries the generation its call was admitted under;
//! - a half-open permit is taken by the same CAS that checks there is room for it;
//! - admitting into a closed breaker and recording a success on one with no failures write nothing.

use crate::lanes::Lanes;
use crate::sync::{AtomicU64, Ordering};
use crate::window::{RatePolicy, Window};

// The fleet-synced breaker (issue 13): a child module, in its own file, that builds words with the
// helpers below.
#[path = "remote.rs"]
pub mod remote;

const PAYLOAD_BITS: u32 = 36;
const GENERATION_BITS: u32 = 25;
const MODE_SHIFT: u32 = PAYLOAD_BITS + GENERATION_BITS;
const PAYLOAD_MASK: u64 = (1 << PAYLOAD_BITS) - 1;
const GENERATION_MASK: u64 = (1 << GENERATION_BITS) - 1;
const COUNTER_BITS: u32 = 16;
const COUNTER_MASK: u64 = (1 << COUNTER_BITS) - 1;

/// Largest accepted `failure_threshold`.
pub const MAX_FAILURE_THRESHOLD: u64 = u32::MAX as u64;
/// `failure_threshold` of a breaker whose consecutive-failure rule is off (`failure_threshold=None`):
/// larger than any count the word can hold, so it is never reached.
pub const NO_FAILURE_THRESHOLD: u64 = u64::MAX;
/// Largest accepted `half_open_max_calls` and `success_threshold` (16-bit fields of the word).
pub const MAX_PROBE_COUNT: u64 = COUNTER_MASK;
/// Largest accepted duration in milliseconds (about 397 days): half the range of a stored time,
/// so wrapping differences stay unambiguous.
pub const MAX_DURATION_MS: u64 = 1 << 35;
/// A clock reading up to this far *behind* a stored time (a thread that read the clock just before
/// another one stored a newer time) counts as no time elapsed, not as a wrapped-around eternity.
const CLOCK_SKEW_MS: u64 = 1 << 20; // about 17 minutes

/// Milliseconds from `since` to `now`, both stored modulo 2^36.
fn elapsed_ms(now: u64, since: u64) -> u64 {
    let difference = now.wrapping_sub(since) & PAYLOAD_MASK;
    if difference > PAYLOAD_MASK - CLOCK_SKEW_MS {
        0 // `now` was read slightly before `since` was stored
    } else {
        difference
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    Closed,
    Open,
    HalfOpen,
    ForcedOpen,
    Disabled,
}

impl Mode {
    fn bits(self) -> u64 {
        match self {
            Mode::Closed => 0,
            Mode::Open => 1,
            Mode::HalfOpen => 2,
            Mode::ForcedOpen => 3,
            Mode::Disabled => 4,
        }
    }

    fn from_bits(bits: u64) -> Mode {
        match bits {
            0 => Mode::Closed,
            1 => Mode::Open,
            2 => Mode::HalfOpen,
            3 => Mode::ForcedOpen,
            // Only this module writes words, so 5..=7 never occur; read them as the safest mode.
            _ => Mode::Disabled,
        }
    }
}

/// One decoded state word. Only the machine makes words; others read them through the accessors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Word(u64);

impl Word {
    pub const INITIAL: Word = Word(0); // closed, generation 0, no failures

    /// The raw 64 bits (for logs and comparisons; see the layout above).
    pub fn bits(self) -> u64 {
        self.0
    }

    fn pack(mode: Mode, generation: u32, payload: u64) -> Word {
        Word(
            (mode.bits() << MODE_SHIFT)
                | ((u64::from(generation) & GENERATION_MASK) << PAYLOAD_BITS)
                | (payload & PAYLOAD_MASK),
        )
    }

    pub fn mode(self) -> Mode {
        Mode::from_bits(self.0 >> MODE_SHIFT)
    }

    pub fn generation(self) -> u32 {
        ((self.0 >> PAYLOAD_BITS) & GENERATION_MASK) as u32
    }

    fn payload(self) -> u64 {
        self.0 & PAYLOAD_MASK
    }

    /// Consecutive failures; meaningful while closed.
    pub fn failures(self) -> u64 {
        self.payload()
    }

    /// When the breaker opened (clock milliseconds); meaningful while open.
    pub fn opened_at(self) -> u64 {
        self.payload()
    }

    /// Half-open permits currently held.
    pub fn in_flight(self) -> u64 {
        self.payload() & COUNTER_MASK
    }

    /// Probe successes so far in this half-open period.
    pub fn probe_successes(self) -> u64 {
        (self.payload() >> COUNTER_BITS) & COUNTER_MASK
    }

    /// Same generation, new payload: an update that is not a transition.
    fn with_payload(self, payload: u64) -> Word {
        Word::pack(self.mode(), self.generation(), payload)
    }

    /// A transition: the generation moves on (wrapping), so outcomes admitted before it go stale.
    fn next(self, mode: Mode, payload: u64) -> Word {
        Word::pack(mode, self.generation().wrapping_add(1), payload)
    }
}

/// Whether generation `a` comes after generation `b` (by less than half the generation space, so
/// that the wrap-around of the 25-bit counter is handled): what a process that last saw `b` and
/// now sees `a` uses to tell a newer word from an older one read late.
pub fn is_newer_generation(a: u32, b: u32) -> bool {
    let difference = a.wrapping_sub(b) & GENERATION_MASK as u32;
    difference != 0 && difference < 1 << (GENERATION_BITS - 1)
}

fn half_open_payload(in_flight: u64, successes: u64) -> u64 {
    (in_flight & COUNTER_MASK) | ((successes & COUNTER_MASK) << COUNTER_BITS)
}

/// The numeric configuration the machine needs. Callers validate ranges (see the MAX_ constants);
/// the machine itself never panics on any value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    pub failure_threshold: u64,
    pub reset_timeout_ms: u64,
    pub half_open_max_calls: u64,
    pub success_threshold: u64,
    pub probe_timeout_ms: Option<u64>,
    /// The rate rules (failure rate, slow-call rate over a sliding window); they need a
    /// [`Window`] (`Machine::with_window`) and are ignored without one.
    pub rate: Option<RatePolicy>,
    /// Open-time growth (see [`OpenTime`]).
    pub open_time: OpenTime,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            failure_threshold: 5,
            reset_timeout_ms: 30_000,
            half_open_max_calls: 1,
            success_threshold: 1,
            probe_timeout_ms: None,
            rate: None,
            open_time: OpenTime::FIXED,
        }
    }
}

/// How long a breaker stays open: the k-th reopen since it last closed (a probe failed, k = 1, 2,
/// ...; a trip from closed is k = 0) stays open `min(reset_timeout * backoff^k, max_ms)`, drawn
/// uniformly from `[t * (1 - jitter), t]`. The default (`backoff` 1, no jitter) is always
/// `reset_timeout` and needs no word of its own.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpenTime {
    /// At least 1.
    pub backoff: f64,
    /// Cap on the backed-off time (before jitter), at least `reset_timeout_ms`.
    pub max_ms: u64,
    /// In [0, 1).
    pub jitter: f64,
}

impl OpenTime {
    pub const FIXED: OpenTime = OpenTime {
        backoff: 1.0,
        max_ms: MAX_DURATION_MS,
        jitter: 0.0,
    };

    /// Whether open times vary (and live in the open-time word).
    pub fn varies(&self) -> bool {
        self.backoff > 1.0 || self.jitter > 0.0
    }

    /// The open time of the `k`-th reopen, before jitter.
    pub fn base_ms(&self, reset_timeout_ms: u64, k: u64) -> u64 {
        let exponent = i32::try_from(k).unwrap_or(i32::MAX);
        let grown = reset_timeout_ms as f64 * self.backoff.powi(exponent);
        let cap = self.max_ms.clamp(reset_timeout_ms, MAX_DURATION_MS) as f64;
        // `as` saturates (NaN is 0): no value can panic here.
        grown.min(cap).max(0.0) as u64
    }

    /// `base_ms` with jitter applied: `unit` in [0, 1) picks the point in `[t * (1 - jitter), t]`.
    pub fn drawn_ms(&self, base_ms: u64, unit: f64) -> u64 {
        let cut = (base_ms as f64 * self.jitter.clamp(0.0, 1.0) * unit.clamp(0.0, 1.0)) as u64;
        base_ms.saturating_sub(cut.min(base_ms))
    }
}

/// The open-time word: `generation (low 16 bits) << 48 | written << 47 | reopens (11 bits) << 36 |
/// open ms (36)`; a word never written (all zero) belongs to no generation.
/// Written before the CAS that opens the breaker with that generation, so anyone who sees the open
/// word also sees its time; a writer never overwrites the word of a newer generation.
const OPEN_GENERATION_SHIFT: u32 = 48;
const OPEN_GENERATION_MASK: u64 = 0xFFFF;
const OPEN_TIME_WRITTEN: u64 = 1 << 47;
const REOPENS_MASK: u64 = 0x7FF;

fn pack_open_time(generation: u32, reopens: u64, ms: u64) -> u64 {
    ((u64::from(generation) & OPEN_GENERATION_MASK) << OPEN_GENERATION_SHIFT)
        | OPEN_TIME_WRITTEN
        | (reopens.min(REOPENS_MASK) << PAYLOAD_BITS)
        | ms.min(PAYLOAD_MASK)
}

/// The generation whose open period `word` times, if it was ever written.
fn open_time_generation(word: u64) -> Option<u64> {
    (word & OPEN_TIME_WRITTEN != 0).then_some(word >> OPEN_GENERATION_SHIFT)
}

fn open_time_reopens(word: u64) -> u64 {
    (word >> PAYLOAD_BITS) & REOPENS_MASK
}

/// A uniform draw in [0, 1) for jitter: a per-thread splitmix64 sequence seeded from std's
/// per-thread random hash keys. Not cryptographic; it only has to spread reopen times.
fn random_unit() -> f64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u64(0x5eed);
            hasher.finish()
        });
    }
    let x = STATE
        .try_with(|state| {
            let next = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
            state.set(next);
            next
        })
        .unwrap_or(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    Ignored,
}

/// A change of mode, reported to exactly one caller: the one whose CAS made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: Mode,
    pub to: Mode,
}

/// Proof of admission: the generation the call was admitted under, and whether it holds one of the
/// half-open permits. Only the machine hands tickets out (`Machine::admit`, `FastTicket::ticket`),
/// so an outcome can only be recorded for a call that was admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    generation: u32,
    probe: bool,
}

impl Ticket {
    /// A call admitted into a closed (or disabled) breaker: no permit held.
    pub(crate) fn unpermitted(generation: u32) -> Ticket {
        Ticket {
            generation,
            probe: false,
        }
    }

    /// The generation the call was admitted under.
    pub fn generation(self) -> u32 {
        self.generation
    }

    /// Whether the call holds one of the half-open permits.
    pub fn is_probe(self) -> bool {
        self.probe
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Admitted {
        ticket: Ticket,
        transition: Option<Transition>,
    },
    /// `retry_after_ms`: time until the breaker goes half-open, 0 when that is not known
    /// (half-open with every permit taken, or forced open).
    Rejected { retry_after_ms: u64 },
}

/// The words a breaker's state lives in. Owned by whoever embeds the breaker (a heap struct in the
/// Python extension, or a slot of a shared-memory table: `crates/shm`); the machine only borrows
/// them. `repr(C)` and all-zero = a new closed breaker, so that a mapped slot can hold one: the
/// word at offset 0, the probe stamp at 8, the open-time word at 16 (docs/shared-memory.md).
#[derive(Debug)]
#[repr(C)]
pub struct Slots {
    word: AtomicU64,
    /// When the newest half-open permit was handed out: `generation << 36 | ms`. It only decides
    /// *when* hung probes are reclaimed; the reclaim itself is a CAS of `word`.
    probe_stamp: AtomicU64,
    /// How long the current open period lasts, when open times vary (see [`OpenTime`]).
    open_time: AtomicU64,
}

impl Slots {
    pub fn new() -> Slots {
        Slots {
            word: AtomicU64::new(Word::INITIAL.0),
            probe_stamp: AtomicU64::new(0),
            open_time: AtomicU64::new(0),
        }
    }

    /// The current word, without a machine (no limits needed to read it).
    #[inline]
    pub fn machine_word(&self) -> Word {
        Word(self.word.load(Ordering::Acquire))
    }

    pub fn machine<'a>(&'a self, limits: &'a Limits) -> Machine<'a> {
        Machine::new(&self.word, &self.probe_stamp, limits).with_open_time(&self.open_time)
    }
}

impl Default for Slots {
    fn default() -> Self {
        Slots::new()
    }
}

/// Reads the clock at most once per operation, and only on the paths that need it (a closed
/// breaker's admission and success never do).
struct LazyNow<F: Fn() -> u64> {
    clock: F,
    value: Option<u64>,
}

impl<F: Fn() -> u64> LazyNow<F> {
    fn new(clock: F) -> Self {
        LazyNow { clock, value: None }
    }

    /// The clock as the word stores times (modulo 2^36).
    fn get(&mut self) -> u64 {
        self.raw() & PAYLOAD_MASK
    }

    fn raw(&mut self) -> u64 {
        let clock = &self.clock;
        *self.value.get_or_insert_with(clock)
    }
}

fn pack_stamp(generation: u32, now_ms: u64) -> u64 {
    (u64::from(generation) << PAYLOAD_BITS) | (now_ms & PAYLOAD_MASK)
}

/// The state machine over borrowed words.
pub struct Machine<'a> {
    word: &'a AtomicU64,
    probe_stamp: &'a AtomicU64,
    limits: &'a Limits,
    open_time: Option<&'a AtomicU64>,
    window: Option<&'a Window>,
    /// The window's lanes (`crate::lanes`): their calls count with the window's. Resolved when a
    /// judge needs them, not when the machine is made (lanes made in between must be summed).
    lanes: Option<&'a Lanes>,
    /// A fleet-synced breaker's gate (`remote`): while the fleet holds it, the rate rules are
    /// judged on the fleet's window (by the sync worker, in Redis), not on this one.
    fleet_gate: Option<&'a remote::FleetGate>,
}

impl<'a> Machine<'a> {
    pub fn new(word: &'a AtomicU64, probe_stamp: &'a AtomicU64, limits: &'a Limits) -> Self {
        Machine {
            word,
            probe_stamp,
            limits,
            open_time: None,
            window: None,
            lanes: None,
            fleet_gate: None,
        }
    }

    /// The word that holds the current open period's length when open times vary
    /// (`Limits::open_time`); without one every open period lasts `reset_timeout_ms`.
    pub fn with_open_time(mut self, open_time: &'a AtomicU64) -> Self {
        self.open_time = Some(open_time);
        self
    }

    /// The window the rate rules (`Limits::rate`) count in; without one they are off.
    pub fn with_window(mut self, window: &'a Window) -> Self {
        self.window = Some(window);
        self
    }

    /// The window's lanes, whose successes count in it too (`crate::lanes`).
    pub fn with_lanes(mut self, lanes: &'a Lanes) -> Self {
        self.lanes = Some(lanes);
        self
    }

    /// The gate of a fleet-synced breaker: while it is held, a window that meets a rate rule does
    /// not trip the breaker here (the fleet's window decides, see `remote`); released, or without
    /// one, the window decides as on any breaker.
    pub fn with_fleet_gate(mut self, gate: &'a remote::FleetGate) -> Self {
        self.fleet_gate = Some(gate);
        self
    }

    /// The open period of `word` (an open word) and how many reopens since the breaker last
    /// closed it is (0 unless open times vary and the period's time was written).
    pub fn open_period(&self, word: Word) -> (u64, u64) {
        let ms = self.open_ms(word);
        match self.open_time {
            Some(open_time) if self.limits.open_time.varies() => {
                let stored = open_time.load(Ordering::Acquire);
                if open_time_generation(stored)
                    == Some(u64::from(word.generation()) & OPEN_GENERATION_MASK)
                {
                    (ms, open_time_reopens(stored))
                } else {
                    (ms, 0)
                }
            }
            _ => (ms, 0),
        }
    }

    /// A fresh draw of the open time of the `reopens`-th reopen (0: a trip from closed), as a
    /// transition to open would draw it (backoff, cap and jitter applied; `reset_timeout` when open
    /// times do not vary).
    pub fn draw_open_ms(&self, reopens: u64) -> u64 {
        let policy = &self.limits.open_time;
        if !policy.varies() {
            return self.limits.reset_timeout_ms;
        }
        let base = policy.base_ms(self.limits.reset_timeout_ms, reopens);
        policy.drawn_ms(base, random_unit())
    }

    /// How long the open period of `word` (an open word) lasts.
    fn open_ms(&self, word: Word) -> u64 {
        let reset = self.limits.reset_timeout_ms;
        match self.open_time {
            Some(open_time) if self.limits.open_time.varies() => {
                let stored = open_time.load(Ordering::Acquire);
                if open_time_generation(stored)
                    == Some(u64::from(word.generation()) & OPEN_GENERATION_MASK)
                {
                    stored & PAYLOAD_MASK
                } else {
                    reset // not written for this period (open times were switched on meanwhile)
                }
            }
            _ => reset,
        }
    }

    /// The open word that follows `current` (closed: a trip; half-open: a reopen), with its open
    /// time drawn and written first when open times vary.
    fn open<F: Fn() -> u64>(&self, current: Word, now: &mut LazyNow<F>) -> Word {
        let next = current.next(Mode::Open, now.get());
        let Some(open_time) = self.open_time else {
            return next;
        };
        let policy = &self.limits.open_time;
        if !policy.varies() {
            return next;
        }
        let mut stored = open_time.load(Ordering::Acquire);
        loop {
            // The word of the generation this transition makes is written once: another thread
            // racing for the same transition (two probes failing together) already drew for it,
            // from the same previous period, and its reopen count must not be counted again
            // (found by loom: tests/loom.rs backoff_probes_failing_together_...). A newer
            // generation's word is never overwritten either (a writer that lost its CAS long ago).
            if let Some(written) = open_time_generation(stored) {
                let age = u64::from(next.generation()).wrapping_sub(written) & OPEN_GENERATION_MASK;
                if age == 0 || age > OPEN_GENERATION_MASK / 2 {
                    return next;
                }
            }
            let reopens = if current.mode() == Mode::HalfOpen {
                // Half-open is only ever entered from open: the word holds that open period's
                // count (or, if a probe failure lost its CAS to a reclaim of hung probes, one
                // more: such a race may count one reopen too many).
                (open_time_reopens(stored) + 1).min(REOPENS_MASK)
            } else {
                0
            };
            let base = policy.base_ms(self.limits.reset_timeout_ms, reopens);
            let value = pack_open_time(
                next.generation(),
                reopens,
                policy.drawn_ms(base, random_unit()),
            );
            match open_time.compare_exchange_weak(
                stored,
                value,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return next,
                Err(actual) => stored = actual,
            }
        }
    }

    pub fn load(&self) -> Word {
        Word(self.word.load(Ordering::Acquire))
    }

    fn cas(&self, current: Word, next: Word) -> Result<(), Word> {
        self.word
            .compare_exchange_weak(current.0, next.0, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
            .map_err(Word)
    }

    /// Asks to run one call. The clock is read only if the breaker is not closed.
    pub fn admit(&self, clock: impl Fn() -> u64) -> Admission {
        let mut now = LazyNow::new(clock);
        let mut current = self.load();
        loop {
            let (next, transition) = match current.mode() {
                // The fast path: a read, no write.
                Mode::Closed | Mode::Disabled => {
                    return Admission::Admitted {
                        ticket: Ticket::unpermitted(current.generation()),
                        transition: None,
                    }
                }
                Mode::ForcedOpen => return Admission::Rejected { retry_after_ms: 0 },
                Mode::Open => {
                    let elapsed = elapsed_ms(now.get(), current.opened_at());
                    let open_ms = self.open_ms(current);
                    if elapsed < open_ms {
                        return Admission::Rejected {
                            retry_after_ms: open_ms - elapsed,
                        };
                    }
                    // The timeout has run out: this caller turns the breaker half-open and takes
                    // the first permit in the same CAS.
                    let to = Mode::HalfOpen;
                    (
                        current.next(to, half_open_payload(1, 0)),
                        Some(Transition {
                            from: Mode::Open,
                            to,
                        }),
                    )
                }
                Mode::HalfOpen => {
                    let in_flight = current.in_flight();
                    let successes = current.probe_successes();
                    if in_flight < self.limits.half_open_max_calls {
                        (
                            current.with_payload(half_open_payload(in_flight + 1, successes)),
                            None,
                        )
                    } else if self.probes_hung(current, &mut now) {
                        // Every permit is older than probe_timeout: a new generation drops them
                        // (their outcomes go stale) and this caller takes the first new permit.
                        (
                            current.next(Mode::HalfOpen, half_open_payload(1, successes)),
                            None,
                        )
                    } else {
                        return Admission::Rejected { retry_after_ms: 0 };
                    }
                }
            };
            let stamp = self
                .limits
                .probe_timeout_ms
                .map(|_| pack_stamp(next.generation(), now.get()));
            let same_generation = next.generation() == current.generation();
            if let (Some(stamp), true) = (stamp, same_generation) {
                // A permit of the current generation is stamped *before* it is published: a thread
                // that sees the permit taken also sees its time, so it cannot reclaim a permit
                // handed out a moment ago (found by loom: tests/loom.rs fresh_permit_is_not_reclaimed).
                // If the CAS then fails, the stamp is only too new, which delays a reclaim.
                self.probe_stamp.fetch_max(stamp, Ordering::AcqRel);
            }
            match self.cas(current, next) {
                Ok(()) => {
                    if let (Some(stamp), false) = (stamp, same_generation) {
                        // A new generation is stamped after it is published: until then, anyone
                        // seeing it finds no stamp of its generation, which never reclaims.
                        self.probe_stamp.fetch_max(stamp, Ordering::AcqRel);
                    }
                    return Admission::Admitted {
                        ticket: Ticket {
                            generation: next.generation(),
                            probe: true,
                        },
                        transition,
                    };
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// True when probe_timeout is set and the newest permit of this half-open generation was handed
    /// out at least that long ago.
    fn probes_hung<F: Fn() -> u64>(&self, current: Word, now: &mut LazyNow<F>) -> bool {
        let Some(timeout) = self.limits.probe_timeout_ms else {
            return false;
        };
        let stamp = self.probe_stamp.load(Ordering::Acquire);
        let stamped_generation = ((stamp >> PAYLOAD_BITS) & GENERATION_MASK) as u32;
        let now_ms = now.get();
        if stamped_generation != current.generation() {
            // No stamp for this generation (probe_timeout was switched on while probes were out,
            // or the generation counter wrapped): start timing from now.
            let _ = self.probe_stamp.compare_exchange(
                stamp,
                pack_stamp(current.generation(), now_ms),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            return false;
        }
        elapsed_ms(now_ms, stamp & PAYLOAD_MASK) >= timeout
    }

    /// Records the outcome of a call admitted with `ticket`. Outcomes from an older generation change
    /// nothing. Returns the transition this outcome caused, if any.
    pub fn record(
        &self,
        ticket: Ticket,
        outcome: Outcome,
        clock: impl Fn() -> u64,
    ) -> Option<Transition> {
        self.record_call(ticket, outcome, false, &clock, || {
            clock().saturating_mul(1000)
        })
    }

    /// `record`, telling whether the call was slow (longer than the rate policy's
    /// `slow_call_duration`, timed by the caller; it only matters to the window), with the clock
    /// the window reads: the same clock in microseconds (read only to count in the window).
    pub fn record_call(
        &self,
        ticket: Ticket,
        outcome: Outcome,
        slow: bool,
        clock: impl Fn() -> u64,
        window_clock_us: impl FnOnce() -> u64,
    ) -> Option<Transition> {
        let mut now = LazyNow::new(clock);
        let mut current = self.load();
        loop {
            if current.generation() != ticket.generation {
                return None; // stale: admitted before a transition
            }
            let next = match (current.mode(), outcome) {
                (Mode::Closed, Outcome::Success) => {
                    if current.failures() == 0 {
                        // Healthy and staying so: no write to the word.
                        return self.count_in_window(
                            current,
                            outcome,
                            slow,
                            window_clock_us,
                            &mut now,
                        );
                    }
                    current.with_payload(0)
                }
                (Mode::Closed, Outcome::Failure) => {
                    let failures = current.failures().saturating_add(1);
                    if failures >= self.limits.failure_threshold {
                        self.open(current, &mut now)
                    } else {
                        // Capped: with the consecutive rule off the count has no use but metrics.
                        current.with_payload(failures.min(PAYLOAD_MASK))
                    }
                }
                (Mode::HalfOpen, Outcome::Success) => {
                    let successes = current.probe_successes() + 1;
                    if successes >= self.limits.success_threshold {
                        current.next(Mode::Closed, 0)
                    } else {
                        let in_flight = current.in_flight().saturating_sub(1);
                        current.with_payload(half_open_payload(in_flight, successes))
                    }
                }
                (Mode::HalfOpen, Outcome::Failure) => self.open(current, &mut now),
                (Mode::HalfOpen, Outcome::Ignored) => {
                    let in_flight = current.in_flight().saturating_sub(1);
                    current.with_payload(half_open_payload(in_flight, current.probe_successes()))
                }
                // Ignored while closed, and anything while disabled: nothing to record. Open and
                // forced-open admit nothing, so no ticket of their generation exists.
                (Mode::Closed, Outcome::Ignored)
                | (Mode::Disabled, _)
                | (Mode::Open, _)
                | (Mode::ForcedOpen, _) => return None,
            };
            match self.cas(current, next) {
                Ok(()) => match transition(current, next) {
                    None if next.mode() == Mode::Closed => {
                        return self.count_in_window(next, outcome, slow, window_clock_us, &mut now)
                    }
                    reported => return reported,
                },
                Err(actual) => current = actual,
            }
        }
    }

    /// Counts a closed breaker's outcome in the window of its generation (`closed`: the word it was
    /// recorded under), then trips the breaker if a rate rule is met: one CAS from that closed word's
    /// generation to open, which exactly one of the recorders that see the rule met wins.
    ///
    /// Every outcome that counts is evaluated, successes included (a success can lift the window to
    /// `min_calls`, or arrive once old successes aged out). A healthy window (no failures and no slow
    /// calls in it) is judged by reading those words alone.
    fn count_in_window<F: Fn() -> u64>(
        &self,
        closed: Word,
        outcome: Outcome,
        slow: bool,
        window_clock_us: impl FnOnce() -> u64,
        now: &mut LazyNow<F>,
    ) -> Option<Transition> {
        let (Some(window), Some(policy)) = (self.window, self.limits.rate.as_ref()) else {
            return None;
        };
        let generation = closed.generation();
        let now_us = window_clock_us();
        let failure = outcome == Outcome::Failure;
        let still_current = || {
            let word = self.load();
            word.mode() == Mode::Closed && word.generation() == generation
        };
        if window.record(generation, now_us, failure, slow, still_current) == 0 {
            return None;
        }
        self.trip_if_window_trips(generation, window, policy, now_us, failure || slow, now)
    }

    /// Judges the window of `generation` at `now_us` (a closed generation a success was just
    /// counted in by `Window::record_success`, on the closed fast path) and trips the breaker if a
    /// rate rule is met, as `record` would have.
    pub fn judge_window(
        &self,
        generation: u32,
        now_us: u64,
        clock: impl Fn() -> u64,
    ) -> Option<Transition> {
        let (Some(window), Some(policy)) = (self.window, self.limits.rate.as_ref()) else {
            return None;
        };
        let mut now = LazyNow::new(clock);
        self.trip_if_window_trips(generation, window, policy, now_us, false, &mut now)
    }

    fn trip_if_window_trips<F: Fn() -> u64>(
        &self,
        generation: u32,
        window: &Window,
        policy: &RatePolicy,
        now_us: u64,
        after_bad: bool,
        now: &mut LazyNow<F>,
    ) -> Option<Transition> {
        if !window.trips_with(policy, generation, now_us, after_bad, self.lanes) {
            return None;
        }
        if self
            .fleet_gate
            .is_some_and(|gate| gate.get() != remote::Gate::Released)
        {
            // The fleet's window decides (its counts include this one's, pushed by the worker).
            return None;
        }
        let mut current = self.load();
        loop {
            if current.mode() != Mode::Closed || current.generation() != generation {
                return None; // someone else changed the state first
            }
            let next = self.open(current, now);
            match self.cas(current, next) {
                Ok(()) => return transition(current, next),
                Err(actual) => current = actual,
            }
        }
    }

    /// The counts of the current window at `now_us` (empty unless the breaker is closed with a
    /// rate policy).
    pub fn window_counts(&self, now_us: u64) -> crate::window::Counts {
        let current = self.load();
        match (self.window, self.limits.rate.as_ref(), current.mode()) {
            (Some(window), Some(_), Mode::Closed) => window.counts_with(
                current.generation(),
                now_us,
                self.lanes.map_or(&[], |lanes| lanes.made()),
            ),
            _ => crate::window::Counts::default(),
        }
    }

    /// Moves to `mode` with an empty payload and a new generation (reset, force-open, disable).
    /// In-flight calls go stale and their permits are dropped.
    pub fn set_mode(&self, mode: Mode) -> Option<Transition> {
        let mut current = self.load();
        loop {
            let next = current.next(mode, 0);
            match self.cas(current, next) {
                Ok(()) => return transition(current, next),
                Err(actual) => current = actual,
            }
        }
    }

    /// The mode a caller would see now. An open breaker whose timeout has run out is turned
    /// half-open here (with no permit taken), so that the change is reported exactly once, to
    /// whoever sees it first.
    pub fn observe(&self, clock: impl Fn() -> u64) -> (Word, Option<Transition>) {
        let mut now = LazyNow::new(clock);
        let mut current = self.load();
        loop {
            if current.mode() != Mode::Open
                || elapsed_ms(now.get(), current.opened_at()) < self.open_ms(current)
            {
                return (current, None);
            }
            let next = current.next(Mode::HalfOpen, half_open_payload(0, 0));
            match self.cas(current, next) {
                Ok(()) => return (next, transition(current, next)),
                Err(actual) => current = actual,
            }
        }
    }

    /// Milliseconds until an open breaker goes half-open (0 if it is not open).
    pub fn retry_after_ms(&self, word: Word, clock: impl Fn() -> u64) -> u64 {
        if word.mode() != Mode::Open {
            return 0;
        }
        let elapsed = elapsed_ms(clock() & PAYLOAD_MASK, word.opened_at());
        self.open_ms(word).saturating_sub(elapsed)
    }
}

fn transition(from: Word, to: Word) -> Option<Transition> {
    (from.mode() != to.mode()).then_some(Transition {
        from: from.mode(),
        to: to.mode(),
    })
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::cell::Cell;

    struct Fixture {
        slots: Slots,
        limits: Limits,
        now: Cell<u64>,
    }

    impl Fixture {
        fn new(limits: Limits) -> Self {
            Fixture {
                slots: Slots::new(),
                limits,
                now: Cell::new(0),
            }
        }
        fn m(&self) -> Machine<'_> {
            self.slots.machine(&self.limits)
        }
        fn admit(&self) -> Admission {
            self.m().admit(|| self.now.get())
        }
        fn ticket(&self) -> Ticket {
            match self.admit() {
                Admission::Admitted { ticket, .. } => ticket,
                other => panic!("expected admission, got {other:?}"),
            }
        }
        fn record(&self, t: Ticket, o: Outcome) -> Option<Transition> {
            self.m().record(t, o, || self.now.get())
        }
        fn mode(&self) -> Mode {
            self.m().observe(|| self.now.get()).0.mode()
        }
        fn raw(&self) -> Word {
            self.m().load()
        }
        fn trip(&self) {
            for _ in 0..self.limits.failure_threshold {
                let t = self.ticket();
                self.record(t, Outcome::Failure);
            }
            assert_eq!(self.raw().mode(), Mode::Open);
        }
    }

    fn limits(threshold: u64, timeout: u64, probes: u64) -> Limits {
        Limits {
            failure_threshold: threshold,
            reset_timeout_ms: timeout,
            half_open_max_calls: probes,
            ..Limits::default()
        }
    }

    #[test]
    fn newer_generation_handles_the_wrap() {
        assert!(is_newer_generation(1, 0));
        assert!(!is_newer_generation(0, 1));
        assert!(!is_newer_generation(5, 5));
        assert!(is_newer_generation(0, GENERATION_MASK as u32));
        assert!(is_newer_generation(3, GENERATION_MASK as u32 - 2));
    }

    #[test]
    fn slots_are_three_words_and_zero_is_a_new_closed_breaker() {
        assert_eq!(std::mem::size_of::<Slots>(), 24);
        assert_eq!(Word::INITIAL.bits(), 0);
        assert_eq!(std::mem::offset_of!(Slots, word), 0);
        assert_eq!(std::mem::offset_of!(Slots, probe_stamp), 8);
        assert_eq!(std::mem::offset_of!(Slots, open_time), 16);
    }

    #[test]
    fn word_fields_round_trip() {
        let w = Word::pack(
            Mode::HalfOpen,
            GENERATION_MASK as u32,
            half_open_payload(7, 9),
        );
        assert_eq!(w.mode(), Mode::HalfOpen);
        assert_eq!(w.generation(), GENERATION_MASK as u32);
        assert_eq!(w.in_flight(), 7);
        assert_eq!(w.probe_successes(), 9);
        let w = Word::pack(Mode::Open, 1, PAYLOAD_MASK);
        assert_eq!(w.opened_at(), PAYLOAD_MASK);
        assert_eq!(w.generation(), 1);
        for mode in [
            Mode::Closed,
            Mode::Open,
            Mode::HalfOpen,
            Mode::ForcedOpen,
            Mode::Disabled,
        ] {
            assert_eq!(Word::pack(mode, 0, 0).mode(), mode);
        }
    }

    /// The README's "How it works" diagram and table give the word's layout to maintainers: they
    /// must say what the constants above say.
    #[test]
    fn readme_bit_layout_matches_the_word() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
        let readme = std::fs::read_to_string(path).expect("README.md at the repository root");
        let section = readme
            .split("## How it works")
            .nth(1)
            .expect("a \"How it works\" section");
        let mode_bits = 64 - MODE_SHIFT;
        // (name, highest bit, lowest bit), from the top of the word down.
        let fields = [
            ("mode", 63, MODE_SHIFT),
            ("generation", MODE_SHIFT - 1, PAYLOAD_BITS),
            ("payload", PAYLOAD_BITS - 1, 0),
        ];
        assert_eq!(mode_bits + GENERATION_BITS + PAYLOAD_BITS, 64);
        assert!(Mode::Disabled.bits() < 1 << mode_bits, "every mode fits");

        // The diagram: its first line numbers the field boundaries, and the widths are labelled.
        let diagram = section
            .split("```text\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("a text diagram");
        let boundaries: Vec<u32> = diagram
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .map(|n| n.parse().expect("bit numbers on the diagram's first line"))
            .collect();
        let expected: Vec<u32> = fields.iter().flat_map(|&(_, hi, lo)| [hi, lo]).collect();
        assert_eq!(boundaries, expected, "README diagram:\n{diagram}");
        assert!(diagram.contains(&format!("generation ({GENERATION_BITS})")));
        assert!(diagram.contains(&format!("payload ({PAYLOAD_BITS},")));

        // The table after the diagram: one row per field with its bits and width.
        let after_diagram = section.split("```").nth(2).unwrap_or("");
        for (name, hi, lo) in fields {
            let row = after_diagram
                .lines()
                .find(|line| line.starts_with(&format!("| {name} ")))
                .unwrap_or_else(|| panic!("no table row for {name}"));
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            assert_eq!(cells[2], format!("{hi}..{lo}"), "bits of {name}: {row}");
            assert_eq!(
                cells[3],
                (hi - lo + 1).to_string(),
                "width of {name}: {row}"
            );
        }
    }

    #[test]
    fn generation_wraps_without_touching_mode_or_payload() {
        let w = Word::pack(Mode::Closed, GENERATION_MASK as u32, 3);
        let n = w.next(Mode::Open, 42);
        assert_eq!(n.generation(), 0);
        assert_eq!(n.mode(), Mode::Open);
        assert_eq!(n.opened_at(), 42);
    }

    #[test]
    fn closed_admission_and_success_write_nothing() {
        let f = Fixture::new(limits(3, 1000, 1));
        let before = f.raw();
        let t = f.ticket();
        assert!(!t.probe);
        assert_eq!(f.record(t, Outcome::Success), None);
        assert_eq!(f.raw(), before);
    }

    #[test]
    fn closed_admission_does_not_read_the_clock() {
        let f = Fixture::new(limits(3, 1000, 1));
        let adm = f.m().admit(|| panic!("clock read on the closed fast path"));
        assert!(matches!(adm, Admission::Admitted { .. }));
    }

    #[test]
    fn consecutive_failures_open_at_threshold() {
        let f = Fixture::new(limits(3, 1000, 1));
        for _ in 0..2 {
            let t = f.ticket();
            assert_eq!(f.record(t, Outcome::Failure), None);
        }
        assert_eq!(f.raw().failures(), 2);
        f.now.set(77);
        let t = f.ticket();
        assert_eq!(
            f.record(t, Outcome::Failure),
            Some(Transition {
                from: Mode::Closed,
                to: Mode::Open
            })
        );
        assert_eq!(f.raw().mode(), Mode::Open);
        assert_eq!(f.raw().opened_at(), 77);
    }

    #[test]
    fn success_clears_failure_count() {
        let f = Fixture::new(limits(3, 1000, 1));
        for _ in 0..2 {
            let t = f.ticket();
            f.record(t, Outcome::Failure);
        }
        let t = f.ticket();
        f.record(t, Outcome::Success);
        assert_eq!(f.raw().failures(), 0);
        assert_eq!(f.raw().mode(), Mode::Closed);
        for _ in 0..2 {
            let t = f.ticket();
            f.record(t, Outcome::Failure);
        }
        assert_eq!(
            f.raw().mode(),
            Mode::Closed,
            "count restarted after the success"
        );
    }

    #[test]
    fn ignored_outcome_changes_nothing_while_closed() {
        let f = Fixture::new(limits(1, 1000, 1));
        let t = f.ticket();
        assert_eq!(f.record(t, Outcome::Ignored), None);
        assert_eq!(f.raw(), Word::INITIAL);
    }

    #[test]
    fn open_rejects_until_timeout_with_retry_after() {
        let f = Fixture::new(limits(1, 1000, 1));
        f.trip();
        f.now.set(400);
        assert_eq!(
            f.admit(),
            Admission::Rejected {
                retry_after_ms: 600
            }
        );
        f.now.set(999);
        assert_eq!(f.admit(), Admission::Rejected { retry_after_ms: 1 });
        assert_eq!(f.mode(), Mode::Open);
    }

    #[test]
    fn timeout_edge_is_inclusive() {
        let f = Fixture::new(limits(1, 1000, 1));
        f.trip();
        f.now.set(1000);
        match f.admit() {
            Admission::Admitted { ticket, transition } => {
                assert!(ticket.probe);
                assert_eq!(
                    transition,
                    Some(Transition {
                        from: Mode::Open,
                        to: Mode::HalfOpen
                    })
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn zero_reset_timeout_goes_half_open_at_once() {
        let f = Fixture::new(limits(1, 0, 1));
        f.trip();
        assert!(matches!(
            f.admit(),
            Admission::Admitted {
                ticket: Ticket { probe: true, .. },
                ..
            }
        ));
    }

    #[test]
    fn clock_behind_opened_at_counts_as_no_time_elapsed() {
        let f = Fixture::new(limits(1, 1000, 1));
        f.now.set(5000);
        f.trip();
        f.now.set(10); // a clock read taken before the trip
        assert_eq!(
            f.admit(),
            Admission::Rejected {
                retry_after_ms: 1000
            }
        );
    }

    #[test]
    fn times_wrap_around_the_payload() {
        let f = Fixture::new(limits(1, 1000, 1));
        f.now.set(PAYLOAD_MASK - 100); // opened just before the stored time wraps to 0
        f.trip();
        f.now.set(PAYLOAD_MASK + 500); // 600 ms later
        assert_eq!(
            f.admit(),
            Admission::Rejected {
                retry_after_ms: 400
            }
        );
        f.now.set(PAYLOAD_MASK + 900);
        assert!(matches!(
            f.admit(),
            Admission::Admitted {
                ticket: Ticket { probe: true, .. },
                ..
            }
        ));
    }

    #[test]
    fn open_breaker_left_alone_for_years_is_half_open() {
        let f = Fixture::new(limits(1, 1000, 1));
        f.trip();
        f.now.set(PAYLOAD_MASK / 2 + 12345); // ~400 days later: far beyond the timeout
        assert_eq!(f.mode(), Mode::HalfOpen);
    }

    #[test]
    fn elapsed_treats_small_negative_differences_as_zero() {
        assert_eq!(elapsed_ms(100, 40), 60);
        assert_eq!(elapsed_ms(40, 100), 0);
        assert_eq!(elapsed_ms(5, PAYLOAD_MASK - 4), 10);
        assert_eq!(elapsed_ms(0, CLOCK_SKEW_MS), 0);
        assert_eq!(
            elapsed_ms(0, CLOCK_SKEW_MS + 2),
            PAYLOAD_MASK - CLOCK_SKEW_MS - 1
        );
    }

    #[test]
    fn stale_ticket_survives_almost_a_full_generation_cycle() {
        let f = Fixture::new(limits(1, 0, 1));
        let stale = f.ticket();
        for _ in 0..(GENERATION_MASK) {
            f.m().set_mode(Mode::Closed);
        }
        assert_ne!(f.raw().generation(), stale.generation);
        assert_eq!(f.record(stale, Outcome::Failure), None);
        assert_eq!(f.raw().mode(), Mode::Closed);
    }

    #[test]
    fn half_open_admits_exactly_max_calls() {
        let f = Fixture::new(limits(1, 10, 3));
        f.trip();
        f.now.set(10);
        let tickets: Vec<_> = (0..3).map(|_| f.ticket()).collect();
        assert!(tickets.iter().all(|t| t.probe));
        assert_eq!(f.raw().in_flight(), 3);
        assert_eq!(f.admit(), Admission::Rejected { retry_after_ms: 0 });
        // Releasing one permit (ignored) makes room for exactly one more.
        f.record(tickets[0], Outcome::Ignored);
        assert_eq!(f.raw().in_flight(), 2);
        let _ = f.ticket();
        assert_eq!(f.admit(), Admission::Rejected { retry_after_ms: 0 });
    }

    #[test]
    fn probe_success_closes() {
        let f = Fixture::new(limits(2, 10, 1));
        f.trip();
        f.now.set(10);
        let t = f.ticket();
        assert_eq!(
            f.record(t, Outcome::Success),
            Some(Transition {
                from: Mode::HalfOpen,
                to: Mode::Closed
            })
        );
        assert_eq!(f.raw().mode(), Mode::Closed);
        assert_eq!(f.raw().failures(), 0);
    }

    #[test]
    fn probe_failure_reopens_with_fresh_opened_at() {
        let f = Fixture::new(limits(2, 10, 1));
        f.trip();
        f.now.set(25);
        let t = f.ticket();
        assert_eq!(
            f.record(t, Outcome::Failure),
            Some(Transition {
                from: Mode::HalfOpen,
                to: Mode::Open
            })
        );
        assert_eq!(f.raw().opened_at(), 25);
        f.now.set(34);
        assert_eq!(f.admit(), Admission::Rejected { retry_after_ms: 1 });
    }

    #[test]
    fn success_threshold_needs_that_many_probe_successes() {
        let f = Fixture::new(Limits {
            success_threshold: 3,
            ..limits(1, 10, 1)
        });
        f.trip();
        f.now.set(10);
        for _ in 0..2 {
            let t = f.ticket();
            assert_eq!(f.record(t, Outcome::Success), None);
            assert_eq!(f.raw().mode(), Mode::HalfOpen);
        }
        assert_eq!(f.raw().probe_successes(), 2);
        let t = f.ticket();
        assert!(f.record(t, Outcome::Success).is_some());
        assert_eq!(f.raw().mode(), Mode::Closed);
    }

    #[test]
    fn stale_outcomes_change_nothing() {
        // Admitted while closed, the breaker trips meanwhile: the late success must not close it.
        let f = Fixture::new(limits(1, 10, 1));
        let slow = f.ticket();
        f.trip();
        assert_eq!(f.record(slow, Outcome::Success), None);
        assert_eq!(f.raw().mode(), Mode::Open);
        // A late failure from before a reset must not count toward the new closed period.
        let f = Fixture::new(limits(2, 10, 1));
        let slow = f.ticket();
        f.m().set_mode(Mode::Closed);
        let t = f.ticket();
        f.record(t, Outcome::Failure);
        assert_eq!(f.record(slow, Outcome::Failure), None);
        assert_eq!(f.raw().failures(), 1);
        assert_eq!(f.raw().mode(), Mode::Closed);
    }

    #[test]
    fn stale_probe_outcome_after_reopen_is_dropped() {
        let f = Fixture::new(limits(1, 10, 2));
        f.trip();
        f.now.set(10);
        let a = f.ticket();
        let b = f.ticket();
        f.record(a, Outcome::Failure); // reopens
        assert_eq!(f.record(b, Outcome::Success), None);
        assert_eq!(f.raw().mode(), Mode::Open);
    }

    #[test]
    fn every_transition_bumps_the_generation() {
        let f = Fixture::new(limits(1, 10, 1));
        let mut last = f.raw().generation();
        let mut step = |f: &Fixture| {
            let g = f.raw().generation();
            assert_ne!(g, last);
            last = g;
        };
        f.trip();
        step(&f);
        f.now.set(10);
        let t = f.ticket();
        step(&f);
        f.record(t, Outcome::Success);
        step(&f);
        f.m().set_mode(Mode::ForcedOpen);
        step(&f);
        f.m().set_mode(Mode::Disabled);
        step(&f);
        f.m().set_mode(Mode::Closed);
        step(&f);
    }

    #[test]
    fn reset_from_any_mode_closes_and_drops_permits() {
        let f = Fixture::new(limits(1, 10, 1));
        f.trip();
        f.now.set(10);
        let probe = f.ticket();
        assert_eq!(
            f.m().set_mode(Mode::Closed),
            Some(Transition {
                from: Mode::HalfOpen,
                to: Mode::Closed
            })
        );
        assert_eq!(f.raw().mode(), Mode::Closed);
        assert_eq!(
            f.record(probe, Outcome::Failure),
            None,
            "dropped permit is stale"
        );
        assert_eq!(
            f.m().set_mode(Mode::Closed),
            None,
            "closed to closed is no transition"
        );
    }

    #[test]
    fn forced_open_rejects_and_disabled_admits_everything() {
        let f = Fixture::new(limits(1, 0, 1));
        f.m().set_mode(Mode::ForcedOpen);
        f.now.set(1_000_000);
        assert_eq!(f.admit(), Admission::Rejected { retry_after_ms: 0 });
        assert_eq!(f.mode(), Mode::ForcedOpen);
        f.m().set_mode(Mode::Disabled);
        for _ in 0..10 {
            let t = f.ticket();
            assert_eq!(f.record(t, Outcome::Failure), None);
        }
        assert_eq!(f.mode(), Mode::Disabled);
    }

    #[test]
    fn observe_turns_expired_open_half_open_once() {
        let f = Fixture::new(limits(1, 10, 1));
        f.trip();
        f.now.set(9);
        assert_eq!(f.m().observe(|| f.now.get()).1, None);
        f.now.set(10);
        let (w, t) = f.m().observe(|| f.now.get());
        assert_eq!(w.mode(), Mode::HalfOpen);
        assert_eq!(w.in_flight(), 0);
        assert_eq!(
            t,
            Some(Transition {
                from: Mode::Open,
                to: Mode::HalfOpen
            })
        );
        assert_eq!(f.m().observe(|| f.now.get()).1, None, "reported once");
        // The observed half-open breaker still has its permit available.
        assert!(f.ticket().probe);
    }

    #[test]
    fn hung_probe_is_reclaimed_after_probe_timeout() {
        let f = Fixture::new(Limits {
            probe_timeout_ms: Some(50),
            ..limits(1, 10, 1)
        });
        f.trip();
        f.now.set(10);
        let hung = f.ticket();
        f.now.set(59);
        assert_eq!(f.admit(), Admission::Rejected { retry_after_ms: 0 });
        f.now.set(60);
        let fresh = f.ticket();
        assert!(fresh.probe);
        assert_ne!(fresh.generation, hung.generation);
        assert_eq!(f.raw().in_flight(), 1);
        // The hung probe finally answers: stale, it cannot close or reopen the breaker.
        assert_eq!(f.record(hung, Outcome::Failure), None);
        assert_eq!(f.raw().mode(), Mode::HalfOpen);
        assert!(f.record(fresh, Outcome::Success).is_some());
        assert_eq!(f.raw().mode(), Mode::Closed);
    }

    #[test]
    fn probe_timeout_counts_from_the_newest_permit() {
        let f = Fixture::new(Limits {
            probe_timeout_ms: Some(50),
            ..limits(1, 10, 2)
        });
        f.trip();
        f.now.set(10);
        let _a = f.ticket();
        f.now.set(40);
        let _b = f.ticket();
        f.now.set(60); // 50 after a, 20 after b
        assert_eq!(f.admit(), Admission::Rejected { retry_after_ms: 0 });
        f.now.set(90);
        assert!(f.ticket().probe);
    }

    #[test]
    fn without_probe_timeout_a_hung_probe_blocks_forever() {
        let f = Fixture::new(limits(1, 10, 1));
        f.trip();
        f.now.set(10);
        let _hung = f.ticket();
        f.now.set(u64::from(u32::MAX));
        assert_eq!(f.admit(), Admission::Rejected { retry_after_ms: 0 });
    }

    #[test]
    fn threshold_lowered_below_count_trips_on_next_failure() {
        let mut f = Fixture::new(limits(10, 10, 1));
        for _ in 0..5 {
            let t = f.ticket();
            f.record(t, Outcome::Failure);
        }
        f.limits.failure_threshold = 3;
        let t = f.ticket();
        assert!(f.record(t, Outcome::Failure).is_some());
    }

    #[test]
    fn threads_recording_threshold_failures_always_open() {
        use std::sync::Arc;
        for _ in 0..50 {
            let slots = Arc::new(Slots::new());
            let lim = limits(8, 1000, 1);
            let barrier = Arc::new(std::sync::Barrier::new(8));
            let transitions: usize = (0..8)
                .map(|_| {
                    let slots = slots.clone();
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        let m = slots.machine(&lim);
                        let t = match m.admit(|| 0) {
                            Admission::Admitted { ticket, .. } => ticket,
                            _ => unreachable!(),
                        };
                        barrier.wait();
                        m.record(t, Outcome::Failure, || 0).is_some() as usize
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .sum();
            assert_eq!(transitions, 1, "exactly one thread reports the trip");
            assert_eq!(Word(slots.word.load(Ordering::SeqCst)).mode(), Mode::Open);
        }
    }

    #[test]
    fn half_open_storm_admits_exactly_max_calls() {
        use std::sync::Arc;
        for probes in [1u64, 3] {
            let slots = Arc::new(Slots::new());
            let lim = limits(1, 10, probes);
            {
                let m = slots.machine(&lim);
                if let Admission::Admitted { ticket, .. } = m.admit(|| 0) {
                    m.record(ticket, Outcome::Failure, || 0);
                }
            }
            let barrier = Arc::new(std::sync::Barrier::new(16));
            let admitted: u64 = (0..16)
                .map(|_| {
                    let slots = slots.clone();
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        barrier.wait();
                        matches!(slots.machine(&lim).admit(|| 10), Admission::Admitted { .. })
                            as u64
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .sum();
            assert_eq!(admitted, probes);
        }
    }
}
