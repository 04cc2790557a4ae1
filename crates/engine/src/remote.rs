//! A breaker whose decisions are shared with a fleet (issue 13): the local word keeps serving every
//! call on its own, and a sync worker installs what the fleet decided into it.
//!
//! A child module of `machine` (it builds words with the machine's private helpers), kept in its
//! own file so that the machine's own code stays apart.
//!
//! Two things change for a breaker synced with a fleet, both only off the closed fast path:
//!
//! - **Installing the fleet's state** ([`Machine::install`]): the worker moves the word from the
//!   word it last read to the fleet's state with one compare-and-swap, so a local change made
//!   meanwhile (a failure, a trip, a reset) is never overwritten: the CAS fails and the worker
//!   pushes that change first. A change of mode is a transition with a new generation, like any
//!   other, so outcomes admitted before it go stale; a new failure count of a closed breaker is
//!   not (it keeps the generation, as a local failure does).
//! - **Probes need the fleet's leave** ([`FleetGate`]): while the worker is in touch with the
//!   fleet it *holds* the gate, and then an open breaker never turns half-open by itself (the
//!   fleet's open time runs on the Redis server's clock) and a half-open breaker hands out at most
//!   as many permits as the worker holds leases for, in that very generation
//!   ([`Machine::admit_gated`]). When the worker loses the fleet it releases the gate and the
//!   breaker is a plain local one again.
//!
//! The gate and the word are two atomics. The worker never lowers the leases of a generation: it
//! revokes them by installing a new generation (a fresh half-open period or another mode) first,
//! which fails the CAS of any caller that read the old gate. So the permits taken in one
//! generation never exceed the largest number of leases granted for it (model-checked in
//! `tests/loom_remote.rs`).

use super::{
    elapsed_ms, half_open_payload, open_time_generation, pack_open_time, transition, Admission,
    Machine, Mode, Ticket, Transition, Word, COUNTER_MASK, GENERATION_MASK, OPEN_GENERATION_MASK,
    PAYLOAD_BITS, PAYLOAD_MASK,
};
use crate::sync::{AtomicU64, Ordering};

const HELD: u64 = 1 << 63;

/// Who decides when a breaker probes: the machine alone (released), or the fleet through the sync
/// worker (held, with the number of leases granted for one generation of the word).
///
/// `HELD | generation << 16 | leases` while held, 0 when released.
#[derive(Debug)]
pub struct FleetGate(AtomicU64);

/// What the gate says, read once per admission attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// The machine decides alone (a local breaker, or the fleet is out of reach).
    Released,
    /// The fleet decides: `leases` permits may be out in word generation `generation`.
    Held { generation: u32, leases: u64 },
}

impl Gate {
    /// Permits allowed in a half-open word of `generation`: the leases granted for exactly that
    /// generation, 0 for any other.
    pub fn leases_for(self, generation: u32) -> u64 {
        match self {
            Gate::Held {
                generation: granted,
                leases,
            } if granted == generation => leases,
            _ => 0,
        }
    }
}

impl FleetGate {
    pub fn new() -> FleetGate {
        FleetGate(AtomicU64::new(0))
    }

    /// Reads the gate.
    #[inline]
    pub fn get(&self) -> Gate {
        let bits = self.0.load(Ordering::Acquire);
        if bits & HELD == 0 {
            return Gate::Released;
        }
        Gate::Held {
            generation: ((bits >> 16) & GENERATION_MASK) as u32,
            leases: bits & COUNTER_MASK,
        }
    }

    /// The fleet decides from now on, with `leases` permits for word generation `generation`.
    /// Lowering the leases of a generation is only safe once the word has left it (install a new
    /// generation first; see the module documentation).
    pub fn hold(&self, generation: u32, leases: u64) {
        let bits =
            HELD | ((u64::from(generation) & GENERATION_MASK) << 16) | leases.min(COUNTER_MASK);
        self.0.store(bits, Ordering::Release);
    }

    /// The machine decides alone again (the fleet is out of reach, or the registry closed).
    pub fn release(&self) {
        self.0.store(0, Ordering::Release);
    }
}

impl Default for FleetGate {
    fn default() -> Self {
        FleetGate::new()
    }
}

