//! Model checks of the fleet-synced breaker (`crates/engine/src/remote.rs`, issue 13) with loom:
//! the sync worker's installs and gate changes racing callers' admissions and outcomes. Every
//! interleaving of each 2-thread model is explored.
//!
//! Run with `make loom` (this file is one of its test targets). Without `--cfg loom` it compiles
//! to an empty test binary.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use panelboard_engine::remote::{FleetGate, Target};
use panelboard_engine::{Admission, Limits, Mode, OpenTime, Outcome, Slots, Ticket, Word};

fn limits(failure_threshold: u64, half_open_max_calls: u64) -> Limits {
    Limits {
        failure_threshold,
        reset_timeout_ms: 100,
        half_open_max_calls,
        success_threshold: 1,
        probe_timeout_ms: None,
        ..Limits::default()
    }
}

fn ticket_of(a: Admission) -> Option<Ticket> {
    match a {
        Admission::Admitted { ticket, .. } => Some(ticket),
        Admission::Rejected { .. } => None,
    }
}

/// A half-open word of a fresh generation, installed as the worker does, with `leases` granted.
fn half_open_with_leases(slots: &Slots, gate: &FleetGate, lim: &Limits, leases: u64) -> Word {
    let m = slots.machine(lim);
    let installed = m.install(m.load(), Target::HalfOpen, || 0).unwrap();
    gate.hold(installed.word.generation(), leases);
    installed.word
}

/// The worker revokes the leases of a half-open generation (they lapsed in Redis) the only way it
/// may: a fresh generation first, then the gate for it with no lease. A caller admitting at the
/// same time never gets a permit beyond the leases of the generation it is admitted in.
#[test]
fn revoking_leases_never_lets_a_permit_past_them() {
    loom::model(|| {
        let slots = Arc::new(Slots::new());
        let gate = Arc::new(FleetGate::new());
        let lim = limits(1, 2);
        let first = half_open_with_leases(&slots, &gate, &lim, 1);
        let caller = {
            let (slots, gate) = (slots.clone(), gate.clone());
            thread::spawn(move || {
                let m = slots.machine(&lim);
                (0..2)
                    .filter_map(|_| ticket_of(m.admit_gated(&gate, || 0)))
                    .collect::<Vec<_>>()
            })
        };
        let m = slots.machine(&lim);
        let mut read = m.load();
        let fresh = loop {
            match m.install(read, Target::HalfOpen, || 0) {
                Ok(installed) => break installed.word,
                Err(actual) => read = actual,
            }
        };
        gate.hold(fresh.generation(), 0);
        let tickets = caller.join().unwrap();
        let in_first = tickets
            .iter()
            .filter(|t| t.generation() == first.generation())
            .count();
        let in_fresh = tickets
            .iter()
            .filter(|t| t.generation() == fresh.generation())
            .count();
        assert!(in_first <= 1, "more permits than leases: {tickets:?}");
        assert_eq!(in_fresh, 0, "a permit without a lease: {tickets:?}");
        assert!(tickets.iter().all(|t| t.is_probe()));
        // The fresh generation holds no permit, so none can be out in it.
        let end = slots.machine_word();
        assert_eq!(end.mode(), Mode::HalfOpen);
        assert_eq!(end.generation(), fresh.generation());
        assert_eq!(end.in_flight(), 0);
    });
}

/// Leases granted while callers admit: the permits of a generation never exceed the most leases
/// granted for it, and the word counts exactly the permits handed out.
#[test]
fn granting_more_leases_races_admissions() {
    loom::model(|| {
        let slots = Arc::new(Slots::new());
        let gate = Arc::new(FleetGate::new());
        let lim = limits(1, 3);
        let word = half_open_with_leases(&slots, &gate, &lim, 1);
        let callers: Vec<_> = (0..2)
            .map(|_| {
                let (slots, gate) = (slots.clone(), gate.clone());
                thread::spawn(move || {
                    ticket_of(slots.machine(&lim).admit_gated(&gate, || 0)).is_some() as u64
                })
            })
            .collect();
        gate.hold(word.generation(), 2);
        let admitted: u64 = callers.into_iter().map(|h| h.join().unwrap()).sum();
        assert!((1..=2).contains(&admitted), "admitted {admitted}");
        assert_eq!(slots.machine_word().in_flight(), admitted);
    });
}

/// The worker installs the fleet's failure count while a local failure is recorded: the install
/// is a compare-and-swap, so the worker either goes first (and the local failure adds to the
/// fleet's count) or sees the failure and retries on top of it. No failure is lost.
#[test]
fn installing_a_count_loses_no_local_failure() {
    loom::model(|| {
        let slots = Arc::new(Slots::new());
        let lim = limits(10, 1);
        let local = {
            let slots = slots.clone();
            thread::spawn(move || {
                let m = slots.machine(&lim);
                let ticket = ticket_of(m.admit(|| 0)).unwrap();
                m.record(ticket, Outcome::Failure, || 0);
            })
        };
        // Another process counted 2 failures: the worker adds them to what it reads.
        let m = slots.machine(&lim);
        let mut read = m.load();
        loop {
            let target = Target::Closed {
                failures: read.failures() + 2,
            };
            match m.install(read, target, || 0) {
                Ok(_) => break,
                Err(actual) => read = actual,
            }
        }
        local.join().unwrap();
        let end = slots.machine_word();
        assert_eq!(end.mode(), Mode::Closed);
        assert_eq!(end.failures(), 3);
    });
}

