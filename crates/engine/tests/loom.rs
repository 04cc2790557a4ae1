//! Model checks of the breaker state machine (`crates/engine/src/machine.rs`) with loom: 2-3 threads, every
//! interleaving for the 2-thread models, all with at most 2 or 3 preemptions for the 3-thread ones
//! (loom also lets loads return stale values wherever the memory model allows).
//!
//! Run with:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release -p panelboard-engine --test loom
//! ```
//!
//! Without `--cfg loom` this file compiles to an empty test binary.
//!
//! Every model starts from a state set up sequentially on the model's main thread, then spawns
//! threads that each run a short script of `admit` / `record` / `set_mode` / `observe` calls with
//! their own fixed clock value (so a timeout has run out for some threads and not for others).
//! Each thread checks the word's invariants after every call it makes ([`check_word`]), and the
//! main thread checks the end state and the transitions the threads were told about
//! ([`check_ledger`]) once they have all finished.
//!
//! Preemption bounds keep the whole run to about a minute on 2 cores; set `LOOM_MAX_PREEMPTIONS`
//! to explore more (the two `half_open_*` models take minutes each at 3).
//!
//! `fresh_permit_is_not_reclaimed` is the regression test of the one engine race loom found (see
//! its doc and docs/reliability.md).
//!
//! The `window_*` models check the rate rules' sliding window (`crates/engine/src/window.rs`) and
//! the trips it makes; `backoff_*` the open-time word (`OpenTime`).
#![cfg(loom)]

use loom::sync::atomic::{AtomicU64, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;
use panelboard_engine::{
    Admission, Counting, Counts, Lanes, Limits, Machine, Mode, OpenTime, Outcome, PredicateFlag,
    RatePolicy, Slots, Ticker, Ticket, Transition, Window, Word, NO_FAILURE_THRESHOLD,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Runs `f` under loom with at most `preemptions` preemptions per execution (`None`: every
/// interleaving). `LOOM_MAX_PREEMPTIONS` overrides the bound.
fn model(preemptions: Option<usize>, f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = preemptions;
    }
    b.check(f);
}

fn limits(
    failure_threshold: u64,
    reset_timeout_ms: u64,
    half_open_max_calls: u64,
    success_threshold: u64,
    probe_timeout_ms: Option<u64>,
) -> Limits {
    Limits {
        failure_threshold,
        reset_timeout_ms,
        half_open_max_calls,
        success_threshold,
        probe_timeout_ms,
        ..Limits::default()
    }
}

fn ticket_of(a: Admission) -> Option<Ticket> {
    match a {
        Admission::Admitted { ticket, .. } => Some(ticket),
        Admission::Rejected { .. } => None,
    }
}

fn expect_ticket(a: Admission) -> Ticket {
    ticket_of(a).unwrap_or_else(|| panic!("expected an admission, got {a:?}"))
}

/// Invariants every word the machine ever writes must satisfy.
fn check_word(w: Word, lim: &Limits) {
    match w.mode() {
        Mode::HalfOpen => {
            assert!(
                w.in_flight() <= lim.half_open_max_calls,
                "{} probes in flight, max {}: {w:?}",
                w.in_flight(),
                lim.half_open_max_calls
            );
            assert!(
                w.probe_successes() < lim.success_threshold,
                "half-open with {} successes, threshold {}",
                w.probe_successes(),
                lim.success_threshold
            );
        }
        Mode::Closed => assert!(
            w.failures() < lim.failure_threshold,
            "closed with {} failures, threshold {}",
            w.failures(),
            lim.failure_threshold
        ),
        Mode::Open | Mode::ForcedOpen | Mode::Disabled => {}
    }
}

/// Loads the word (any value this thread may observe) and checks it.
fn step(m: &Machine<'_>, lim: &Limits) -> Word {
    let w = m.load();
    check_word(w, lim);
    w
}

/// What one thread was told.
#[derive(Default, Debug)]
struct Log {
    /// Transitions reported to this thread by admit / record / observe / set_mode.
    transitions: Vec<Transition>,
    /// `set_mode` calls that reported no transition (same mode): they still bump the generation.
    silent_set_modes: u32,
    /// Every ticket this thread was given.
    tickets: Vec<Ticket>,
    /// `retry_after_ms` of every rejection.
    rejections: Vec<u64>,
}

impl Log {
    fn admit(&mut self, m: &Machine<'_>, lim: &Limits, now: u64) -> Option<Ticket> {
        let a = m.admit(|| now);
        match a {
            Admission::Admitted { ticket, transition } => {
                self.tickets.push(ticket);
                if let Some(t) = transition {
                    assert_eq!(
                        t,
                        Transition {
                            from: Mode::Open,
                            to: Mode::HalfOpen
                        }
                    );
                    assert!(
                        ticket.is_probe(),
                        "the admission that opened half-open holds a permit"
                    );
                    self.transitions.push(t);
                }
            }
            Admission::Rejected { retry_after_ms } => self.rejections.push(retry_after_ms),
        }
        step(m, lim);
        ticket_of(a)
    }

    fn record(
        &mut self,
        m: &Machine<'_>,
        lim: &Limits,
        t: Ticket,
        o: Outcome,
        now: u64,
    ) -> Option<Transition> {
        let tr = m.record(t, o, || now);
        if let Some(tr) = tr {
            assert_ne!(tr.from, tr.to);
            self.transitions.push(tr);
        }
        step(m, lim);
        tr
    }

    fn set_mode(&mut self, m: &Machine<'_>, lim: &Limits, mode: Mode) -> Option<Transition> {
        let tr = m.set_mode(mode);
        match tr {
            Some(tr) => {
                assert_eq!(tr.to, mode);
                self.transitions.push(tr);
            }
            None => self.silent_set_modes += 1,
        }
        step(m, lim);
        tr
    }

    /// One guarded call as the bindings make it (`src/py/core.rs` `guarded`): the fast admission
    /// when the word and the predicate flag allow it, the configured one otherwise; a fast-path
    /// success recorded without a write when nothing changed, through the machine otherwise.
    fn guarded_call(
        &mut self,
        slots: &Slots,
        flag: &PredicateFlag,
        lim: &Limits,
        outcome: Outcome,
        now: u64,
    ) -> Path {
        let m = slots.machine(lim);
        let Some(fast) = slots.admit_fast(flag) else {
            return match self.admit(&m, lim, now) {
                Some(t) => {
                    self.record(&m, lim, t, outcome, now);
                    Path::Configured
                }
                None => Path::Rejected,
            };
        };
        let ticket = fast.ticket();
        assert!(!ticket.is_probe(), "a fast admission holds no permit");
        self.tickets.push(ticket);
        step(&m, lim);
        if outcome == Outcome::Success && slots.record_fast_success(fast) {
            step(&m, lim);
            return Path::FastNoWrite;
        }
        self.record(&m, lim, ticket, outcome, now);
        Path::Fast
    }

    fn observe(&mut self, m: &Machine<'_>, lim: &Limits, now: u64) -> Word {
        let (w, tr) = m.observe(|| now);
        check_word(w, lim);
        if let Some(tr) = tr {
            assert_eq!(
                tr,
                Transition {
                    from: Mode::Open,
                    to: Mode::HalfOpen
                }
            );
            assert_eq!(w.mode(), Mode::HalfOpen);
            self.transitions.push(tr);
        }
        step(m, lim);
        w
    }
}

/// How a [`Log::guarded_call`] went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// Fast admission; a success that wrote nothing.
    FastNoWrite,
    /// Fast admission; the outcome recorded through the machine.
    Fast,
    /// Admitted by `Machine::admit`.
    Configured,
    Rejected,
}

/// Each change of mode is reported to exactly one thread, and nothing else moves the generation:
/// - every reported transition is a real change of mode, and the reported changes chain from the
///   initial mode to the final one (for each mode, changes into it minus changes out of it equal
///   `[final == mode] - [initial == mode]`);
/// - generations moved = reported transitions + same-mode `set_mode` calls + `reclaims` (probe
///   reclaims are not reported: they stay half-open); generations never wrap in a model this small.
fn check_ledger(initial: Word, fin: Word, logs: &[Log], reclaims: u32) {
    let all: Vec<Transition> = logs
        .iter()
        .flat_map(|l| l.transitions.iter().copied())
        .collect();
    let silent: u32 = logs.iter().map(|l| l.silent_set_modes).sum::<u32>() + reclaims;
    for mode in [
        Mode::Closed,
        Mode::Open,
        Mode::HalfOpen,
        Mode::ForcedOpen,
        Mode::Disabled,
    ] {
        let ins = all.iter().filter(|t| t.to == mode).count() as i64;
        let outs = all.iter().filter(|t| t.from == mode).count() as i64;
        let expected = i64::from(fin.mode() == mode) - i64::from(initial.mode() == mode);
        assert_eq!(
            ins - outs,
            expected,
            "reported transitions {all:?} do not lead from {:?} to {:?}",
            initial.mode(),
            fin.mode()
        );
    }
    assert_eq!(
        fin.generation() - initial.generation(),
        all.len() as u32 + silent,
        "generation moved from {} to {} but threads were told of {all:?}, plus {silent} silent resets/reclaims",
        initial.generation(),
        fin.generation()
    );
}

/// No generation hands out more than `half_open_max_calls` probe permits. Only for models where no
/// permit is handed back within a generation (every probe outcome there changes the mode, and there
/// is no probe_timeout), so that permits handed out = permits held at once.
fn check_probe_tickets(logs: &[Log], lim: &Limits) {
    let probes: Vec<Ticket> = logs
        .iter()
        .flat_map(|l| l.tickets.iter().copied())
        .filter(|t| t.is_probe())
        .collect();
    for t in &probes {
        let same = probes
            .iter()
            .filter(|u| u.generation() == t.generation())
            .count() as u64;
        assert!(
            same <= lim.half_open_max_calls,
            "{same} probes admitted in generation {}, max {}",
            t.generation(),
            lim.half_open_max_calls
        );
    }
}

fn join_all(handles: Vec<thread::JoinHandle<Log>>) -> Vec<Log> {
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Trips a fresh breaker at clock `at` (threshold failures in a row, sequentially).
fn trip(m: &Machine<'_>, lim: &Limits, at: u64) {
    for _ in 0..lim.failure_threshold {
        let t = expect_ticket(m.admit(|| at));
        m.record(t, Outcome::Failure, || at);
    }
    let w = m.load();
    assert_eq!(w.mode(), Mode::Open);
    assert_eq!(w.opened_at(), at);
}

// ---------------------------------------------------------------------------------------------
// No lost failure
// ---------------------------------------------------------------------------------------------

/// `threads` threads each admit and record one failure, with clock `100 * (i + 1)`. At or below
/// the threshold the breaker always opens, exactly one thread is told, and `opened_at` is that
/// thread's clock; above it, every failure is counted.
fn failure_race(threads: u64, threshold: u64) {
    let lim = limits(threshold, 1000, 1, 1, None);
    let slots = Arc::new(Slots::new());
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let slots = slots.clone();
            thread::spawn(move || {
                let m = slots.machine(&lim);
                let now = 100 * (i + 1);
                let mut log = Log::default();
                // Every thread admits before recording, so at most threads-1 failures precede an
                // admission: with threshold >= threads the breaker is closed for all of them.
                let t = log
                    .admit(&m, &lim, now)
                    .expect("closed breaker rejected a call");
                assert_eq!((t.generation(), t.is_probe()), (0, false));
                log.record(&m, &lim, t, Outcome::Failure, now);
                log
            })
        })
        .collect();
    let logs = join_all(handles);
    let fin = slots.machine(&lim).load();
    check_ledger(Word::INITIAL, fin, &logs, 0);
    let trips: Vec<usize> = (0..logs.len())
        .filter(|&i| !logs[i].transitions.is_empty())
        .collect();
    if threshold <= threads {
        assert_eq!(
            fin.mode(),
            Mode::Open,
            "{threads} failures against threshold {threshold}: {fin:?}"
        );
        assert_eq!(fin.generation(), 1);
        assert_eq!(
            trips.len(),
            1,
            "exactly one thread sees Closed -> Open, got {logs:?}"
        );
        let i = trips[0];
        assert_eq!(
            logs[i].transitions,
            vec![Transition {
                from: Mode::Closed,
                to: Mode::Open
            }]
        );
        assert_eq!(
            fin.opened_at(),
            100 * (i as u64 + 1),
            "opened_at is the tripping thread's clock"
        );
    } else {
        assert_eq!(fin.mode(), Mode::Closed);
        assert_eq!(fin.generation(), 0);
        assert_eq!(fin.failures(), threads, "a failure was lost");
        assert!(trips.is_empty());
    }
}