/// A state of the fleet, as the worker installs it into a local word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Closed with the fleet's count of failures (kept below the threshold: the fleet would have
    /// opened otherwise).
    Closed {
        failures: u64,
    },
    /// Open, going half-open `remaining_ms` from now by the local clock (the fleet's remaining
    /// open time, read on the server's clock, so skewed process clocks agree). When open times
    /// vary (backoff, jitter) the period is written into the open-time word as `remaining_ms`
    /// from now, the `reopens`-th reopen since the breaker closed: `retry_after` reports the
    /// fleet's drawn period (not at most `reset_timeout`), and a probe failing here next backs off
    /// from the fleet's count. Otherwise the period is `reset_timeout`, ending `remaining_ms` from
    /// now at the latest.
    Open {
        remaining_ms: u64,
        reopens: u64,
    },
    /// Half-open with no permit out. From half-open too: a fresh generation that drops the
    /// permits of the old one (whose leases lapsed).
    HalfOpen,
    ForcedOpen,
    Disabled,
}

impl Target {
    fn mode(self) -> Mode {
        match self {
            Target::Closed { .. } => Mode::Closed,
            Target::Open { .. } => Mode::Open,
            Target::HalfOpen => Mode::HalfOpen,
            Target::ForcedOpen => Mode::ForcedOpen,
            Target::Disabled => Mode::Disabled,
        }
    }
}

/// What an install did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Installed {
    /// The word now in place.
    pub word: Word,
    /// The change of mode to announce, if any.
    pub transition: Option<Transition>,
}

impl Word {
    /// The word with these raw bits, as the worker read them (`Word::bits`): for
    /// [`Machine::install`]'s compare-and-swap, never to build a state.
    pub fn from_bits(bits: u64) -> Word {
        Word(bits)
    }
}

impl Machine<'_> {
    /// Moves the word from `expected` (the word the worker last read) to `target` with one
    /// compare-and-swap. `Err(actual)`: the word changed meanwhile and nothing was written.
    ///
    /// A change of mode, and any install into half-open, starts a new generation; a closed word
    /// that only gets a new failure count, or an open word a new opening time, keeps its
    /// generation (no call holds a ticket of an open word, and a count is not a transition).
    pub fn install(
        &self,
        expected: Word,
        target: Target,
        clock: impl Fn() -> u64,
    ) -> Result<Installed, Word> {
        let next = match target {
            Target::Closed { failures } => {
                let failures = failures.min(self.limits.failure_threshold.saturating_sub(1));
                if expected.mode() == Mode::Closed {
                    expected.with_payload(failures)
                } else {
                    expected.next(Mode::Closed, failures)
                }
            }
            Target::Open {
                remaining_ms,
                reopens,
            } => {
                // The generation the open word will have (its opening time set below): the
                // current one when only the fleet's timer drifted from the local one.
                let period = if expected.mode() == Mode::Open {
                    expected
                } else {
                    expected.next(Mode::Open, 0)
                };
                self.write_open_time(period.generation(), reopens, remaining_ms);
                // Opened so that the period (the one just written, or `reset_timeout`) runs out
                // `remaining_ms` from now.
                let open_ms = self.open_ms(period);
                let opened_at = (clock() & PAYLOAD_MASK)
                    .wrapping_sub(open_ms.saturating_sub(remaining_ms))
                    & PAYLOAD_MASK;
                period.with_payload(opened_at)
            }
            Target::HalfOpen => expected.next(Mode::HalfOpen, half_open_payload(0, 0)),
            Target::ForcedOpen | Target::Disabled => {
                if expected.mode() == target.mode() {
                    return if self.load() == expected {
                        Ok(Installed {
                            word: expected,
                            transition: None,
                        })
                    } else {
                        Err(self.load())
                    };
                }
                expected.next(target.mode(), 0)
            }
        };
        if next == expected {
            return match self.load() {
                actual if actual == expected => Ok(Installed {
                    word: expected,
                    transition: None,
                }),
                actual => Err(actual),
            };
        }
        // A strong CAS: a spurious failure would make the worker skip a round for nothing.
        match self.word.compare_exchange(
            expected.bits(),
            next.bits(),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => Ok(Installed {
                word: next,
                transition: transition(expected, next),
            }),
            Err(actual) => Err(Word(actual)),
        }
    }

    /// Writes the open-time word of the open period of `generation` as `ms` long, the
    /// `reopens`-th reopen, when open times vary; before the word's CAS, as a local opening does
    /// (`Machine::open`), so that whoever sees the open word sees its time. It never overwrites the
    /// word of a newer generation, but does overwrite one written for this same generation: a
    /// local reopening racing this install (from the same word, so to the same generation) drew
    /// that one, and the fleet's period is the one to keep whichever of the two wins the word's
    /// CAS (a local opening never rewrites a word of its own generation once written).
    fn write_open_time(&self, generation: u32, reopens: u64, ms: u64) {
        let Some(open_time) = self.open_time else {
            return;
        };
        if !self.limits.open_time.varies() {
            return;
        }
        let value = pack_open_time(generation, reopens, ms);
        let mut stored = open_time.load(Ordering::Acquire);
        loop {
            if let Some(written) = open_time_generation(stored) {
                let age = u64::from(generation).wrapping_sub(written) & OPEN_GENERATION_MASK;
                if age > OPEN_GENERATION_MASK / 2 {
                    return;
                }
            }
            match open_time.compare_exchange_weak(
                stored,
                value,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => stored = actual,
            }
        }
    }

    /// `admit`, unless the fleet holds the gate: then an open breaker rejects until the worker
    /// installs half-open (never turning half-open itself), and a half-open one hands out at most
    /// the leases granted for its generation (the permit taken by the same CAS that checks the
    /// room, as in `admit`). Closed, disabled and forced-open breakers behave as in `admit`.
    pub fn admit_gated(&self, gate: &FleetGate, clock: impl Fn() -> u64) -> Admission {
        if gate.get() == Gate::Released {
            return self.admit(clock);
        }
        let mut current = self.load();
        loop {
            match current.mode() {
                Mode::Closed | Mode::Disabled => {
                    return Admission::Admitted {
                        ticket: Ticket::unpermitted(current.generation()),
                        transition: None,
                    }
                }
                Mode::ForcedOpen => return Admission::Rejected { retry_after_ms: 0 },
                Mode::Open => {
                    let elapsed = elapsed_ms(clock() & PAYLOAD_MASK, current.opened_at());
                    return Admission::Rejected {
                        retry_after_ms: self.open_ms(current).saturating_sub(elapsed),
                    };
                }
                Mode::HalfOpen => {
                    // The gate is read after the word: leases granted for this generation were
                    // published after the word entered it, and are never lowered within it.
                    let gate = gate.get();
                    if gate == Gate::Released {
                        return self.admit(clock);
                    }
                    let allowed = gate
                        .leases_for(current.generation())
                        .min(self.limits.half_open_max_calls);
                    let in_flight = current.in_flight();
                    if in_flight >= allowed {
                        return Admission::Rejected { retry_after_ms: 0 };
                    }
                    let next = current
                        .with_payload(half_open_payload(in_flight + 1, current.probe_successes()));
                    match self.cas(current, next) {
                        Ok(()) => {
                            return Admission::Admitted {
                                ticket: Ticket {
                                    generation: next.generation(),
                                    probe: true,
                                },
                                transition: None,
                            }
                        }
                        Err(actual) => current = actual,
                    }
                }
            }
        }
    }

    /// `observe`, unless the fleet holds the gate: then the word is reported as it is (an open
    /// breaker turns half-open when the worker installs it, on the fleet's clock).
    pub fn observe_gated(
        &self,
        gate: &FleetGate,
        clock: impl Fn() -> u64,
    ) -> (Word, Option<Transition>) {
        if gate.get() == Gate::Released {
            return self.observe(clock);
        }
        (self.load(), None)
    }
}

