//! Loom models of the shared table's slot protocol (`src/table.rs`): claiming a slot to create a
//! name, probing past collisions, deleting and re-creating, and recovering a creation whose process
//! is presumed dead; and of the options protocol (`src/options.rs`): a reader gets one writer's
//! whole set of options or knows it did not, and never waits for a writer. The slots are heap arrays of the same `Slot` type a mapping holds (loom's
//! atomics under `--cfg loom`, the engine's words included).
//!
//! Run with `make loom`, i.e.
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release -p panelboard-shm --test loom
//!
//! Without `--cfg loom` this file compiles to an empty test binary.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use panelboard_engine::Limits;
use panelboard_shm::layout::{Claim, IndexHash, Slot, StoredName};
use panelboard_shm::options::{OptionsPatch, TableOptions};
use panelboard_shm::table::{self, Host, Lookup};
use std::sync::atomic::Ordering::SeqCst;

fn model(preemptions: Option<usize>, f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = preemptions;
    }
    b.check(f);
}

/// A process as the protocol sees it: its pid, a clock that never moves, and whether it takes
/// every other process for dead (and recovers their creations at once).
struct ModelHost {
    pid: u32,
    others_dead: bool,
}

impl Host for ModelHost {
    fn pid(&self) -> u32 {
        self.pid
    }
    fn now_ms(&self) -> u64 {
        0
    }
    fn is_alive(&self, pid: u32) -> bool {
        !self.others_dead || pid == self.pid
    }
    fn pause(&self, _round: u32) {
        thread::yield_now();
    }
    fn patience(&self) -> u32 {
        if self.others_dead {
            0
        } else {
            u32::MAX
        }
    }
}

const ALIVE: fn(u32) -> ModelHost = |pid| ModelHost {
    pid,
    others_dead: false,
};

fn table(n: usize) -> Arc<Vec<Slot>> {
    Arc::new((0..n).map(|_| Slot::zeroed()).collect())
}

fn create(slots: &[Slot], key: &str, host: &ModelHost) -> Option<(usize, u64, bool)> {
    let home = IndexHash::Colliding.home(key.as_bytes(), slots.len());
    table::find_or_create(slots, home, &StoredName::of(key.as_bytes()), host, |slot| {
        slot.reset_contents(&TableOptions::default(), None)
    })
}

fn find(slots: &[Slot], key: &str) -> Lookup {
    table::lookup(slots, 0, &StoredName::of(key.as_bytes()), &ALIVE(99))
}

/// Slots holding `key` live or deleted-with-valid-name: never more than one.
fn holders(slots: &[Slot], key: &str) -> usize {
    let name = StoredName::of(key.as_bytes());
    slots
        .iter()
        .filter(|slot| {
            matches!(
                Claim::decode(slot.claim.load(SeqCst)),
                Claim::Live { .. }
                    | Claim::Deleted {
                        name_valid: true,
                        ..
                    }
            ) && slot.holds(&name)
        })
        .count()
}

/// Two processes creating one name race for one slot: both end with the same slot and claim,
/// exactly one of them created it.
#[test]
fn one_name_created_by_two_processes_is_one_slot() {
    model(Some(3), || {
        let slots = table(2);
        let other = slots.clone();
        let t = thread::spawn(move || create(&other, "a", &ALIVE(2)));
        let mine = create(&slots, "a", &ALIVE(1));
        let theirs = t.join().unwrap();
        let (mine, theirs) = (mine.unwrap(), theirs.unwrap());
        assert_eq!((mine.0, mine.1), (theirs.0, theirs.1));
        assert!(mine.2 ^ theirs.2, "exactly one creation");
        assert_eq!(holders(&slots, "a"), 1);
        assert_eq!(
            find(&slots, "a"),
            Lookup::Found {
                index: mine.0,
                claim: mine.1
            }
        );
    });
}

/// Two names with the same home slot: both are created, in different slots, and both are found.
#[test]
fn colliding_names_probe_to_different_slots() {
    model(Some(3), || {
        let slots = table(2);
        let other = slots.clone();
        let t = thread::spawn(move || create(&other, "b", &ALIVE(2)));
        let a = create(&slots, "a", &ALIVE(1)).unwrap();
        let b = t.join().unwrap().unwrap();
        assert_ne!(a.0, b.0);
        assert!(a.2 && b.2);
        assert!(matches!(find(&slots, "a"), Lookup::Found { .. }));
        assert!(matches!(find(&slots, "b"), Lookup::Found { .. }));
    });
}

