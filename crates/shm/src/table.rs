//! The slot protocol: finding, creating and deleting a name in a table of slots, lock-free.
//!
//! It works on any `&[Slot]` (a mapping's, or a heap array in the tests and loom models), and reads
//! the process's identity and clock through [`Host`], so that the models can play dead processes.
//!
//! - A lookup probes linearly from the name's home slot and stops at an empty slot (absent), a live
//!   slot holding the name (found) or a deleted slot holding the name (absent: re-create it there).
//!   A slot being created is waited for; a creation that is stale (its process is dead, or it is
//!   older than [`STALE_CREATION_MS`]) is recovered into a dead slot (deleted, name invalid) that no
//!   lookup matches and nobody reuses.
//! - A creation claims by one CAS the first empty slot of the chain or the deleted slot of the same
//!   name; both are unique (slots never become empty again, and a name is only ever created in one
//!   of them), so two processes creating one name race for one slot and no duplicate can exist. It
//!   publishes the slot live (one CAS, release) after writing the name and fresh contents; if its
//!   claim was recovered meanwhile (it was presumed dead) the CAS fails and it starts again.
//!   Before writing the options it waits for a `configure` of a deleted incarnation still
//!   storing them (bounded: `Slot::wait_for_option_writers`).
//! - A deletion is one CAS from live to deleted, keeping the name.
//!
//! Model-checked in `tests/loom.rs`.

use crate::layout::{claim_age_ms, Claim, Slot, StoredName};
use crate::sync::{fence, Ordering};

/// A creation older than this is recovered even if its process seems alive (its pid may have been
/// reused, or it may live in another pid namespace); one younger is recovered only if its process
/// is dead. Recovering a creation that was in fact alive costs a slot, nothing else.
pub const STALE_CREATION_MS: u64 = 30_000;

/// What the protocol needs to know about the process running it.
pub trait Host {
    fn pid(&self) -> u32;
    /// Host-wide monotonic milliseconds.
    fn now_ms(&self) -> u64;
    /// `false` only when `pid` certainly does not exist.
    fn is_alive(&self, pid: u32) -> bool;
    /// Waits a little while another process finishes a creation (`round` counts from 0).
    fn pause(&self, round: u32);
    /// Rounds of waiting before a creation is examined for staleness.
    fn patience(&self) -> u32;
}

/// Where a name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Live in slot `index`, with this claim word (the handle's proof that the slot is still it).
    Found { index: usize, claim: u64 },
    /// Not there; `insert` is where it would be created (and the claim found there), `None` when
    /// the table is full.
    Absent { insert: Option<(usize, u64)> },
}

/// Waits while the slot is being created; recovers a stale creation. Returns the slot's claim
/// once it is not (the same) creation any more.
fn settle(slot: &Slot, seen: u64, host: &impl Host) -> u64 {
    let mut round = 0u32;
    loop {
        let current = slot.claim.load(Ordering::Acquire);
        if current != seen {
            return current;
        }
        let Claim::Creating { pid, ms } = Claim::decode(current) else {
            return current;
        };
        if round >= host.patience()
            && (!host.is_alive(pid) || claim_age_ms(host.now_ms(), ms) > STALE_CREATION_MS)
        {
            let dead = Claim::Deleted {
                name_valid: false,
                incarnation: slot.incarnation.load(Ordering::Relaxed),
            }
            .encode();
            return match slot.claim.compare_exchange(
                current,
                dead,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => dead,
                Err(actual) => actual,
            };
        }
        host.pause(round);
        round = round.saturating_add(1);
    }
}

/// Finds `name`, starting at slot `home`.
pub fn lookup(slots: &[Slot], home: usize, name: &StoredName, host: &impl Host) -> Lookup {
    let capacity = slots.len();
    if capacity == 0 {
        return Lookup::Absent { insert: None };
    }
    let mut index = home % capacity;
    for _ in 0..capacity {
        let slot = &slots[index];
        let mut claim = slot.claim.load(Ordering::Acquire);
        loop {
            match Claim::decode(claim) {
                Claim::Creating { .. } => claim = settle(slot, claim, host),
                Claim::Empty => {
                    return Lookup::Absent {
                        insert: Some((index, claim)),
                    }
                }
                Claim::Live { .. } if slot.holds(name) => return Lookup::Found { index, claim },
                Claim::Deleted {
                    name_valid: true, ..
                } if slot.holds(name) => {
                    return Lookup::Absent {
                        insert: Some((index, claim)),
                    }
                }
                Claim::Live { .. } | Claim::Deleted { .. } => break,
            }
        }
        index = (index + 1) % capacity;
    }
    Lookup::Absent { insert: None }
}