#[test]
fn no_lost_failure_two_threads_threshold_two() {
    model(None, || failure_race(2, 2));
}

#[test]
fn no_lost_failure_two_threads_threshold_three_counts_both() {
    model(None, || failure_race(2, 3));
}

#[test]
fn no_lost_failure_three_threads_threshold_three() {
    model(Some(3), || failure_race(3, 3));
}

// ---------------------------------------------------------------------------------------------
// Half-open admission storm
// ---------------------------------------------------------------------------------------------

/// Tripped at 0 with reset_timeout 100; three threads admit with clocks 100, 150 (expired) and 50
/// (not expired). Exactly `max` probes are admitted in every interleaving, exactly one thread is
/// told about Open -> HalfOpen, and the 50 thread is only ever rejected with 50 ms to go (if it saw
/// the breaker open) or 0 (if it saw it half-open and full).
fn half_open_storm(max: u64) {
    let lim = limits(1, 100, max, 1, None);
    let slots = Arc::new(Slots::new());
    trip(&slots.machine(&lim), &lim, 0);
    let initial = slots.machine(&lim).load();
    let clocks = [100u64, 150, 50];
    let handles: Vec<_> = clocks
        .iter()
        .map(|&now| {
            let slots = slots.clone();
            thread::spawn(move || {
                let m = slots.machine(&lim);
                let mut log = Log::default();
                log.admit(&m, &lim, now);
                log
            })
        })
        .collect();
    let logs = join_all(handles);
    let fin = slots.machine(&lim).load();
    check_ledger(initial, fin, &logs, 0);
    check_probe_tickets(&logs, &lim);

    let admitted: u64 = logs.iter().map(|l| l.tickets.len() as u64).sum();
    assert_eq!(
        admitted, max,
        "admitted {admitted} probes with half_open_max_calls = {max}: {logs:?}"
    );
    for l in &logs {
        for t in &l.tickets {
            assert_eq!(
                (t.generation(), t.is_probe()),
                (initial.generation() + 1, true)
            );
        }
    }
    let openers: Vec<usize> = (0..3)
        .filter(|&i| !logs[i].transitions.is_empty())
        .collect();
    assert_eq!(openers.len(), 1, "Open -> HalfOpen reported to {openers:?}");
    assert!(
        clocks[openers[0]] >= 100,
        "a thread whose timeout had not run out opened the breaker"
    );
    for (l, &now) in logs.iter().zip(&clocks) {
        for &r in &l.rejections {
            let to_go = 100u64.saturating_sub(now);
            assert!(
                r == 0 || r == to_go,
                "clock {now} rejected with retry_after {r}"
            );
        }
    }
    assert_eq!(fin.mode(), Mode::HalfOpen);
    assert_eq!(fin.generation(), initial.generation() + 1);
    assert_eq!(fin.in_flight(), max);
    assert_eq!(fin.probe_successes(), 0);
}

#[test]
fn half_open_storm_max_one() {
    model(Some(3), || half_open_storm(1));
}

#[test]
fn half_open_storm_max_two() {
    model(Some(3), || half_open_storm(2));
}

// ---------------------------------------------------------------------------------------------
// Stale generations
// ---------------------------------------------------------------------------------------------

/// Threshold 2. Threads A and C each admit and record a failure while B resets (set_mode(Closed)).
/// A failure admitted before the reset must not count, whether it lands before the reset (wiped)
/// or after (stale); failures admitted after the reset count normally.
#[test]
fn stale_failure_after_reset_does_not_count() {
    model(Some(3), || {
        let lim = limits(2, 1000, 1, 1, None);
        let slots = Arc::new(Slots::new());
        let recorder = |slots: Arc<Slots>, now: u64| {
            thread::spawn(move || {
                let m = slots.machine(&lim);
                let mut log = Log::default();
                let t = log
                    .admit(&m, &lim, now)
                    .expect("closed breaker rejected a call");
                log.record(&m, &lim, t, Outcome::Failure, now);
                log
            })
        };
        let a = recorder(slots.clone(), 10);
        let b = {
            let slots = slots.clone();
            thread::spawn(move || {
                let m = slots.machine(&lim);
                let mut log = Log::default();
                let tr = log.set_mode(&m, &lim, Mode::Closed);
                assert!(
                    tr.is_none()
                        || tr
                            == Some(Transition {
                                from: Mode::Open,
                                to: Mode::Closed
                            })
                );
                log
            })
        };
        let c = recorder(slots.clone(), 20);
        let logs = join_all(vec![a, b, c]);
        let fin = slots.machine(&lim).load();
        check_ledger(Word::INITIAL, fin, &logs, 0);

        let tickets: Vec<Ticket> = [&logs[0], &logs[2]].iter().map(|l| l.tickets[0]).collect();
        let before_reset = tickets.iter().filter(|t| t.generation() == 0).count() as u64;
        let after_reset = tickets.len() as u64 - before_reset;
        if before_reset == 2 && logs[1].transitions.len() == 1 {
            // Both pre-reset failures landed before the reset and tripped it; the reset closed it.
            assert_eq!(
                (fin.mode(), fin.generation(), fin.failures()),
                (Mode::Closed, 2, 0)
            );
        } else if after_reset == 2 {
            // Both admitted after the reset: they trip the new closed period.
            assert_eq!(fin.mode(), Mode::Open);
            assert_eq!(fin.generation(), 2);
        } else {
            // Exactly the post-reset failures count; none admitted before the reset survives it.
            assert_eq!(fin.mode(), Mode::Closed, "{logs:?}");
            assert_eq!(fin.generation(), 1);
            assert_eq!(
                fin.failures(),
                after_reset,
                "a pre-reset failure counted after the reset: {logs:?}"
            );
        }
    });
}