/// A deletion racing a re-creation of the same name: the name never has two slots, and a name
/// that ends up live is in its original slot with a new or the old incarnation.
#[test]
fn delete_racing_create_never_duplicates() {
    model(Some(3), || {
        let slots = table(2);
        let (index, first_claim, _) = create(&slots, "a", &ALIVE(1)).unwrap();
        let other = slots.clone();
        let t = thread::spawn(move || table::delete(&other, 0, &StoredName::of(b"a"), &ALIVE(2)));
        let again = create(&slots, "a", &ALIVE(1)).unwrap();
        let deleted = t.join().unwrap();
        assert!(
            deleted,
            "the name was live when the deletion began or was re-created"
        );
        assert_eq!(again.0, index, "a name only ever lives in one slot");
        assert_eq!(holders(&slots, "a"), 1);
        match find(&slots, "a") {
            Lookup::Found { index: i, claim } => {
                assert_eq!(i, index);
                assert_ne!(claim, first_claim, "re-created after the deletion");
            }
            Lookup::Absent { insert } => assert_eq!(insert.map(|p| p.0), Some(index)),
        }
    });
}

/// A lookup that takes the creator for dead recovers its half-made slot; the creator, alive after
/// all, finds its final CAS failing and creates the name again in another slot. In the end the
/// name is live in exactly one slot, the one the creator returned, and the recovered slot is dead.
#[test]
fn a_creator_presumed_dead_starts_again() {
    model(Some(3), || {
        let slots = table(3);
        let other = slots.clone();
        let t = thread::spawn(move || {
            let host = ModelHost {
                pid: 2,
                others_dead: true,
            };
            table::lookup(&other, 0, &StoredName::of(b"a"), &host)
        });
        let created = create(&slots, "a", &ALIVE(1));
        let _ = t.join().unwrap();
        let Some((index, claim, created)) = created else {
            // The lookup recovered every slot the creator claimed, one after the other, until
            // none was left: full, and every slot dead (a slot lost per recovery, nothing worse).
            assert_eq!(holders(&slots, "a"), 0);
            return;
        };
        assert!(created);
        assert_eq!(find(&slots, "a"), Lookup::Found { index, claim });
        assert_eq!(holders(&slots, "a"), 1);
        for (i, slot) in slots.iter().enumerate().take(index) {
            // (Its incarnation word is whatever the creator, still running, wrote last: a dead
            // slot's contents are never read.)
            assert!(
                matches!(
                    Claim::decode(slot.claim.load(SeqCst)),
                    Claim::Deleted {
                        name_valid: false,
                        ..
                    }
                ),
                "slot {i} before the name's was recovered"
            );
        }
    });
}

/// A slot claimed by a process that died mid-creation is recovered by whoever meets it, once,
/// even when two processes meet it at the same time; both then agree on the name's new slot.
#[test]
fn a_dead_creators_slot_is_recovered_once() {
    model(Some(3), || {
        let slots = table(3);
        slots[0]
            .claim
            .store(Claim::Creating { pid: 666, ms: 0 }.encode(), SeqCst);
        let dead_to = |pid| ModelHost {
            pid,
            others_dead: true,
        };
        let other = slots.clone();
        let t = thread::spawn(move || create(&other, "a", &dead_to(2)));
        let mine = create(&slots, "a", &dead_to(1));
        let theirs = t.join().unwrap();
        // Each may also have taken the other's creation for a dead one; whatever happened, the name
        // has at most one slot, and whoever got one agrees with a fresh lookup.
        assert!(holders(&slots, "a") <= 1);
        if let (Some(mine), Some(theirs)) = (mine, theirs) {
            assert_eq!((mine.0, mine.1), (theirs.0, theirs.1));
        }
        for result in [mine, theirs].into_iter().flatten() {
            let (index, claim, _) = result;
            if holders(&slots, "a") == 1 {
                assert_eq!(find(&slots, "a"), Lookup::Found { index, claim });
            }
        }
        assert!(matches!(
            Claim::decode(slots[0].claim.load(SeqCst)),
            Claim::Deleted {
                name_valid: false,
                ..
            }
        ));
    });
}