/// The slot of `name`, created (with `init` writing its contents) if absent: `(index, claim,
/// created)`, or `None` when the table is full.
pub fn find_or_create(
    slots: &[Slot],
    home: usize,
    name: &StoredName,
    host: &impl Host,
    init: impl Fn(&Slot),
) -> Option<(usize, u64, bool)> {
    loop {
        let (index, expected) = match lookup(slots, home, name, host) {
            Lookup::Found { index, claim } => return Some((index, claim, false)),
            Lookup::Absent { insert: None } => return None,
            Lookup::Absent {
                insert: Some(place),
            } => place,
        };
        let slot = &slots[index];
        let mine = Claim::Creating {
            pid: host.pid(),
            ms: host.now_ms(),
        }
        .encode();
        if slot
            .claim
            .compare_exchange(expected, mine, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            continue; // someone else took it: look again
        }
        // A process may still be configuring the deleted incarnation (it checked the claim before
        // the deletion): its stores must be done before the new incarnation's options are written
        // (bug 37; the fence pairs with the writer's, `Slot::store_options_of`).
        fence(Ordering::SeqCst);
        slot.wait_for_option_writers(|| host.now_ms(), |round| host.pause(round));
        if expected == Claim::Empty.encode() {
            // A deleted slot of this name already holds it.
            slot.write_name(name);
        }
        init(slot);
        let incarnation =
            slot.incarnation.load(Ordering::Relaxed).wrapping_add(1) & ((1 << 40) - 1);
        slot.incarnation.store(incarnation, Ordering::Relaxed);
        let live = Claim::Live { incarnation }.encode();
        if slot
            .claim
            .compare_exchange(mine, live, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return Some((index, live, true));
        }
        // Presumed dead and recovered while creating: the slot is lost; start again.
    }
}

/// Deletes `name`; `false` if it was not live.
pub fn delete(slots: &[Slot], home: usize, name: &StoredName, host: &impl Host) -> bool {
    loop {
        let Lookup::Found { index, claim } = lookup(slots, home, name, host) else {
            return false;
        };
        let Claim::Live { incarnation } = Claim::decode(claim) else {
            return false;
        };
        let deleted = Claim::Deleted {
            name_valid: true,
            incarnation,
        }
        .encode();
        if slots[index]
            .claim
            .compare_exchange(claim, deleted, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return true;
        }
    }
}

