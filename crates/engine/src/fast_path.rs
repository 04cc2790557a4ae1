//! The closed-breaker fast path: admitting a call into a closed breaker that has no result
//! predicate, and recording its success while the breaker stays healthy, with one atomic load
//! each and no write (design rule 5), and without the caller loading its configuration at all.
//!
//! Whether the configuration has a predicate is cached in a [`PredicateFlag`] next to it. The
//! flag carries the version of the configuration it describes and only ever grows, because
//! concurrent reconfigurations may publish their flags in any order (bug 13, docs/reliability.md):
//! a late publisher of an older configuration then changes nothing.
//!
//! Model-checked in `tests/loom.rs` (`fast_success_*`, `predicate_flags_published_out_of_order`).

use crate::machine::{Mode, Slots, Ticket, Word};
use crate::sync::{AtomicU64, Ordering};

/// `version << 1 | has a result predicate`, for the newest configuration published so far.
#[derive(Debug)]
pub struct PredicateFlag(AtomicU64);

fn pack(version: u64, has_predicate: bool) -> u64 {
    version << 1 | u64::from(has_predicate)
}

impl PredicateFlag {
    /// The flag of a breaker's first configuration.
    pub fn new(version: u64, has_predicate: bool) -> PredicateFlag {
        PredicateFlag(AtomicU64::new(pack(version, has_predicate)))
    }

    /// Publishes the flag of configuration `version`, called after that configuration is
    /// installed. Versions must increase in the order configurations replace each other (at most
    /// 2^63). An older version than the one already published changes nothing, so once every
    /// publisher has returned the flag describes the newest of their configurations, whatever
    /// order they ran in.
    pub fn publish(&self, version: u64, has_predicate: bool) {
        self.0
            .fetch_max(pack(version, has_predicate), Ordering::SeqCst);
    }

    /// Whether the newest published configuration has a result predicate.
    #[inline]
    pub fn has_predicate(&self) -> bool {
        self.0.load(Ordering::Acquire) & 1 == 1
    }

    /// The newest published configuration: its version, and whether it has a predicate.
    pub fn published(&self) -> (u64, bool) {
        let flag = self.0.load(Ordering::Acquire);
        (flag >> 1, flag & 1 == 1)
    }
}

/// A call admitted on the fast path: the closed word it was admitted under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastTicket {
    word: Word,
}

impl FastTicket {
    /// The ticket to record the call's outcome with (`Machine::record`) when
    /// [`Slots::record_fast_success`] could not.
    #[inline]
    pub fn ticket(self) -> Ticket {
        Ticket::unpermitted(self.word.generation())
    }
}

impl Slots {
    /// Admits a call into a closed breaker whose configuration has no result predicate (so its
    /// success needs no classification): one load of the word, one of the flag, no write, no
    /// clock. `None`: take the configured path (`Machine::admit`).
    #[inline]
    pub fn admit_fast(&self, flag: &PredicateFlag) -> Option<FastTicket> {
        let word = self.machine_word();
        (word.mode() == Mode::Closed && !flag.has_predicate()).then_some(FastTicket { word })
    }

    /// Records the success of a call admitted by [`Slots::admit_fast`] when that writes nothing:
    /// the breaker had no failures and its word is unchanged since the admission, so the success
    /// is one that `Machine::record` would drop without a write. `false`: nothing was recorded;
    /// record `ticket.ticket()` with `Machine::record`.
    #[inline]
    pub fn record_fast_success(&self, ticket: FastTicket) -> bool {
        ticket.word.failures() == 0 && self.machine_word() == ticket.word
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::machine::{Admission, Limits, Outcome};

    fn trip(slots: &Slots, limits: &Limits) {
        let m = slots.machine(limits);
        for _ in 0..limits.failure_threshold {
            if let Admission::Admitted { ticket, .. } = m.admit(|| 0) {
                m.record(ticket, Outcome::Failure, || 0);
            }
        }
    }

    #[test]
    fn closed_breaker_without_predicate_admits_and_succeeds_without_writing() {
        let slots = Slots::new();
        let flag = PredicateFlag::new(0, false);
        let before = slots.machine_word();
        let fast = slots
            .admit_fast(&flag)
            .expect("closed breaker takes the fast path");
        assert!(slots.record_fast_success(fast));
        assert_eq!(slots.machine_word(), before);
        assert_eq!(fast.ticket().generation(), before.generation());
        assert!(!fast.ticket().is_probe());
    }

    #[test]
    fn a_predicate_or_a_breaker_not_closed_takes_the_configured_path() {
        let slots = Slots::new();
        assert_eq!(slots.admit_fast(&PredicateFlag::new(3, true)), None);
        let limits = Limits {
            failure_threshold: 1,
            ..Limits::default()
        };
        trip(&slots, &limits);
        assert_eq!(slots.admit_fast(&PredicateFlag::new(0, false)), None);
        slots.machine(&limits).set_mode(Mode::Disabled);
        assert_eq!(slots.admit_fast(&PredicateFlag::new(0, false)), None);
    }

    #[test]
    fn success_after_failures_or_a_change_must_be_recorded() {
        let limits = Limits {
            failure_threshold: 3,
            ..Limits::default()
        };
        let slots = Slots::new();
        let flag = PredicateFlag::new(0, false);
        let m = slots.machine(&limits);
        if let Admission::Admitted { ticket, .. } = m.admit(|| 0) {
            m.record(ticket, Outcome::Failure, || 0);
        }
        // Failures to clear: the success has something to write.
        let fast = slots.admit_fast(&flag).unwrap();
        assert!(!slots.record_fast_success(fast));
        m.record(fast.ticket(), Outcome::Success, || 0);
        assert_eq!(slots.machine_word().failures(), 0);
        // The breaker changed while the call ran: the success is checked against the new word.
        let fast = slots.admit_fast(&flag).unwrap();
        m.set_mode(Mode::Closed);
        assert!(!slots.record_fast_success(fast));
        let before = slots.machine_word();
        assert_eq!(m.record(fast.ticket(), Outcome::Success, || 0), None);
        assert_eq!(
            slots.machine_word(),
            before,
            "a stale success changes nothing"
        );
    }

    #[test]
    fn an_older_configuration_published_late_changes_nothing() {
        let flag = PredicateFlag::new(0, false);
        flag.publish(2, true);
        flag.publish(1, false); // the older configuration's publisher ran late
        assert!(flag.has_predicate());
        assert_eq!(flag.published(), (2, true));
        flag.publish(3, false);
        assert!(!flag.has_predicate());
        assert_eq!(flag.published(), (3, false));
    }
}