/// Two threads of one process observe a breaker that a third (another process) moves through two
/// transitions: each generation they report is reported once, never an older one after a newer,
/// and once both have looked at the final word it is the one heard.
#[test]
fn each_generation_is_heard_once() {
    use panelboard_engine::{Mode, Slots};
    use panelboard_shm::heard::Heard;
    model(Some(3), || {
        let slots = Arc::new(Slots::new());
        let heard = Arc::new(Heard::new(slots.machine_word()));
        let mover = {
            let slots = slots.clone();
            thread::spawn(move || {
                let limits = Limits::default();
                slots.machine(&limits).set_mode(Mode::ForcedOpen);
                slots.machine(&limits).set_mode(Mode::Disabled);
            })
        };
        let observer = {
            let (slots, heard) = (slots.clone(), heard.clone());
            thread::spawn(move || {
                let word = slots.machine_word();
                heard.hear(word).map(|change| (word.generation(), change))
            })
        };
        let word = slots.machine_word();
        let mine = heard.hear(word).map(|change| (word.generation(), change));
        let theirs = observer.join().unwrap();
        mover.join().unwrap();
        if let (Some(a), Some(b)) = (mine, theirs) {
            assert_ne!(a.0, b.0, "one generation reported twice");
            // Reported in order: the later report starts from the mode the earlier one ended in.
            let (first, second) = if a.1 .1 == b.1 .0 { (a, b) } else { (b, a) };
            assert_eq!(first.1 .1, second.1 .0);
        }
        let last = slots.machine_word();
        let _ = heard.hear(last);
        assert!(!heard.is_news(last.generation()));
        assert!(heard.hear(last).is_none());
    });
}

/// Options set A, and set B that differs from it in two words `configure` changes together.
fn options_a() -> TableOptions {
    TableOptions {
        failure_rate: Some(0.5),
        min_calls: 10,
        ..TableOptions::default()
    }
}

fn options_b() -> TableOptions {
    TableOptions {
        failure_rate: Some(0.25),
        min_calls: 40,
        ..TableOptions::default()
    }
}

fn pair(o: &TableOptions) -> (Option<f64>, u64) {
    (o.failure_rate, o.min_calls)
}

/// `configure(failure_rate=0.25, min_calls=40)` in one process while another reads the options:
/// a read that says it is whole is A's set or B's, never a mix; any read is in range.
#[test]
fn options_are_read_whole_or_known_torn() {
    model(Some(3), || {
        let slot = Arc::new(Slot::zeroed());
        slot.store_options(&OptionsPatch::from(&options_a()));
        let writer = {
            let slot = slot.clone();
            thread::spawn(move || {
                slot.store_options(&OptionsPatch {
                    failure_rate: Some(Some(0.25)),
                    min_calls: Some(40),
                    ..OptionsPatch::default()
                })
            })
        };
        let read = slot.read_options();
        if read.whole {
            let got = pair(&read.options);
            assert!(
                got == pair(&options_a()) || got == pair(&options_b()),
                "torn: {got:?}"
            );
        }
        writer.join().unwrap();
        let after = slot.read_options();
        assert!(after.whole);
        assert_eq!(after.options, options_b());
    });
}

/// Two processes configure at once (each its own two words) while a third reads: a whole read is
/// a state some order of the writers leaves; once both are done every word of both has landed.
#[test]
fn concurrent_configures_both_land_and_whole_reads_are_never_torn() {
    model(Some(2), || {
        let slot = Arc::new(Slot::zeroed());
        slot.store_options(&OptionsPatch::from(&options_a()));
        let first = {
            let slot = slot.clone();
            thread::spawn(move || {
                slot.store_options(&OptionsPatch {
                    failure_rate: Some(Some(0.25)),
                    min_calls: Some(40),
                    ..OptionsPatch::default()
                })
            })
        };
        let second = {
            let slot = slot.clone();
            thread::spawn(move || {
                slot.store_options(&OptionsPatch {
                    half_open_max_calls: Some(3),
                    success_threshold: Some(3),
                    ..OptionsPatch::default()
                })
            })
        };
        let read = slot.read_options();
        if read.whole {
            let o = read.options;
            assert!(pair(&o) == pair(&options_a()) || pair(&o) == pair(&options_b()));
            assert!(matches!(
                (o.half_open_max_calls, o.success_threshold),
                (1, 1) | (3, 3)
            ));
        }
        first.join().unwrap();
        second.join().unwrap();
        let after = slot.read_options();
        assert!(after.whole, "every writer finished: nothing is in flight");
        assert_eq!(pair(&after.options), pair(&options_b()));
        assert_eq!(
            (
                after.options.half_open_max_calls,
                after.options.success_threshold
            ),
            (3, 3)
        );
    });
}