/// Milliseconds until an open word's `reset_timeout` runs out, by `now_ms` (0 if not open).
pub fn open_remaining_ms(word: Word, reset_timeout_ms: u64, now_ms: u64) -> u64 {
    if word.mode() != Mode::Open {
        return 0;
    }
    reset_timeout_ms.saturating_sub(elapsed_ms(now_ms & PAYLOAD_MASK, word.opened_at()))
}

/// The layout constants the sync worker needs to decode words it reads (`PAYLOAD_BITS` for
/// the generation's position).
pub const WORD_PAYLOAD_BITS: u32 = PAYLOAD_BITS;

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::machine::{Limits, Outcome, Slots};
    use std::cell::Cell;

    fn limits(threshold: u64, timeout: u64, probes: u64) -> Limits {
        Limits {
            failure_threshold: threshold,
            reset_timeout_ms: timeout,
            half_open_max_calls: probes,
            ..Limits::default()
        }
    }

    fn ticket(a: Admission) -> Ticket {
        match a {
            Admission::Admitted { ticket, .. } => ticket,
            other => panic!("expected admission, got {other:?}"),
        }
    }

    #[test]
    fn released_gate_is_the_plain_machine() {
        let slots = Slots::new();
        let lim = limits(1, 10, 1);
        let gate = FleetGate::new();
        let m = slots.machine(&lim);
        let t = ticket(m.admit_gated(&gate, || 0));
        m.record(t, Outcome::Failure, || 0);
        assert_eq!(
            m.admit_gated(&gate, || 5),
            Admission::Rejected { retry_after_ms: 5 }
        );
        // Timeout over: the machine goes half-open by itself and hands out the probe.
        assert!(ticket(m.admit_gated(&gate, || 10)).is_probe());
    }

    #[test]
    fn held_gate_keeps_an_expired_open_breaker_rejecting() {
        let slots = Slots::new();
        let lim = limits(1, 10, 1);
        let gate = FleetGate::new();
        let m = slots.machine(&lim);
        let t = ticket(m.admit(|| 0));
        m.record(t, Outcome::Failure, || 0);
        gate.hold(0, 0);
        assert_eq!(
            m.admit_gated(&gate, || 1000),
            Admission::Rejected { retry_after_ms: 0 }
        );
        assert_eq!(m.observe_gated(&gate, || 1000).0.mode(), Mode::Open);
        // Released (the fleet is out of reach): local behaviour again.
        gate.release();
        assert_eq!(m.observe_gated(&gate, || 1000).0.mode(), Mode::HalfOpen);
    }

    #[test]
    fn half_open_permits_follow_the_leases_of_the_generation() {
        let slots = Slots::new();
        let lim = limits(1, 10, 3);
        let gate = FleetGate::new();
        let m = slots.machine(&lim);
        gate.hold(0, 0);
        let installed = m.install(m.load(), Target::HalfOpen, || 0).unwrap();
        assert_eq!(
            installed.transition,
            Some(Transition {
                from: Mode::Closed,
                to: Mode::HalfOpen
            })
        );
        let generation = installed.word.generation();
        assert_eq!(
            m.admit_gated(&gate, || 0),
            Admission::Rejected { retry_after_ms: 0 }
        );
        // Leases of another generation grant nothing.
        gate.hold(generation.wrapping_add(1), 3);
        assert_eq!(
            m.admit_gated(&gate, || 0),
            Admission::Rejected { retry_after_ms: 0 }
        );
        gate.hold(generation, 2);
        let a = ticket(m.admit_gated(&gate, || 0));
        let _b = ticket(m.admit_gated(&gate, || 0));
        assert!(a.is_probe());
        assert_eq!(
            m.admit_gated(&gate, || 0),
            Admission::Rejected { retry_after_ms: 0 }
        );
        // An ignored probe frees its permit for another call.
        m.record(a, Outcome::Ignored, || 0);
        assert!(ticket(m.admit_gated(&gate, || 0)).is_probe());
    }

    #[test]
    fn install_is_a_compare_and_swap_and_mode_changes_bump_the_generation() {
        let slots = Slots::new();
        let lim = limits(5, 1000, 1);
        let now = Cell::new(100u64);
        let m = slots.machine(&lim);
        let start = m.load();
        let stale = ticket(m.admit(|| 0));
        // A new count keeps the generation: tickets stay current.
        let counted = m.install(start, Target::Closed { failures: 3 }, || now.get());
        let counted = counted.unwrap();
        assert_eq!(counted.transition, None);
        assert_eq!(counted.word.generation(), start.generation());
        assert_eq!(counted.word.failures(), 3);
        // A count at or above the threshold is kept just below it.
        let word = m
            .install(counted.word, Target::Closed { failures: 99 }, || 0)
            .unwrap()
            .word;
        assert_eq!(word.failures(), 4);
        // The word changed since it was read: nothing is written.
        assert_eq!(m.install(start, Target::ForcedOpen, || 0), Err(word));
        let opened = m
            .install(
                word,
                Target::Open {
                    remaining_ms: 400,
                    reopens: 0,
                },
                || now.get(),
            )
            .unwrap();
        assert_eq!(
            opened.transition,
            Some(Transition {
                from: Mode::Closed,
                to: Mode::Open
            })
        );
        assert_ne!(opened.word.generation(), start.generation());
        assert_eq!(m.record(stale, Outcome::Failure, || 0), None, "stale");
        // It goes half-open 400 ms from now by the local clock.
        assert_eq!(open_remaining_ms(opened.word, 1000, now.get()), 400);
        assert_eq!(
            m.admit(|| now.get() + 399),
            Admission::Rejected { retry_after_ms: 1 }
        );
        // Half-open from half-open: a fresh generation.
        let half = m.install(m.load(), Target::HalfOpen, || 0).unwrap().word;
        let fresh = m.install(half, Target::HalfOpen, || 0).unwrap();
        assert_ne!(fresh.word.generation(), half.generation());
        assert_eq!(fresh.transition, None);
        // Same mode with nothing to change is no write.
        let forced = m.install(fresh.word, Target::ForcedOpen, || 0).unwrap();
        let again = m.install(forced.word, Target::ForcedOpen, || 0).unwrap();
        assert_eq!((again.word, again.transition), (forced.word, None));
    }

    fn backing_off(timeout: u64) -> Limits {
        Limits {
            open_time: crate::machine::OpenTime {
                backoff: 4.0,
                max_ms: 1 << 30,
                jitter: 0.0,
            },
            ..limits(1, timeout, 1)
        }
    }

    /// Issue 13: a process that did not draw the fleet's backed-off period reports it (and keeps
    /// to it when the gate is released), not at most `reset_timeout`.
    #[test]
    fn an_installed_open_period_longer_than_reset_timeout_is_reported_whole() {
        let slots = Slots::new();
        let lim = backing_off(100);
        let gate = FleetGate::new();
        let m = slots.machine(&lim);
        let target = Target::Open {
            remaining_ms: 1500,
            reopens: 2,
        };
        let opened = m.install(m.load(), target, || 1000).unwrap().word;
        gate.hold(opened.generation(), 0);
        assert_eq!(m.retry_after_ms(opened, || 1000), 1500);
        assert_eq!(m.open_period(opened), (1500, 2));
        assert_eq!(
            m.admit_gated(&gate, || 1400),
            Admission::Rejected {
                retry_after_ms: 1100
            }
        );
        // The fleet's timer drifted: the same period is corrected, not a new generation.
        let corrected = m
            .install(
                opened,
                Target::Open {
                    remaining_ms: 500,
                    reopens: 2,
                },
                || 1400,
            )
            .unwrap();
        assert_eq!(corrected.transition, None);
        assert_eq!(corrected.word.generation(), opened.generation());
        assert_eq!(m.retry_after_ms(corrected.word, || 1400), 500);
        // Released (Redis out of reach): the local breaker keeps to the fleet's period.
        gate.release();
        assert_eq!(
            m.admit_gated(&gate, || 1899),
            Admission::Rejected { retry_after_ms: 1 }
        );
        let probe = ticket(m.admit_gated(&gate, || 1900));
        assert!(probe.is_probe());
        // Its probe fails: the next period backs off from the fleet's count (the third reopen).
        m.record(probe, Outcome::Failure, || 1900);
        let reopened = m.load();
        assert_eq!(m.open_period(reopened), (100 * 64, 3));
    }

    #[test]
    fn without_varying_open_times_an_installed_period_is_reset_timeout() {
        let slots = Slots::new();
        let lim = limits(1, 100, 1);
        let m = slots.machine(&lim);
        let target = Target::Open {
            remaining_ms: 60,
            reopens: 0,
        };
        let opened = m.install(m.load(), target, || 1000).unwrap().word;
        assert_eq!(m.retry_after_ms(opened, || 1000), 60);
        assert_eq!(m.open_period(opened), (100, 0));
    }

    #[test]
    fn a_held_gate_leaves_rate_trips_to_the_fleet() {
        let slots = Slots::new();
        let window = crate::window::Window::new(100);
        let lim = Limits {
            failure_threshold: crate::machine::NO_FAILURE_THRESHOLD,
            rate: Some(crate::window::RatePolicy {
                window_us: 1000,
                min_calls: 2,
                failure_rate: Some(0.5),
                slow_call_rate: None,
            }),
            ..limits(1, 100, 1)
        };
        let gate = FleetGate::new();
        let m = slots
            .machine(&lim)
            .with_window(&window)
            .with_fleet_gate(&gate);
        gate.hold(0, 0);
        for _ in 0..4 {
            let t = ticket(m.admit_gated(&gate, || 0));
            assert_eq!(m.record_call(t, Outcome::Failure, false, || 0, || 10), None);
        }
        assert_eq!(m.load().mode(), Mode::Closed, "the fleet's window decides");
        assert_eq!(m.window_counts(10).failures, 4, "counted all the same");
        gate.release();
        let t = ticket(m.admit_gated(&gate, || 0));
        assert!(m
            .record_call(t, Outcome::Failure, false, || 0, || 10)
            .is_some());
        assert_eq!(
            m.load().mode(),
            Mode::Open,
            "released: the local window decides"
        );
    }

    #[test]
    fn a_local_failure_between_read_and_install_is_not_lost() {
        let slots = Slots::new();
        let lim = limits(5, 1000, 1);
        let m = slots.machine(&lim);
        let read = m.load();
        let t = ticket(m.admit(|| 0));
        m.record(t, Outcome::Failure, || 0);
        let actual = m
            .install(read, Target::Closed { failures: 2 }, || 0)
            .unwrap_err();
        assert_eq!(actual.failures(), 1);
        let word = m
            .install(actual, Target::Closed { failures: 3 }, || 0)
            .unwrap()
            .word;
        assert_eq!(word.failures(), 3);
    }
}
