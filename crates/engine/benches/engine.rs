//! Criterion benches of the plain-Rust state machine: admit + record, uncontended and contended,
//! and what counting each outcome for `metrics()` adds to it.
use criterion::{criterion_group, criterion_main, Criterion};
use panelboard_engine::metrics::{Counter, Counters};
use panelboard_engine::{Admission, Limits, Outcome, Slots};
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

criterion_group!(benches, uncontended, contended, counted);
criterion_main!(benches);