/// `configure` in a process whose breaker another process deletes and creates again meanwhile
/// (suspicion 1 of the hostile review): the configure was of the deleted incarnation, so the new
/// one keeps its creator's options, whole. (A slot is only ever re-created for the same name, so
/// this is the only slot a late configure could reach.)
#[test]
fn a_configure_of_a_deleted_incarnation_never_lands_in_the_next() {
    model(Some(3), || {
        let slots = table(1);
        let (index, claim, _) = create(&slots, "a", &ALIVE(1)).unwrap();
        let writer = {
            let slots = slots.clone();
            thread::spawn(move || {
                let slot = &slots[index];
                // What `reconfigure` does: store while the slot holds the breaker configured
                // (before the fix it checked the claim, then stored whatever happened meanwhile).
                let patch = OptionsPatch {
                    failure_rate: Some(Some(0.25)),
                    min_calls: Some(40),
                    ..OptionsPatch::default()
                };
                slot.store_options_of(claim, &patch, || ())
            })
        };
        assert!(table::delete(&slots, 0, &StoredName::of(b"a"), &ALIVE(2)));
        let again = table::find_or_create(&slots, 0, &StoredName::of(b"a"), &ALIVE(2), |slot| {
            slot.reset_contents(&options_a(), None)
        })
        .unwrap();
        let stored = writer.join().unwrap();
        assert_eq!(again.0, index);
        let read = slots[index].read_options();
        assert!(read.whole);
        assert_eq!(read.options, options_a(), "the creator's options, whole");
        if stored {
            // It stored into the incarnation it configured, before the creation replaced them.
            assert_eq!(Claim::decode(again.1), Claim::Live { incarnation: 2 });
        }
    });
}

/// A writer killed between its two updates (counted in, one of its two words stored) long ago,
/// then a `configure` in one process while another reads (bug 38): whole reads are never torn by
/// the live writer, the stale count is forgotten (by the reader or by the writer, whoever comes
/// first), and afterwards reads are whole again, the live writer's set in full.
#[test]
fn a_killed_writer_is_forgotten_and_whole_reads_are_never_torn() {
    const LATER: u64 = panelboard_shm::options::STALE_WRITER_MS + 10;
    model(Some(2), || {
        let slot = Arc::new(Slot::zeroed());
        slot.store_options(&OptionsPatch::from(&options_a()));
        // The killed writer, at time 0: counted in, stored min_calls=20, died.
        let _ = slot.begin_options_write(|| 0);
        slot.min_calls.store(20, SeqCst);
        let writer = {
            let slot = slot.clone();
            thread::spawn(move || {
                let claim = slot.claim.load(SeqCst);
                let patch = OptionsPatch {
                    failure_rate: Some(Some(0.25)),
                    min_calls: Some(40),
                    ..OptionsPatch::default()
                };
                assert!(slot.store_options_of_at(claim, &patch, || (), LATER));
            })
        };
        let read = slot.read_options_at(|| LATER);
        if read.whole {
            // Before the live writer (the dead one's half-done store is what the table holds),
            // or after it.
            let got = pair(&read.options);
            assert!(
                got == (Some(0.5), 20) || got == (Some(0.25), 40),
                "torn: {got:?}"
            );
        }
        writer.join().unwrap();
        let after = slot.read_options_at(|| LATER);
        assert!(
            after.whole,
            "the dead writer is forgotten: nothing is in flight"
        );
        assert_eq!(after.options, options_b());
    });
}