/// The live slots: `(index, claim)`.
pub fn live(slots: &[Slot]) -> Vec<(usize, u64)> {
    slots
        .iter()
        .enumerate()
        .filter_map(|(index, slot)| {
            let claim = slot.claim.load(Ordering::Acquire);
            matches!(Claim::decode(claim), Claim::Live { .. }).then_some((index, claim))
        })
        .collect()
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::layout::{IndexHash, ReadName};
    use crate::options::TableOptions;
    use std::cell::Cell;

    struct FakeHost {
        pid: u32,
        now: Cell<u64>,
        dead: Vec<u32>,
    }

    impl Host for FakeHost {
        fn pid(&self) -> u32 {
            self.pid
        }
        fn now_ms(&self) -> u64 {
            self.now.get()
        }
        fn is_alive(&self, pid: u32) -> bool {
            !self.dead.contains(&pid)
        }
        fn pause(&self, _round: u32) {
            self.now.set(self.now.get() + 1000); // time passes while waiting
        }
        fn patience(&self) -> u32 {
            3
        }
    }

    fn host(pid: u32) -> FakeHost {
        FakeHost {
            pid,
            now: Cell::new(1),
            dead: vec![666],
        }
    }

    fn table(n: usize) -> Vec<Slot> {
        (0..n).map(|_| Slot::zeroed()).collect()
    }

    fn init(slot: &Slot) {
        slot.reset_contents(&TableOptions::default(), None);
    }

    fn create(slots: &[Slot], hash: IndexHash, key: &str) -> Option<(usize, u64, bool)> {
        let home = hash.home(key.as_bytes(), slots.len());
        find_or_create(slots, home, &StoredName::of(key.as_bytes()), &host(1), init)
    }

    fn find(slots: &[Slot], hash: IndexHash, key: &str) -> Lookup {
        let home = hash.home(key.as_bytes(), slots.len());
        lookup(slots, home, &StoredName::of(key.as_bytes()), &host(1))
    }

    #[test]
    fn create_find_delete_recreate() {
        let slots = table(8);
        let h = IndexHash::Fnv1a;
        let (index, claim, created) = create(&slots, h, "a").unwrap();
        assert!(created);
        assert_eq!(find(&slots, h, "a"), Lookup::Found { index, claim });
        assert_eq!(create(&slots, h, "a"), Some((index, claim, false)));
        assert!(delete(
            &slots,
            h.home(b"a", 8),
            &StoredName::of(b"a"),
            &host(1)
        ));
        assert!(
            matches!(find(&slots, h, "a"), Lookup::Absent { insert: Some((i, _)) } if i == index)
        );
        let (again, claim2, created) = create(&slots, h, "a").unwrap();
        assert!(created);
        assert_eq!(again, index, "a deleted name comes back in its slot");
        assert_ne!(claim2, claim, "with a new incarnation");
        assert!(!delete(&slots, 0, &StoredName::of(b"never"), &host(1)));
    }

    #[test]
    fn forced_collisions_probe_to_distinct_slots_and_fill_up() {
        let slots = table(4);
        let h = IndexHash::Colliding;
        let names = ["w", "x", "y", "z"];
        let mut indexes: Vec<usize> = names
            .iter()
            .map(|n| create(&slots, h, n).unwrap().0)
            .collect();
        indexes.sort();
        assert_eq!(indexes, vec![0, 1, 2, 3]);
        for n in names {
            assert!(matches!(find(&slots, h, n), Lookup::Found { .. }));
        }
        assert_eq!(create(&slots, h, "overflow"), None, "full");
        // Deleting one frees that name's slot only for that name.
        assert!(delete(&slots, 0, &StoredName::of(b"x"), &host(1)));
        assert_eq!(create(&slots, h, "overflow"), None);
        assert!(
            matches!(find(&slots, h, "y"), Lookup::Found { .. }),
            "probing passes deleted slots"
        );
        assert!(create(&slots, h, "x").unwrap().2);
    }

    #[test]
    fn long_names_collide_only_on_equal_digests() {
        let slots = table(4);
        let h = IndexHash::Colliding;
        let a = "n".repeat(500);
        let b = format!("{}m", "n".repeat(499));
        let (ia, _, _) = create(&slots, h, &a).unwrap();
        let (ib, _, _) = create(&slots, h, &b).unwrap();
        assert_ne!(ia, ib);
        assert!(matches!(
            slots[ia].read_name(),
            ReadName::Prefix { len: 500, .. }
        ));
        // The heap offset is not part of the name's identity (the table writes it after claiming).
        slots[ia].set_heap_offset(64);
        assert!(matches!(find(&slots, h, &a), Lookup::Found { index, .. } if index == ia));
    }

    #[test]
    fn a_dead_creators_half_created_slot_is_recovered() {
        let slots = table(4);
        // pid 666 (dead) claimed slot 0 and died before publishing it.
        slots[0].claim.store(
            Claim::Creating { pid: 666, ms: 1 }.encode(),
            Ordering::Relaxed,
        );
        let (index, _, created) = create(&slots, IndexHash::Colliding, "a").unwrap();
        assert!(created);
        assert_eq!(index, 1, "slot 0 is dead now, never reused");
        assert_eq!(
            Claim::decode(slots[0].claim.load(Ordering::Relaxed)),
            Claim::Deleted {
                name_valid: false,
                incarnation: 0
            }
        );
        assert!(matches!(
            find(&slots, IndexHash::Colliding, "a"),
            Lookup::Found { index: 1, .. }
        ));
    }

    #[test]
    fn a_live_creators_slot_is_recovered_only_when_stale() {
        let slots = table(2);
        // pid 7 is alive and started creating at time 1: the lookup waits (time passes in pause)
        // until the claim is older than STALE_CREATION_MS, then recovers it.
        slots[0].claim.store(
            Claim::Creating { pid: 7, ms: 1 }.encode(),
            Ordering::Relaxed,
        );
        let h = host(1);
        let result = lookup(&slots, 0, &StoredName::of(b"a"), &h);
        assert!(h.now.get() > STALE_CREATION_MS);
        assert_eq!(
            result,
            Lookup::Absent {
                insert: Some((1, 0))
            }
        );
    }

    #[test]
    fn threads_creating_the_same_names_agree() {
        use std::sync::Arc;
        struct Real;
        impl Host for Real {
            fn pid(&self) -> u32 {
                1
            }
            fn now_ms(&self) -> u64 {
                0
            }
            fn is_alive(&self, _: u32) -> bool {
                true
            }
            fn pause(&self, _: u32) {
                std::thread::yield_now()
            }
            fn patience(&self) -> u32 {
                u32::MAX
            }
        }
        for _ in 0..20 {
            let slots: Arc<Vec<Slot>> = Arc::new(table(16));
            let results: Vec<Vec<(usize, u64)>> = (0..8)
                .map(|_| {
                    let slots = slots.clone();
                    std::thread::spawn(move || {
                        (0..12)
                            .map(|n| {
                                let key = format!("name{n}");
                                let home = IndexHash::Colliding.home(key.as_bytes(), 16);
                                let (i, c, _) = find_or_create(
                                    &slots,
                                    home,
                                    &StoredName::of(key.as_bytes()),
                                    &Real,
                                    init,
                                )
                                .unwrap();
                                (i, c)
                            })
                            .collect()
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect();
            assert!(
                results.windows(2).all(|w| w[0] == w[1]),
                "every thread found the same slots"
            );
            assert_eq!(live(&slots).len(), 12);
        }
    }
}