/// A call admitted while closed reports success late, after the breaker tripped and went half-open
/// (probe permit held). The late success must not be counted as a probe success (which would close
/// the breaker): it leaves the word unchanged.
#[test]
fn stale_success_cannot_close_half_open() {
    model(None, || {
        let lim = limits(1, 100, 1, 1, None);
        let slots = Arc::new(Slots::new());
        let old = expect_ticket(slots.machine(&lim).admit(|| 0));
        assert_eq!((old.generation(), old.is_probe()), (0, false));
        let late = {
            let slots = slots.clone();
            thread::spawn(move || {
                let m = slots.machine(&lim);
                let mut log = Log::default();
                // Before the trip a success on a healthy closed breaker writes nothing; after it the
                // ticket is stale. Either way nothing is reported.
                assert_eq!(log.record(&m, &lim, old, Outcome::Success, 100), None);
                log
            })
        };
        let tripper = {
            let slots = slots.clone();
            thread::spawn(move || {
                let m = slots.machine(&lim);
                let mut log = Log::default();
                let t = log.admit(&m, &lim, 0).unwrap();
                assert_eq!(
                    log.record(&m, &lim, t, Outcome::Failure, 0),
                    Some(Transition {
                        from: Mode::Closed,
                        to: Mode::Open
                    })
                );
                let p = log
                    .admit(&m, &lim, 100)
                    .expect("expired open breaker rejected the probe");
                assert!(p.is_probe());
                log
            })
        };
        let logs = join_all(vec![late, tripper]);
        let fin = slots.machine(&lim).load();
        check_ledger(Word::INITIAL, fin, &logs, 0);
        assert_eq!(
            fin.mode(),
            Mode::HalfOpen,
            "late closed-period success closed the breaker"
        );
        assert_eq!(fin.generation(), 2);
        assert_eq!(fin.in_flight(), 1);
        assert_eq!(fin.probe_successes(), 0);
    });
}

