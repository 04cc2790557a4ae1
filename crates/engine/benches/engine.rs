//! Criterion benches of the plain-Rust state machine: admit + record, uncontended and contended,
//! what counting each outcome for `metrics()` adds to it, and what a rate rule's window adds
//! (issue 11).
use criterion::{criterion_group, criterion_main, Criterion};
use panelboard_engine::metrics::{Counter, Counters};
use panelboard_engine::{
    Admission, Limits, Outcome, PredicateFlag, RatePolicy, Slots, Window, NO_FAILURE_THRESHOLD,
};
use std::hint::black_box;
use std::sync::Arc;

fn admit_record(slots: &Slots, limits: &Limits, outcome: Outcome) {
    let m = slots.machine(limits);
    if let Admission::Admitted { ticket, .. } = m.admit(|| 0) {
        black_box(m.record(ticket, outcome, || 0));
    }
}

fn uncontended(c: &mut Criterion) {
    let limits = Limits::default();
    let slots = Slots::new();
    c.bench_function("closed admit+success", |b| {
        b.iter(|| admit_record(&slots, &limits, Outcome::Success))
    });
    let always_failing = Limits {
        failure_threshold: u64::from(u32::MAX),
        ..Limits::default()
    };
    c.bench_function("closed admit+failure (CAS)", |b| {
        b.iter(|| admit_record(&slots, &always_failing, Outcome::Failure))
    });
    let open = Slots::new();
    let trip = Limits {
        failure_threshold: 1,
        ..Limits::default()
    };
    admit_record(&open, &trip, Outcome::Failure);
    c.bench_function("open rejection", |b| {
        b.iter(|| black_box(open.machine(&trip).admit(|| 1)))
    });
}

fn contended(c: &mut Criterion) {
    let limits = Limits::default();
    let slots = Arc::new(Slots::new());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let background = {
        let (slots, stop) = (slots.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                admit_record(&slots, &limits, Outcome::Success);
            }
        })
    };
    c.bench_function("closed admit+success, 2 threads on one breaker", |b| {
        b.iter(|| admit_record(&slots, &limits, Outcome::Success))
    });
    let alternating = Limits {
        failure_threshold: u64::from(u32::MAX),
        ..Limits::default()
    };
    c.bench_function("admit+failure/success CAS, 2 threads on one breaker", |b| {
        let mut flip = false;
        b.iter(|| {
            flip = !flip;
            admit_record(
                &slots,
                &alternating,
                if flip {
                    Outcome::Failure
                } else {
                    Outcome::Success
                },
            )
        })
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    background.join().unwrap();
}

/// The healthy path with its success counted, as every guarded call does: compare with
/// "closed admit+success" above, by one thread (inline counter) and by two threads on one breaker
/// (per-thread counter stripes).
fn counted(c: &mut Criterion) {
    let limits = Limits::default();
    let slots = Slots::new();
    let counters = Counters::new();
    c.bench_function("closed admit+success+count", |b| {
        b.iter(|| {
            admit_record(&slots, &limits, Outcome::Success);
            counters.add(Counter::Successes);
        })
    });
    let shared = Arc::new((Slots::new(), Counters::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let background = {
        let (shared, stop) = (shared.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                admit_record(&shared.0, &limits, Outcome::Success);
                shared.1.add(Counter::Successes);
            }
        })
    };
    c.bench_function(
        "closed admit+success+count, 2 threads on one breaker",
        |b| {
            b.iter(|| {
                admit_record(&shared.0, &limits, Outcome::Success);
                shared.1.add(Counter::Successes);
            })
        },
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    background.join().unwrap();
}

/// A breaker with a failure-rate rule: the closed fast path of its success (admission without a
/// write, then one CAS of the bucket word and one load, as `src/py/core.rs` does it), a success
/// through the machine, and a failure (counted, then the window judged), against the same clock
/// value moving a microsecond per call (a bucket of 1 s rolls every million calls).
fn rate_rule(c: &mut Criterion) {
    let policy = RatePolicy {
        window_us: 10_000_000,
        min_calls: 10,
        failure_rate: Some(0.5),
        slow_call_rate: None,
    };
    let limits = Limits {
        failure_threshold: NO_FAILURE_THRESHOLD,
        rate: Some(policy),
        ..Limits::default()
    };
    let slots = Slots::new();
    let window = Window::new(policy.bucket_us());
    let flag = PredicateFlag::new(0, false);
    let now = std::cell::Cell::new(0u64);
    let tick = || {
        now.set(now.get() + 1);
        now.get()
    };
    c.bench_function("rate rule: closed fast success (window CAS)", |b| {
        b.iter(|| {
            let fast = slots.admit_fast(&flag).expect("closed");
            if slots.record_fast_success(fast) {
                let generation = fast.ticket().generation();
                let current = || slots.machine_word().generation() == generation;
                black_box(window.record_success(generation, tick(), current));
            }
        })
    });
    let m = slots.machine(&limits).with_window(&window);
    c.bench_function("rate rule: closed admit+success through the machine", |b| {
        b.iter(|| {
            if let Admission::Admitted { ticket, .. } = m.admit(|| 0) {
                let t = tick();
                black_box(m.record_call(ticket, Outcome::Success, false, || t / 1000, || t));
            }
        })
    });
    // One failure in four calls: under the rate, so every call judges the window.
    let mut n = 0u32;
    c.bench_function(
        "rate rule: 1 failure in 4 (window judged every call)",
        |b| {
            b.iter(|| {
                n = n.wrapping_add(1);
                let outcome = if n.is_multiple_of(4) {
                    Outcome::Failure
                } else {
                    Outcome::Success
                };
                if let Admission::Admitted { ticket, .. } = m.admit(|| 0) {
                    let t = tick();
                    black_box(m.record_call(ticket, outcome, false, || t / 1000, || t));
                }
            })
        },
    );
}

criterion_group!(benches, uncontended, contended, counted, rate_rule);
criterion_main!(benches);