/// The fleet opens the breaker while a call admitted closed is in flight: its outcome, recorded
/// after the install, is stale (a new generation) and changes nothing; recorded before, it is
/// in the word the worker then replaces with a CAS that saw it.
#[test]
fn an_outcome_racing_an_installed_opening_counts_only_in_its_generation() {
    loom::model(|| {
        let slots = Arc::new(Slots::new());
        let lim = limits(2, 1);
        let admitted = ticket_of(slots.machine(&lim).admit(|| 0)).unwrap();
        let local = {
            let slots = slots.clone();
            thread::spawn(move || slots.machine(&lim).record(admitted, Outcome::Failure, || 0))
        };
        let m = slots.machine(&lim);
        let mut read = m.load();
        let opened = loop {
            match m.install(
                read,
                Target::Open {
                    remaining_ms: 50,
                    reopens: 0,
                },
                || 0,
            ) {
                Ok(installed) => break installed,
                Err(actual) => read = actual,
            }
        };
        let recorded = local.join().unwrap();
        let end = slots.machine_word();
        assert_eq!(end, opened.word);
        assert_eq!(end.mode(), Mode::Open);
        assert_ne!(end.generation(), admitted.generation());
        // One failure of two never opens the breaker by itself.
        assert_eq!(recorded, None);
        assert!(opened.transition.is_some());
    });
}

/// With backoff, the worker installs the fleet's drawn open period (1000 ms, the 2nd reopen) while
/// a local probe failure reopens the breaker (drawing 100 * 4 = 400 ms, the 1st): whichever wins
/// the word's CAS, the open word's period is the fleet's.
#[test]
fn installing_a_drawn_open_period_races_a_local_reopening() {
    loom::model(|| {
        let slots = Arc::new(Slots::new());
        let gate = Arc::new(FleetGate::new());
        let lim = Limits {
            open_time: OpenTime {
                backoff: 4.0,
                max_ms: 1 << 20,
                jitter: 0.0,
            },
            ..limits(1, 1)
        };
        let half = half_open_with_leases(&slots, &gate, &lim, 1);
        let probe = ticket_of(slots.machine(&lim).admit_gated(&gate, || 0)).unwrap();
        let local = {
            let slots = slots.clone();
            thread::spawn(move || slots.machine(&lim).record(probe, Outcome::Failure, || 0))
        };
        let m = slots.machine(&lim);
        let mut read = half;
        let installed = loop {
            let target = Target::Open {
                remaining_ms: 1000,
                reopens: 2,
            };
            match m.install(read, target, || 0) {
                Ok(installed) => break installed,
                Err(actual) => read = actual,
            }
        };
        let reopened = local.join().unwrap();
        let end = slots.machine_word();
        assert_eq!(end, installed.word);
        assert_eq!(end.mode(), Mode::Open);
        // Whoever won, the period is the fleet's (a local reopening that went first is
        // corrected by the worker's retry, in the same generation).
        assert_eq!(m.open_period(end), (1000, 2));
        if reopened.is_some() {
            assert_eq!(installed.transition, None);
        }
        assert_eq!(m.retry_after_ms(end, || 0), 1000);
    });
}

/// A rate rule met while the fleet holds the gate does not trip the breaker, whatever the gate
/// does meanwhile: released before the judging, the local window trips it; held, it stays closed.
#[test]
fn a_held_gate_keeps_a_local_rate_trip_off() {
    use panelboard_engine::{RatePolicy, Window};
    loom::model(|| {
        let slots = Arc::new(Slots::new());
        let gate = Arc::new(FleetGate::new());
        let window = Arc::new(Window::new(1000));
        let lim = Limits {
            failure_threshold: panelboard_engine::NO_FAILURE_THRESHOLD,
            rate: Some(RatePolicy {
                window_us: 10_000,
                min_calls: 1,
                failure_rate: Some(0.5),
                slow_call_rate: None,
            }),
            ..limits(1, 1)
        };
        gate.hold(0, 0);
        let ticket = ticket_of(slots.machine(&lim).admit(|| 0)).unwrap();
        let local = {
            let (slots, gate, window) = (slots.clone(), gate.clone(), window.clone());
            thread::spawn(move || {
                let m = slots
                    .machine(&lim)
                    .with_window(&window)
                    .with_fleet_gate(&gate);
                m.record_call(ticket, Outcome::Failure, false, || 0, || 0)
            })
        };
        gate.release();
        let tripped = local.join().unwrap();
        let end = slots.machine_word();
        assert_eq!(tripped.is_some(), end.mode() == Mode::Open);
        assert_eq!(window.counts(ticket.generation(), 0).failures, 1);
    });
}