/// A half-open probe reports failure late while another thread resets the breaker and then runs a
/// failing call of its own (threshold 2). If the probe's failure lands first it reopens the breaker
/// (and is told so), and the reset closes it again; if it lands after the reset it is stale and
/// must neither reopen the breaker nor count as a closed-period failure.
#[test]
fn stale_probe_failure_after_reset() {
    model(None, || {
        let lim = limits(2, 10, 1, 1, None);
        let slots = Arc::new(Slots::new());
        let m0 = slots.machine(&lim);
        trip(&m0, &lim, 0);
        let probe = expect_ticket(m0.admit(|| 10));
        assert!(probe.is_probe());
        let initial = m0.load();
        assert_eq!((initial.mode(), initial.generation()), (Mode::HalfOpen, 2));

        let prober = {
            let slots = slots.clone();
            thread::spawn(move || {
                let m = slots.machine(&lim);
                let mut log = Log::default();
                log.record(&m, &lim, probe, Outcome::Failure, 20);
                log
            })
        };
        let resetter = {
            let slots = slots.clone();
            thread::spawn(move || {
                let m = slots.machine(&lim);
                let mut log = Log::default();
                let tr = log
                    .set_mode(&m, &lim, Mode::Closed)
                    .expect("reset from a non-closed mode");
                assert!(tr.from == Mode::HalfOpen || tr.from == Mode::Open);
                let t = log.admit(&m, &lim, 30).expect("closed after reset");
                assert!(!t.is_probe());
                assert_eq!(log.record(&m, &lim, t, Outcome::Failure, 30), None);
                log
            })
        };
        let logs = join_all(vec![prober, resetter]);
        let fin = slots.machine(&lim).load();
        check_ledger(initial, fin, &logs, 0);
        assert_eq!(fin.mode(), Mode::Closed);
        assert_eq!(fin.failures(), 1, "exactly the post-reset failure counts");
        let probe_landed = !logs[0].transitions.is_empty();
        assert_eq!(fin.generation(), if probe_landed { 4 } else { 3 });
        let reset_from = logs[1].transitions[0].from;
        assert_eq!(
            reset_from,
            if probe_landed {
                Mode::Open
            } else {
                Mode::HalfOpen
            }
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Half-open counters and transition accounting
// ---------------------------------------------------------------------------------------------

/// Tripped at 0, reset_timeout 100, max 2 probes, success_threshold 2. Three threads with expired
/// clocks each admit (one observes first) and record `outcomes[i]` if admitted. While they run, no
/// more than 2 threads ever hold a permit of the half-open generation at once (a ghost counter,
/// raised after the admission and lowered before the outcome, so it never over-counts). At the
/// end every admitted probe has recorded, so either the mode moved on or in_flight is back to 0 and
/// the success count is exactly what was recorded in this generation.
fn half_open_outcomes(outcomes: [Outcome; 3]) {
    use loom::sync::atomic::{AtomicU64, Ordering::SeqCst};
    let lim = limits(1, 100, 2, 2, None);
    let slots = Arc::new(Slots::new());
    trip(&slots.machine(&lim), &lim, 0);
    let initial = slots.machine(&lim).load();
    let half_open_gen = initial.generation() + 1;
    let holders = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..3)
        .map(|i| {
            let slots = slots.clone();
            let holders = holders.clone();
            let outcome = outcomes[i];
            thread::spawn(move || {
                let m = slots.machine(&lim);
                let mut log = Log::default();
                let now = 100 + 10 * i as u64;
                if i == 2 {
                    log.observe(&m, &lim, now);
                }
                if let Some(t) = log.admit(&m, &lim, now) {
                    let counted = t.is_probe() && t.generation() == half_open_gen;
                    if counted {
                        let held = holders.fetch_add(1, SeqCst) + 1;
                        assert!(
                            held <= lim.half_open_max_calls,
                            "{held} threads hold a probe permit at once"
                        );
                        holders.fetch_sub(1, SeqCst);
                    }
                    log.record(&m, &lim, t, outcome, now);
                }
                log
            })
        })
        .collect();
    let logs = join_all(handles);
    let fin = slots.machine(&lim).load();
    check_ledger(initial, fin, &logs, 0);

    let opened: usize = logs
        .iter()
        .map(|l| {
            l.transitions
                .iter()
                .filter(|t| t.from == Mode::Open && t.to == Mode::HalfOpen)
                .count()
        })
        .sum();
    assert!(
        opened >= 1,
        "every thread's timeout ran out, yet nobody went half-open"
    );

    // Outcomes recorded by probes of the first half-open generation.
    let probe_outcomes: Vec<Outcome> = logs
        .iter()
        .zip(outcomes)
        .filter(|(l, _)| {
            l.tickets
                .first()
                .is_some_and(|t| t.is_probe() && t.generation() == half_open_gen)
        })
        .map(|(_, o)| o)
        .collect();
    match fin.mode() {
        Mode::HalfOpen => {
            assert_eq!(fin.generation(), half_open_gen);
            assert_eq!(fin.in_flight(), 0, "permits leaked: {fin:?} after {logs:?}");
            let successes = probe_outcomes
                .iter()
                .filter(|&&o| o == Outcome::Success)
                .count() as u64;
            assert_eq!(fin.probe_successes(), successes);
            assert!(!probe_outcomes.contains(&Outcome::Failure));
        }
        Mode::Closed => {
            let successes = probe_outcomes
                .iter()
                .filter(|&&o| o == Outcome::Success)
                .count();
            assert!(successes >= 2, "closed after {successes} probe successes");
            assert_eq!(
                fin.failures(),
                0,
                "only successes and ignores follow the close"
            );
        }
        Mode::Open => {
            assert!(
                probe_outcomes.contains(&Outcome::Failure),
                "reopened without a probe failure"
            );
            assert!(fin.opened_at() >= 100);
            for l in &logs {
                for &r in &l.rejections {
                    // Rejected either half-open and full (0), or reopened at 100..=120 by a
                    // clock of 100..=120 (so 80..=100 to go).
                    assert!(r == 0 || (80..=100).contains(&r), "retry_after {r}");
                }
            }
        }
        m => panic!("unexpected final mode {m:?}"),
    }
}

#[test]
fn half_open_successes_and_ignores_balance() {
    model(Some(2), || {
        half_open_outcomes([Outcome::Success, Outcome::Ignored, Outcome::Success])
    });
}

#[test]
fn half_open_failure_races_success_and_ignore() {
    model(Some(2), || {
        half_open_outcomes([Outcome::Success, Outcome::Failure, Outcome::Ignored])
    });
}

/// A reset races two half-open probes (one succeeds, one fails). Whatever the order, each change of
/// mode is reported to exactly one thread, the generations add up, no generation hands out more
/// than max permits, and the reset wins: a probe outcome landing after it is stale.
#[test]
fn reset_races_half_open_probes() {
    model(Some(3), || {
        let lim = limits(2, 10, 1, 1, None);
        let slots = Arc::new(Slots::new());
        let m0 = slots.machine(&lim);
        trip(&m0, &lim, 0);
        let (w, tr) = m0.observe(|| 10);
        assert_eq!(
            tr,
            Some(Transition {
                from: Mode::Open,
                to: Mode::HalfOpen
            })
        );
        assert_eq!(w.in_flight(), 0);
        let initial = m0.load();
        let handles: Vec<_> = [Outcome::Success, Outcome::Failure]
            .into_iter()
            .enumerate()
            .map(|(i, outcome)| {
                let slots = slots.clone();
                thread::spawn(move || {
                    let m = slots.machine(&lim);
                    let mut log = Log::default();
                    let now = 20 + i as u64;
                    if let Some(t) = log.admit(&m, &lim, now) {
                        let tr = log.record(&m, &lim, t, outcome, now);
                        if !t.is_probe() {
                            // Admitted after the reset: a closed-period call never changes mode
                            // below threshold 2 with a single failure.
                            assert_eq!(tr, None);
                        }
                    }
                    log
                })
            })
            .chain(std::iter::once({
                let slots = slots.clone();
                thread::spawn(move || {
                    let m = slots.machine(&lim);
                    let mut log = Log::default();
                    log.set_mode(&m, &lim, Mode::Closed);
                    log
                })
            }))
            .collect();
        let logs = join_all(handles);
        let fin = slots.machine(&lim).load();
        check_ledger(initial, fin, &logs, 0);
        check_probe_tickets(&logs, &lim);
        // The reset is the resetter's only write; every later write needs a post-reset ticket.
        let post_reset: Vec<Ticket> = logs[..2]
            .iter()
            .flat_map(|l| l.tickets.iter().copied())
            .filter(|t| !t.is_probe() && t.generation() > initial.generation())
            .collect();
        if post_reset.is_empty() {
            assert_eq!(fin.mode(), Mode::Closed);
            assert_eq!(fin.failures(), 0);
        }
        assert_ne!(fin.mode(), Mode::HalfOpen, "the reset was lost");
        assert!(
            fin.mode() != Mode::Open,
            "threshold 2 with one post-reset failure cannot reopen"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Probe timeout: reclaim racing the hung probe's late outcome
// ---------------------------------------------------------------------------------------------

/// reset_timeout 10, max 1, probe_timeout 50. A probe admitted at 10 hangs. Concurrently:
/// - the hung probe finally records `late` with clock 55;
/// - two threads with clock 60 (the probe is 50 ms old, so it counts as hung) try to admit; the
///   first also records a success if it gets a permit.
///
/// Either the late outcome lands first (and is reported), or a reclaim does (and the late outcome
/// is stale, reports nothing and changes nothing). Only one of the two admitters may get a probe
/// permit, the reclaimed generation never holds more than one permit, and a late outcome that was
/// reported is the only change of mode before the admitters.
fn reclaim_race(late: Outcome) {
    let lim = limits(1, 10, 1, 1, Some(50));
    let slots = Arc::new(Slots::new());
    let m0 = slots.machine(&lim);
    trip(&m0, &lim, 0);
    let hung = expect_ticket(m0.admit(|| 10));
    assert_eq!((hung.generation(), hung.is_probe()), (2, true));
    let initial = m0.load();

    let late_thread = {
        let slots = slots.clone();
        thread::spawn(move || {
            let m = slots.machine(&lim);
            let mut log = Log::default();
            log.record(&m, &lim, hung, late, 55);
            log
        })
    };
    let admitter = |slots: Arc<Slots>, record: bool| {
        thread::spawn(move || {
            let m = slots.machine(&lim);
            let mut log = Log::default();
            if let Some(t) = log.admit(&m, &lim, 60) {
                if record {
                    log.record(&m, &lim, t, Outcome::Success, 60);
                }
            }
            log
        })
    };
    let a = admitter(slots.clone(), true);
    let b = admitter(slots.clone(), false);
    let logs = join_all(vec![late_thread, a, b]);
    let fin = slots.machine(&lim).load();

    let late_reported = !logs[0].transitions.is_empty();
    let reclaims: Vec<Ticket> = logs[1..]
        .iter()
        .flat_map(|l| l.tickets.iter().copied())
        .filter(|t| t.is_probe() && t.generation() == initial.generation() + 1)
        .collect();
    assert!(
        reclaims.len() <= 1,
        "two reclaims of the same generation: {logs:?}"
    );
    let probes: Vec<Ticket> = logs[1..]
        .iter()
        .flat_map(|l| l.tickets.iter().copied())
        .filter(|t| t.is_probe())
        .collect();
    assert!(
        probes.len() <= 1,
        "more than half_open_max_calls probes admitted: {logs:?}"
    );
    check_ledger(initial, fin, &logs, reclaims.len() as u32);
    assert!(
        late_reported == reclaims.is_empty(),
        "late outcome reported: {late_reported}, reclaims: {reclaims:?} ({logs:?})"
    );

    if late_reported {
        // The hung probe's outcome won: it decided the mode, and the admitters saw that mode.
        match late {
            Outcome::Failure => {
                assert_eq!(
                    logs[0].transitions,
                    vec![Transition {
                        from: Mode::HalfOpen,
                        to: Mode::Open
                    }]
                );
                assert_eq!(fin.mode(), Mode::Open);
                assert_eq!(fin.opened_at(), 55);
                assert_eq!(fin.generation(), 3);
                for l in &logs[1..] {
                    assert!(
                        l.tickets.is_empty(),
                        "admitted into a breaker reopened at 55, clock 60"
                    );
                    assert_eq!(l.rejections, vec![5]);
                }
            }
            Outcome::Success => {
                assert_eq!(
                    logs[0].transitions,
                    vec![Transition {
                        from: Mode::HalfOpen,
                        to: Mode::Closed
                    }]
                );
                assert_eq!(fin.mode(), Mode::Closed);
                assert_eq!(fin.generation(), 3);
                for l in &logs[1..] {
                    let tickets: Vec<_> = l
                        .tickets
                        .iter()
                        .map(|t| (t.generation(), t.is_probe()))
                        .collect();
                    assert_eq!(tickets, vec![(3, false)]);
                }
            }
            Outcome::Ignored => unreachable!(),
        }
    } else {
        // A reclaim won: the late outcome is stale and the reclaimer owns the only permit.
        assert_eq!(logs[0].transitions, vec![]);
        let reclaimer_recorded = logs[1].tickets.first().is_some_and(|t| t.is_probe());
        if reclaimer_recorded {
            assert_eq!(
                fin.mode(),
                Mode::Closed,
                "the reclaimer's success closes the breaker"
            );
            assert_eq!(fin.generation(), 4);
            assert_eq!(
                logs[1].transitions,
                vec![Transition {
                    from: Mode::HalfOpen,
                    to: Mode::Closed
                }]
            );
        } else {
            assert_eq!(fin.mode(), Mode::HalfOpen, "{logs:?}");
            assert_eq!(fin.generation(), 3);
            assert_eq!(fin.in_flight(), 1);
            assert_eq!(fin.probe_successes(), 0);
        }
    }
}

#[test]
fn probe_reclaim_races_late_failure() {
    model(Some(3), || reclaim_race(Outcome::Failure));
}

#[test]
fn probe_reclaim_races_late_success() {
    model(Some(3), || reclaim_race(Outcome::Success));
}

/// probe_timeout counts from the newest permit: a permit handed out just now must not be reclaimed.
///
/// Half-open with max 1, success_threshold 2: a first probe admitted at 10 succeeded (in_flight back
/// to 0, probe_stamp = generation 2 @ 10). Two threads with clock 100 (probe_timeout 50) admit.
/// Whichever gets the permit holds one that is 0 ms old, so the other must be rejected: exactly one
/// admission.
///
/// Regression test: `admit` used to take the permit with its CAS of the word and only afterwards
/// publish the permit's time with `probe_stamp.fetch_max`. In that window `probes_hung` read the
/// previous stamp of the same generation (the finished probe at 10), saw 100 - 10 >= 50 and
/// reclaimed, admitting two probes with half_open_max_calls = 1 and dropping the fresh one:
///   P: admit(100): CAS word gen 2 in_flight 0 -> 1          (stamp still gen 2 @ 10)
///   Q: admit(100): in_flight 1 == max, stamp gen 2 @ 10 is 90 ms old -> reclaim, gen 3, admitted
///   P: fetch_max(gen 2 @ 100) is a no-op; P returns Admitted { generation: 2, probe: true }
/// Fixed by stamping before the CAS.
#[test]
fn fresh_permit_is_not_reclaimed() {
    model(None, || {
        let lim = limits(1, 10, 1, 2, Some(50));
        let slots = Arc::new(Slots::new());
        let m0 = slots.machine(&lim);
        trip(&m0, &lim, 0);
        let first = expect_ticket(m0.admit(|| 10));
        assert_eq!(m0.record(first, Outcome::Success, || 10), None);
        let initial = m0.load();
        assert_eq!(
            (
                initial.mode(),
                initial.in_flight(),
                initial.probe_successes()
            ),
            (Mode::HalfOpen, 0, 1)
        );

        let handles: Vec<_> = (0..2)
            .map(|_| {
                let slots = slots.clone();
                thread::spawn(move || {
                    let m = slots.machine(&lim);
                    let mut log = Log::default();
                    log.admit(&m, &lim, 100);
                    log
                })
            })
            .collect();
        let logs = join_all(handles);
        let admitted: Vec<Ticket> = logs
            .iter()
            .flat_map(|l| l.tickets.iter().copied())
            .collect();
        assert_eq!(
            admitted.len(),
            1,
            "two probes admitted at the same instant with half_open_max_calls = 1: {admitted:?}"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// The closed fast path (crates/engine/src/fast_path.rs)
// ---------------------------------------------------------------------------------------------

/// A success on the fast path races a failure that trips the breaker. The breaker has
/// `initial_failures` failures and trips on the next one; both threads go through
/// [`Log::guarded_call`] (no predicate, so both may take the fast path). The failure is never
/// lost: either it trips the breaker (and a success admitted before the trip goes stale), or the
/// success landed first, which only happens when there were failures to clear (a healthy success
/// writes nothing), and the failure is then counted in the closed period.
fn fast_success_races_a_failure(initial_failures: u64) {
    let lim = limits(initial_failures + 1, 100, 1, 1, None);
    let slots = Arc::new(Slots::new());
    let flag = Arc::new(PredicateFlag::new(0, false));
    let m0 = slots.machine(&lim);
    for _ in 0..initial_failures {
        let t = expect_ticket(m0.admit(|| 0));
        m0.record(t, Outcome::Failure, || 0);
    }
    let initial = m0.load();
    let caller = |outcome: Outcome, now: u64| {
        let (slots, flag) = (slots.clone(), flag.clone());
        thread::spawn(move || {
            let mut log = Log::default();
            let path = log.guarded_call(&slots, &flag, &lim, outcome, now);
            (log, path)
        })
    };
    let success = caller(Outcome::Success, 10);
    let failure = caller(Outcome::Failure, 20);
    let (success_log, success_path) = success.join().unwrap();
    let (failure_log, failure_path) = failure.join().unwrap();
    let fin = slots.machine(&lim).load();
    let logs = [success_log, failure_log];
    check_ledger(initial, fin, &logs, 0);
    assert_ne!(
        failure_path,
        Path::Rejected,
        "nothing trips before the failure"
    );
    assert!(
        logs[0].transitions.is_empty(),
        "a closed success changes no mode"
    );
    if fin.mode() == Mode::Open {
        assert_eq!((fin.generation(), fin.opened_at()), (1, 20));
        assert_eq!(
            logs[1].transitions,
            vec![Transition {
                from: Mode::Closed,
                to: Mode::Open
            }]
        );
    } else {
        // The success cleared the failures before the failure landed.
        assert!(
            initial_failures > 0,
            "a healthy success hid a trip: {logs:?}"
        );
        assert_eq!(
            success_path,
            Path::Fast,
            "the success had failures to clear"
        );
        assert_eq!(
            (fin.mode(), fin.generation(), fin.failures()),
            (Mode::Closed, 0, 1)
        );
    }
    if initial_failures > 0 {
        assert_ne!(
            success_path,
            Path::FastNoWrite,
            "failures to clear: a write was due"
        );
    }
}

#[test]
fn fast_success_races_a_trip_of_a_healthy_breaker() {
    model(None, || fast_success_races_a_failure(0));
}

#[test]
fn fast_success_races_a_failure_that_trips_unless_cleared_first() {
    model(None, || fast_success_races_a_failure(1));
}

/// Two successes on the fast path race a force-open followed by a reset. A success admitted before
/// the force-open goes stale (reports and writes nothing); calls meanwhile are rejected; a healthy
/// success never writes the word, so the end state is exactly the reset's: closed, two generations
/// on, no failures.
#[test]
fn fast_success_races_force_open_and_reset() {
    model(Some(3), || {
        let lim = limits(1, 100, 1, 1, None);
        let slots = Arc::new(Slots::new());
        let flag = Arc::new(PredicateFlag::new(0, false));
        let caller = {
            let (slots, flag) = (slots.clone(), flag.clone());
            thread::spawn(move || {
                let mut log = Log::default();
                // A call may also see the breaker forced open, then closed by `Machine::admit`.
                log.guarded_call(&slots, &flag, &lim, Outcome::Success, 10);
                log.guarded_call(&slots, &flag, &lim, Outcome::Success, 10);
                log
            })
        };
        let operator = {
            let slots = slots.clone();
            thread::spawn(move || {
                let m = slots.machine(&lim);
                let mut log = Log::default();
                log.set_mode(&m, &lim, Mode::ForcedOpen);
                log.set_mode(&m, &lim, Mode::Closed);
                log
            })
        };
        let logs = join_all(vec![caller, operator]);
        let fin = slots.machine(&lim).load();
        check_ledger(Word::INITIAL, fin, &logs, 0);
        assert!(logs[0].transitions.is_empty());
        assert_eq!(
            (fin.mode(), fin.generation(), fin.failures()),
            (Mode::Closed, 2, 0)
        );
    });
}

/// Bug 13: two reconfigurations publish their predicate flags out of order. Each installs its
/// configuration (a CAS of `config`, standing for the bindings' `ArcSwap::rcu`: `version << 1 |
/// has a predicate`), then publishes the configuration current at that moment, as
/// `BreakerCore::reconfigure` does. One configuration has a predicate, the other none, and either
/// may be installed first.
///
/// - Once a publish has returned, the flag describes that configuration or a newer one: a reader
///   that knows the predicate configuration was published never sees an older flag, and never
///   takes the fast path unless a newer configuration without a predicate was installed.
/// - Once both have returned, the flag describes the newest configuration.
#[test]
fn predicate_flags_published_out_of_order() {
    model(Some(3), || {
        let config = Arc::new(AtomicU64::new(0)); // version 0, no predicate
        let flag = Arc::new(PredicateFlag::new(0, false));
        let slots = Arc::new(Slots::new());
        // The version of the predicate configuration, plus one, once its publish has returned.
        let published = Arc::new(AtomicU64::new(0));
        let reconfigure = |has_predicate: bool| {
            let (config, flag, published) = (config.clone(), flag.clone(), published.clone());
            thread::spawn(move || {
                let mut current = config.load(Ordering::Acquire);
                let installed = loop {
                    let next = ((current >> 1) + 1) << 1 | u64::from(has_predicate);
                    match config.compare_exchange(
                        current,
                        next,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => break next >> 1,
                        Err(actual) => current = actual,
                    }
                };
                let newest = config.load(Ordering::Acquire);
                flag.publish(newest >> 1, newest & 1 == 1);
                let (version, _) = flag.published();
                assert!(version >= installed, "the flag went back past {installed}");
                if has_predicate {
                    published.store(installed + 1, Ordering::Release);
                }
            })
        };
        let with_predicate = reconfigure(true);
        let without = reconfigure(false);
        let reader = {
            let (config, flag, slots, published) = (
                config.clone(),
                flag.clone(),
                slots.clone(),
                published.clone(),
            );
            thread::spawn(move || {
                let Some(v1) = published.load(Ordering::Acquire).checked_sub(1) else {
                    return;
                };
                let (version, has_predicate) = flag.published();
                assert!(
                    version >= v1,
                    "flag of version {version} after {v1} was published"
                );
                assert!(
                    has_predicate || version > v1,
                    "no predicate read for the predicate configuration {v1}"
                );
                if slots.admit_fast(&flag).is_some() {
                    let newest = config.load(Ordering::Acquire);
                    assert!(
                        newest >> 1 > v1 && newest & 1 == 0,
                        "fast path taken under the predicate configuration {v1}"
                    );
                }
            })
        };
        with_predicate.join().unwrap();
        without.join().unwrap();
        reader.join().unwrap();
        let newest = config.load(Ordering::Acquire);
        assert_eq!(newest >> 1, 2);
        assert_eq!(flag.published(), (newest >> 1, newest & 1 == 1));
    });
}

// ---------------------------------------------------------------------------------------------
// Rate rules: the sliding window (issue 11)
// ---------------------------------------------------------------------------------------------

/// A breaker with only a failure-rate rule over a 1 ms window (two buckets of 500 µs under loom;
/// the clocks below are milliseconds, the window reads them in microseconds).
fn rate_limits(min_calls: u64, failure_rate: f64) -> Limits {
    Limits {
        failure_threshold: NO_FAILURE_THRESHOLD,
        rate: Some(RatePolicy {
            window_us: 1000,
            min_calls,
            failure_rate: Some(failure_rate),
            slow_call_rate: None,
        }),
        ..Limits::default()
    }
}

fn new_window(lim: &Limits) -> Window {
    Window::new(lim.rate.expect("a rate rule").bucket_us())
}

/// Threads that each count a call into a bucket still holding an older time's counts (which
/// must be reset first) lose no count, and the old counts never show.
fn stale_bucket_race(threads: u64, fast_successes: bool) {
    let lim = rate_limits(100, 1.0);
    let window = Arc::new(new_window(&lim));
    // Generation 0, bucket 0: three failures. Bucket 10 (1000 µs) uses the same slot: the
    // recorders find it stale, or reset by another thread (a fast success's one CAS then fails).
    for _ in 0..3 {
        window.record(0, 0, true, false, || true);
    }
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let window = window.clone();
            thread::spawn(move || {
                if i == 0 || !fast_successes {
                    let counted = window.record(0, 1000, i == 0, false, || true);
                    assert_ne!(counted, 0, "a current recorder's count was dropped");
                } else {
                    // The failure may be in already: then the window may trip.
                    let _ = window.record_success(0, 1000, || true);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(
        window.counts(0, 1000),
        Counts {
            calls: threads,
            failures: 1,
            slow: 0
        },
        "a count was lost, or an old one shows"
    );
}

#[test]
fn window_no_lost_count_in_a_bucket_being_reset_two_threads() {
    model(None, || stale_bucket_race(2, false));
}

#[test]
fn window_no_lost_count_in_a_bucket_being_reset_three_threads() {
    model(Some(3), || stale_bucket_race(3, false));
}

/// A failure admitted under generation 0 is recorded while another thread resets the breaker
/// (generation 1) and records a success: the failure never lands in generation 1's window, and no
/// trip follows (the failure alone would trip: rate 1.0 with one call needed).
#[test]
fn window_stale_generation_never_lands_in_the_new_window() {
    // At most 3 preemptions: every interleaving took over 20 minutes once the sum read the width
    // twice (bug 44) and a noted failure re-read it (bug 43).
    model(Some(3), || {
        let lim = rate_limits(1, 1.0);
        let slots = Arc::new(Slots::new());
        let window = Arc::new(new_window(&lim));
        let late = expect_ticket(slots.machine(&lim).admit(|| 0));
        let recorder = {
            let (slots, window) = (slots.clone(), window.clone());
            thread::spawn(move || {
                let m = slots.machine(&lim).with_window(&window);
                m.record(late, Outcome::Failure, || 0)
            })
        };
        let resetter = {
            let (slots, window) = (slots.clone(), window.clone());
            thread::spawn(move || {
                let m = slots.machine(&lim).with_window(&window);
                m.set_mode(Mode::Closed);
                let t = expect_ticket(m.admit(|| 0));
                m.record(t, Outcome::Success, || 0)
            })
        };
        let late_transition = recorder.join().unwrap();
        assert_eq!(resetter.join().unwrap(), None, "a success trips nothing");
        let m = slots.machine(&lim).with_window(&window);
        let fin = m.load();
        match late_transition {
            // The failure landed before the reset: it tripped generation 0, and the reset closed
            // that trip's generation 1 into generation 2.
            Some(tr) => {
                assert_eq!(tr.to, Mode::Open);
                assert_eq!((fin.mode(), fin.generation()), (Mode::Closed, 2));
            }
            None => assert_eq!((fin.mode(), fin.generation()), (Mode::Closed, 1)),
        }
        assert_eq!(
            m.window_counts(0),
            Counts {
                calls: 1,
                failures: 0,
                slow: 0
            },
            "only the success of the new generation counts"
        );
    });
}

/// `threads` threads each record a failure into a window that already holds one success; the
/// failure rate is met once two failures are in (min_calls 3, rate 0.5): exactly one thread trips
/// the breaker, with one CAS of the word, and is told so.
fn rate_trip_race(threads: u64) {
    let lim = rate_limits(3, 0.5);
    let slots = Arc::new(Slots::new());
    let window = Arc::new(new_window(&lim));
    {
        let m = slots.machine(&lim).with_window(&window);
        let t = expect_ticket(m.admit(|| 0));
        assert_eq!(m.record(t, Outcome::Success, || 0), None);
    }
    // Every call is admitted before any failure lands (a later admission would be rejected).
    let tickets: Vec<Ticket> = (0..threads)
        .map(|_| expect_ticket(slots.machine(&lim).admit(|| 0)))
        .collect();
    let handles: Vec<_> = tickets
        .into_iter()
        .map(|t| {
            let (slots, window) = (slots.clone(), window.clone());
            thread::spawn(move || {
                let m = slots.machine(&lim).with_window(&window);
                let mut log = Log::default();
                log.tickets.push(t);
                let tr = m.record(t, Outcome::Failure, || 0);
                if let Some(tr) = tr {
                    log.transitions.push(tr);
                }
                log
            })
        })
        .collect();
    let logs = join_all(handles);
    let fin = slots.machine(&lim).load();
    check_ledger(Word::INITIAL, fin, &logs, 0);
    assert_eq!((fin.mode(), fin.generation()), (Mode::Open, 1));
    let told: Vec<_> = logs.iter().flat_map(|l| l.transitions.clone()).collect();
    assert_eq!(
        told,
        vec![Transition {
            from: Mode::Closed,
            to: Mode::Open
        }],
        "exactly one trip, reported once"
    );
}

// Each failure is a dozen atomic steps (count, note, judge, CAS): the two-thread model runs with
// three preemptions (every interleaving takes minutes), the three-thread one with two.
#[test]
fn window_exactly_one_trip_two_threads() {
    model(Some(3), || rate_trip_race(2));
}

#[test]
fn window_exactly_one_trip_three_threads() {
    model(Some(2), || rate_trip_race(3));
}

/// A late recorder (its clock read a window ago) races the recorder that rolls the same slot on
/// to the new bucket: the late count never lands in the new bucket, the new count is never lost.
#[test]
fn window_bucket_roll_races_a_late_recorder() {
    model(None, || {
        let lim = rate_limits(100, 1.0);
        let window = Arc::new(new_window(&lim));
        let late = {
            let window = window.clone();
            thread::spawn(move || window.record(0, 50, true, true, || true))
        };
        let roller = {
            let window = window.clone();
            thread::spawn(move || window.record(0, 1050, false, false, || true))
        };
        late.join().unwrap();
        assert_eq!(roller.join().unwrap(), 1, "the new bucket's count");
        assert_eq!(
            window.counts(0, 1050),
            Counts {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
    });
}

/// The closed fast path's count (`Window::record_success`: one load and one CAS when the bucket
/// already holds its tag, else `add`'s loop) racing a recorder that resets the same slot for a
/// newer bucket: whichever order, no current count is lost and the old counts never show. Two
/// fast successes and a failure through `record` in the three-thread model.
#[test]
fn window_fast_success_races_a_bucket_reset_two_threads() {
    model(None, || stale_bucket_race(2, true));
}

#[test]
fn window_fast_success_races_a_bucket_reset_three_threads() {
    model(Some(3), || stale_bucket_race(3, true));
}

/// Two fast successes in one bucket that already holds their tag: both CAS the same word, one
/// loses and counts again. Neither count is lost.
#[test]
fn window_fast_successes_race_in_one_bucket() {
    model(None, || {
        let lim = rate_limits(100, 1.0);
        let window = Arc::new(new_window(&lim));
        assert!(!window.record_success(0, 100, || true));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let window = window.clone();
                thread::spawn(move || window.record_success(0, 150, || true))
            })
            .collect();
        for h in handles {
            assert!(!h.join().unwrap(), "no failure: nothing to judge");
        }
        assert_eq!(window.counts(0, 150).calls, 3);
    });
}

/// A fast success of generation 0 (its `record_fast_success` passed, then the breaker was reset)
/// counts into a bucket that still holds generation 0's counts, while the resetting thread counts
/// generation 1's first success into the same bucket: the late count never lands in generation
/// 1's window, generation 1's count is never lost.
#[test]
fn window_late_fast_success_never_lands_in_the_new_generation() {
    model(None, || {
        let lim = rate_limits(1, 1.0);
        let slots = Arc::new(Slots::new());
        let window = Arc::new(new_window(&lim));
        let current = |slots: &Slots, generation: u32| {
            let w = slots.machine_word();
            w.mode() == Mode::Closed && w.generation() == generation
        };
        assert!(!window.record_success(0, 0, || current(&slots, 0)));
        let late = {
            let (slots, window) = (slots.clone(), window.clone());
            thread::spawn(move || window.record_success(0, 0, || current(&slots, 0)))
        };
        let resetter = {
            let (slots, window) = (slots.clone(), window.clone());
            thread::spawn(move || {
                slots.machine(&lim).set_mode(Mode::Closed);
                let generation = slots.machine_word().generation();
                assert_eq!(generation, 1);
                window.record_success(generation, 0, || current(&slots, generation))
            })
        };
        let _ = late.join().unwrap();
        assert!(!resetter.join().unwrap(), "no failure: nothing to judge");
        assert_eq!(
            window.counts(1, 0),
            Counts {
                calls: 1,
                failures: 0,
                slow: 0
            },
            "only generation 1's own success counts"
        );
    });
}

/// A late fast success (its clock read a window ago) races the fast success that rolls the same
/// slot on to the new bucket: the late count never lands in the new bucket, the new count is
/// never lost.
#[test]
fn window_bucket_roll_races_a_late_fast_success() {
    model(None, || {
        let lim = rate_limits(100, 1.0);
        let window = Arc::new(new_window(&lim));
        assert!(!window.record_success(0, 40, || true));
        let late = {
            let window = window.clone();
            thread::spawn(move || window.record_success(0, 50, || true))
        };
        let roller = {
            let window = window.clone();
            thread::spawn(move || window.record_success(0, 1050, || true))
        };
        assert!(!late.join().unwrap());
        assert!(!roller.join().unwrap());
        assert_eq!(
            window.counts(0, 1050),
            Counts {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
    });
}

/// Where the racing success of [`success_races_the_failure_that_trips`] counts.
#[derive(Clone, Copy)]
enum SuccessIn {
    /// The window's own words (the home thread's, and every thread's with the GIL).
    Home,
    /// A lane made before the race (a second thread's, on a free-threaded build).
    Lane,
    /// A lane the success's thread makes during the race: the failure's judge may find no lanes.
    LaneMadeInTheRace,
    /// The window's own words, counted as `Counting::Alone` (a load and a store): with
    /// the GIL, every step of both threads holds one lock, taken apart for admission and for the
    /// outcome (the user's function runs, and others may take the GIL, in between).
    AloneUnderTheGil,
}

/// The closed fast path of a rate rule (`src/py/core.rs` `guarded` + `count_fast_success`): a
/// success counted with `Window::count_success_in` races the failure that, with it, meets the rate
/// (one success before, min_calls 3, rate 0.3: one failure in three calls). Whichever judges the
/// window last sees both counts: the breaker always opens, exactly once, and every count shows
/// in the window's counts. In a lane, the failure's judge reads the lanes (`Lanes`) with a
/// read-modify-write of their state word after noting its bucket, and the lane's newest count with
/// one, as it does the window's own.
fn success_races_the_failure_that_trips(success_in: SuccessIn) {
    // At most 3 preemptions: every interleaving took 3 to 12 minutes a model (see
    // `window_stale_generation_never_lands_in_the_new_window`).
    model(Some(3), move || {
        let lim = rate_limits(3, 0.3);
        let slots = Arc::new(Slots::new());
        let window = Arc::new(new_window(&lim));
        let lanes = Arc::new(Lanes::new());
        let (home, other) = (10, 11);
        assert!(lanes.lane(home).is_none(), "the first thread is home");
        if let SuccessIn::Lane = success_in {
            assert!(lanes.lane(other).is_some());
        }
        let flag = Arc::new(PredicateFlag::new(0, false));
        {
            let m = slots.machine(&lim).with_window(&window).with_lanes(&lanes);
            let t = expect_ticket(m.admit(|| 0));
            m.record(t, Outcome::Success, || 0);
        }
        let with_gil = matches!(success_in, SuccessIn::AloneUnderTheGil);
        let gil = Arc::new(Mutex::new(()));
        let success = {
            let (slots, window, lanes, flag, gil) = (
                slots.clone(),
                window.clone(),
                lanes.clone(),
                flag.clone(),
                gil.clone(),
            );
            thread::spawn(move || {
                let m = slots.machine(&lim).with_window(&window).with_lanes(&lanes);
                let held = with_gil.then(|| gil.lock().unwrap());
                let fast = slots.admit_fast(&flag).expect("closed, no predicate");
                drop(held);
                let _held = with_gil.then(|| gil.lock().unwrap());
                if slots.record_fast_success(fast) {
                    let generation = fast.ticket().generation();
                    let still_current = || {
                        let w = slots.machine_word();
                        w.mode() == Mode::Closed && w.generation() == generation
                    };
                    let counting = match success_in {
                        SuccessIn::Home => Counting::Shared(lanes.lane(home)),
                        SuccessIn::Lane | SuccessIn::LaneMadeInTheRace => Counting::Shared(Some(
                            lanes.lane(other).expect("a second thread counts in a lane"),
                        )),
                        SuccessIn::AloneUnderTheGil => Counting::Alone,
                    };
                    let counted =
                        window.count_success_in(counting, generation, |_| 0, still_current);
                    if let Some(now_us) = counted {
                        return m.judge_window(generation, now_us, || 0);
                    }
                    None
                } else {
                    m.record(fast.ticket(), Outcome::Success, || 0)
                }
            })
        };
        let failure = {
            let (slots, window, lanes, gil) =
                (slots.clone(), window.clone(), lanes.clone(), gil.clone());
            thread::spawn(move || {
                let m = slots.machine(&lim).with_window(&window).with_lanes(&lanes);
                let held = with_gil.then(|| gil.lock().unwrap());
                let t = expect_ticket(m.admit(|| 0));
                drop(held);
                let _held = with_gil.then(|| gil.lock().unwrap());
                m.record(t, Outcome::Failure, || 0)
            })
        };
        let told: Vec<_> = [success.join().unwrap(), failure.join().unwrap()]
            .into_iter()
            .flatten()
            .collect();
        let fin = slots.machine(&lim).load();
        assert_eq!((fin.mode(), fin.generation()), (Mode::Open, 1));
        assert_eq!(
            told,
            vec![Transition {
                from: Mode::Closed,
                to: Mode::Open
            }]
        );
        let counts = window.counts_with(0, 0, lanes.made());
        assert_eq!((counts.calls, counts.failures), (3, 1));
    });
}

#[test]
fn window_success_races_the_failure_that_trips() {
    success_races_the_failure_that_trips(SuccessIn::Home);
}

/// With the GIL (`src/py/core.rs`, a breaker's own window on a build with one): the success
/// counted with a load and a store instead of a CAS.
#[test]
fn a_success_counted_alone_under_the_gil_races_the_failure_that_trips() {
    success_races_the_failure_that_trips(SuccessIn::AloneUnderTheGil);
}

#[test]
fn a_success_counted_in_a_lane_races_the_failure_that_trips() {
    success_races_the_failure_that_trips(SuccessIn::Lane);
}

/// The lanes are made by the racing success's thread while the failure judges (a second thread
/// counting for the first time): the judge that finds no lanes leaves the trip to that success,
/// which then sees the failure's note.
#[test]
fn a_success_in_lanes_made_during_the_judge_of_a_failure_trips() {
    success_races_the_failure_that_trips(SuccessIn::LaneMadeInTheRace);
}

/// Successes counted at once in the window's words and in a lane whose word holds an older
/// generation's count (a lane left from before a trip): the lane's word is reset to the current
/// generation by the CAS that counts, no count is lost, and the old count is never read.
#[test]
fn a_stale_lane_is_reset_by_the_success_that_counts_in_it() {
    model(None, || {
        let lim = rate_limits(100, 0.5);
        let slots = Arc::new(Slots::new());
        let window = Arc::new(new_window(&lim));
        let lanes = Arc::new(Lanes::new());
        assert!(lanes.lane(0).is_none());
        // Generation 0 counts one success in the lane, then a reset starts generation 1.
        assert!(window
            .count_success_in(Counting::Shared(lanes.lane(1)), 0, |_| 0, || true)
            .is_none());
        slots.machine(&lim).set_mode(Mode::Closed);
        let generation = slots.machine_word().generation();
        assert_eq!(generation, 1);
        let workers: Vec<_> = [0, 1]
            .into_iter()
            .map(|key| {
                let (slots, window, lanes) = (slots.clone(), window.clone(), lanes.clone());
                thread::spawn(move || {
                    let still_current = || slots.machine_word().generation() == generation;
                    // One in the window's own words (as before the lanes were made), one in the lane.
                    let lane = if key == 0 { None } else { lanes.lane(key) };
                    window.count_success_in(
                        Counting::Shared(lane),
                        generation,
                        |_| 0,
                        still_current,
                    );
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(window.counts_with(generation, 0, lanes.made()).calls, 2);
        assert_eq!(window.counts_with(0, 0, lanes.made()).calls, 0);
    });
}

/// A failure recorded while `configure` widens the window (buckets of 1 µs to buckets of 500 µs):
/// whatever the recorder read of the width, it leaves nothing that turns later recorders away
/// (bug 43: it left an index of the old width in `newest_index`, 5000 where the new width's
/// buckets were at 10, so every later count was dropped as late and the rate rule was off until
/// the clock reached bucket 5000 of the new width) or that hides their failures from the judges
/// (its note of a bucket of the old width is taken back). A failure later on, at 5500 µs, is
/// counted and trips a rule of one call at rate 0.5 (the racing failure may land in the new
/// window without its call, or its call without it: a window around a change of width is
/// approximate, never off).
#[test]
fn a_width_change_racing_a_recorder_leaves_the_rate_rule_on() {
    model(None, || {
        let lim = rate_limits(1, 0.5);
        let policy = lim.rate.expect("a rate rule");
        let window = Arc::new(Window::new(1));
        let recorder = {
            let window = window.clone();
            thread::spawn(move || {
                window.record(0, 5000, true, false, || true);
            })
        };
        window.set_bucket_us(500);
        recorder.join().unwrap();
        assert_ne!(window.record(0, 5500, true, false, || true), 0, "counted");
        let counts = window.counts(0, 5500);
        assert!(window.trips(&policy, 0, 5500, true), "{counts:?}");
    });
}

/// A judge sums the window while `configure` gives it a new width, which clears the window's
/// words and then its lanes (`LocalWindow::set_bucket_us`): one failure in the window's words,
/// two successes in a lane, a rate of 1/3 against 0.5. A sum that read the cleared calls but not
/// the lane's would read 1/2 and trip: a sum during which the width changed is empty instead.
#[test]
fn a_judge_never_trips_on_a_window_cleared_under_it() {
    model(None, || {
        let lim = rate_limits(2, 0.5);
        let policy = lim.rate.expect("a rate rule");
        let window = Arc::new(new_window(&lim));
        let lanes = Arc::new(Lanes::new());
        assert!(lanes.lane(0).is_none());
        let lane = lanes.lane(1).expect("a lane");
        window.record(0, 100, true, false, || true);
        for _ in 0..2 {
            window.count_success_in(Counting::Shared(Some(lane)), 0, |_| 100, || true);
        }
        assert_eq!(window.counts_with(0, 100, lanes.made()).calls, 3);
        let judge = {
            let (window, lanes) = (window.clone(), lanes.clone());
            thread::spawn(move || window.trips_with(&policy, 0, 100, false, Some(&lanes)))
        };
        window.set_bucket_us_with(700, Some(&lanes));
        assert!(!judge.join().unwrap(), "a rate the window never had");
    });
}

/// A reader judging the window races a recorder that moves time on and rolls a slot of that
/// window on to a newer bucket: the reader never adds up the slot's failures without its calls
/// (bug 41: it tripped a window whose rate was 0.4 by seeing 2 failures in 3 calls). Bucket 0
/// holds a success and a failure, bucket 1 two successes and a failure (2 / 5 against a rate of
/// 0.6); the recorder counts a success in bucket 2, which takes bucket 0's slot.
#[test]
fn a_judge_never_sums_a_slot_rolled_on_under_it() {
    model(None, || {
        let lim = rate_limits(2, 0.6);
        let policy = lim.rate.expect("a rate rule");
        let window = Arc::new(new_window(&lim));
        for (now_us, failure) in [
            (0, false),
            (0, true),
            (500, false),
            (500, false),
            (500, true),
        ] {
            window.record(0, now_us, failure, false, || true);
        }
        let recorder = {
            let window = window.clone();
            thread::spawn(move || {
                window.record_success(0, 1000, || true);
            })
        };
        assert!(!window.trips(&policy, 0, 500, false));
        recorder.join().unwrap();
        assert!(!window.trips(&policy, 0, 500, false));
        let counts = window.counts(0, 1000);
        assert_eq!((counts.calls, counts.failures), (4, 1));
    });
}

// ---------------------------------------------------------------------------------------------
// Open-time backoff (issue 11)
// ---------------------------------------------------------------------------------------------

/// Two probes fail together: one reopens the breaker, with the first backed-off open time
/// (reset_timeout 100 ms * backoff 2), written before the word that reopens it, so that every
/// thread that sees the breaker open also sees how long for.
#[test]
fn backoff_probes_failing_together_reopen_once_for_the_backed_off_time() {
    model(None, || {
        let lim = Limits {
            half_open_max_calls: 2,
            open_time: OpenTime {
                backoff: 2.0,
                max_ms: 1000,
                jitter: 0.0,
            },
            ..limits(1, 100, 2, 1, None)
        };
        let slots = Arc::new(Slots::new());
        let m0 = slots.machine(&lim);
        trip(&m0, &lim, 0);
        let probes = [
            expect_ticket(m0.admit(|| 100)),
            expect_ticket(m0.admit(|| 100)),
        ];
        let handles: Vec<_> = probes
            .into_iter()
            .map(|probe| {
                let slots = slots.clone();
                thread::spawn(move || {
                    let m = slots.machine(&lim);
                    let tr = m.record(probe, Outcome::Failure, || 150);
                    // Whoever sees it open sees the backed-off time.
                    if m.load().mode() == Mode::Open {
                        assert_eq!(m.retry_after_ms(m.load(), || 150), 200);
                    }
                    tr
                })
            })
            .collect();
        let told: Vec<_> = handles
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(
            told,
            vec![Transition {
                from: Mode::HalfOpen,
                to: Mode::Open
            }]
        );
        let m = slots.machine(&lim);
        assert_eq!(m.admit(|| 349), Admission::Rejected { retry_after_ms: 1 });
        assert!(expect_ticket(m.admit(|| 350)).is_probe());
    });
}

/// The published clock reading (`panelboard_engine::ticker`): a ticker that publishes, then,
/// idle, stops, races a reader that takes the reading or, finding none, starts a ticker of its
/// own. Whatever the interleaving, a reading is left published only while a ticker runs (the
/// stopping one cleared it before letting another start), and two tickers never run at once.
#[test]
fn a_stopping_ticker_never_leaves_a_reading_behind() {
    model(None, || {
        let ticker = Arc::new(Ticker::new());
        assert!(ticker.claim_start());
        ticker.publish(100);
        let reader = {
            let ticker = ticker.clone();
            thread::spawn(move || match ticker.read() {
                Some(now) => {
                    assert_eq!(now, 100, "only the reading published");
                    false
                }
                None => ticker.claim_start(),
            })
        };
        let stopper = {
            let ticker = ticker.clone();
            thread::spawn(move || !ticker.publish(100) && ticker.stop())
        };
        let stopped = stopper.join().unwrap();
        let started = reader.join().unwrap();
        assert!(!(started && !stopped), "two tickers at once");
        if stopped && !started {
            assert_eq!(
                ticker.read(),
                None,
                "a reading left with no ticker to keep it fresh"
            );
        }
        if started {
            assert_eq!(
                ticker.read(),
                None,
                "the new ticker has published nothing yet"
            );
        }
    });
}
