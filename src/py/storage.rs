//! Where a breaker's words live: on this process's heap (a local breaker), or in a slot of a
//! shared-memory table (a shared breaker, issue 12; docs/shared-memory.md).
//!
//! The engine runs unchanged over either: `slots()` hands it the `Slots` (state word and probe
//! stamp) of the heap or of the mapped slot. A shared breaker keeps its table (and so the mapping)
//! alive through an `Arc` for as long as any handle on it lives.
//!
//! A shared breaker checks, at each access, that its slot still holds the incarnation it was
//! attached to (one load of the slot's claim word, in the same cache line as the state word). Once
//! the name is deleted (by any process), the breaker carries on with words of its own in this
//! process, like a local handle on a deleted breaker.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use super::ffi::thread;
use crate::engine::{Limits, Mode, Slots, Word};
use crate::metrics::{Counter, Counters, Totals};
use crate::shm::heard::Heard;
use crate::shm::layout::{Count, Slot};
use crate::shm::{SharedSlot, Table};

/// A breaker's words on the heap.
pub struct LocalWords {
    pub slots: Slots,
    pub counters: Counters,
    pub times_opened: AtomicU64,
}

impl LocalWords {
    /// Counts one call, under the number the closed fast path counts its successes under.
    /// Out of line: inlined into the fast path (whose shared branch counts through `Storage`),
    /// it cost the local success 3 instructions (3.11).
    #[inline(never)]
    fn count(&self, counter: Counter) {
        match thread::key_if_attached() {
            Some(me) => self.counters.add_as(counter, me),
            None => self.counters.add(counter),
        }
    }

    pub fn new() -> LocalWords {
        LocalWords {
            slots: Slots::new(),
            counters: Counters::new(),
            times_opened: AtomicU64::new(0),
        }
    }
}

/// A breaker's slot in a shared table.
pub struct SharedWords {
    /// The slot (and the table whose mapping holds it, kept alive).
    slot: SharedSlot,
    index: usize,
    /// The slot's claim word when this breaker attached to it (live, with its incarnation).
    claim: u64,
    /// What this process's listeners last heard.
    heard: Heard,
    /// This process's own words once the slot is deleted (boxed: only a deleted shared breaker
    /// needs them, and inline they would make every breaker's `Storage`, local ones included, as
    /// large as this struct).
    orphan: OnceLock<Box<LocalWords>>,
}

impl SharedWords {
    /// Attaches to slot `index` (live with `claim`); this process has heard nothing before the
    /// state it finds.
    pub fn new(table: Arc<Table>, index: usize, claim: u64) -> Option<SharedWords> {
        let slot = SharedSlot::new(table, index)?;
        let heard = Heard::new(slot.slot().machine.machine_word());
        Some(SharedWords {
            slot,
            index,
            claim,
            heard,
            orphan: OnceLock::new(),
        })
    }

    pub fn table(&self) -> &Arc<Table> {
        self.slot.table()
    }

    /// The slot, while it still holds this breaker's incarnation.
    #[inline]
    pub fn live(&self) -> Option<&Slot> {
        let slot = self.slot.slot();
        (slot.claim.load(Ordering::Acquire) == self.claim).then_some(slot)
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn claim(&self) -> u64 {
        self.claim
    }

    fn orphan(&self) -> &LocalWords {
        self.orphan.get_or_init(|| Box::new(LocalWords::new()))
    }

    #[inline(never)]
    fn count(&self, counter: Counter) {
        match self.live() {
            Some(slot) => slot.add(self.table().lane(), count_of(counter)),
            None => self.orphan().counters.add(counter),
        }
    }

    /// Whether the word's generation differs from the last one this process reported.
    #[inline]
    pub fn unseen(&self, generation: u32) -> bool {
        self.heard.is_news(generation)
    }

    /// Marks `word` as heard; returns the change to report (see `Heard::hear`).
    pub fn hear(&self, word: Word) -> Option<(Mode, Mode)> {
        self.heard.hear(word)
    }
}

pub enum Storage {
    Local(LocalWords),
    Shared(SharedWords),
}

fn count_of(counter: Counter) -> Count {
    match counter {
        Counter::Successes => Count::Successes,
        Counter::Failures => Count::Failures,
        Counter::Ignored => Count::Ignored,
        Counter::Rejected => Count::Rejected,
    }
}

impl Storage {
    /// The state words the engine runs over.
    #[inline]
    pub fn slots(&self) -> &Slots {
        match self {
            Storage::Local(words) => &words.slots,
            Storage::Shared(shared) => match shared.live() {
                Some(slot) => &slot.machine,
                None => &shared.orphan().slots,
            },
        }
    }

    /// The numeric options: the table's for a live shared breaker (every process follows them,
    /// whatever it was configured with: docs/shared-memory.md, "Options"), else the
    /// configuration's.
    #[inline]
    pub fn limits<'a>(&self, configured: &'a Limits) -> Cow<'a, Limits> {
        match self {
            Storage::Shared(shared) => match shared.live() {
                Some(slot) => Cow::Owned(slot.limits()),
                None => Cow::Borrowed(configured),
            },
            Storage::Local(_) => Cow::Borrowed(configured),
        }
    }

    /// `slow_call_duration` in nanoseconds: the table's for a live shared breaker, else the
    /// configuration's.
    #[inline]
    pub fn slow_call_ns(&self, configured: Option<u64>) -> Option<u64> {
        match self {
            Storage::Shared(shared) => match shared.live() {
                Some(slot) => slot.slow_call_ns(),
                None => configured,
            },
            Storage::Local(_) => configured,
        }
    }

    /// The state words for the closed fast path, which neither times calls nor loads the
    /// configuration: `None` when the breaker's table times its calls (`slow_call_duration` is
    /// set there), so that they take the configured path. With them, the words of a local
    /// breaker (`None` for a shared one): the fast path then knows what kind of breaker it runs
    /// on from this one test, instead of asking `Storage` again at each step.
    #[inline]
    pub fn fast_slots(&self) -> Option<(&Slots, Option<&LocalWords>)> {
        match self {
            Storage::Local(words) => Some((&words.slots, Some(words))),
            Storage::Shared(shared) => match shared.live() {
                Some(slot) if slot.slow_call_ns().is_some() => None,
                Some(slot) => Some((&slot.machine, None)),
                None => Some((&shared.orphan().slots, None)),
            },
        }
    }

    /// Counts one call. Inlined for a local breaker (every guarded call counts one), which counts
    /// under the number the closed fast path counts its successes under (`ffi::thread`), so that
    /// one thread keeps the counters' inline block (bug 39).
    #[inline(always)]
    pub fn count(&self, counter: Counter) {
        match self {
            Storage::Local(words) => words.count(counter),
            Storage::Shared(shared) => shared.count(counter),
        }
    }

    pub fn count_opening(&self) {
        let times_opened = match self {
            Storage::Local(words) => &words.times_opened,
            Storage::Shared(shared) => match shared.live() {
                Some(slot) => &slot.times_opened,
                None => &shared.orphan().times_opened,
            },
        };
        times_opened.fetch_add(1, Ordering::Relaxed);
    }

    pub fn times_opened(&self) -> u64 {
        match self {
            Storage::Local(words) => words.times_opened.load(Ordering::Relaxed),
            Storage::Shared(shared) => match shared.live() {
                Some(slot) => slot.times_opened.load(Ordering::Relaxed),
                None => shared.orphan().times_opened.load(Ordering::Relaxed),
            },
        }
    }

    pub fn totals(&self) -> Totals {
        match self {
            Storage::Local(words) => words.counters.totals(),
            Storage::Shared(shared) => match shared.live() {
                Some(slot) => slot_totals(slot),
                None => shared.orphan().counters.totals(),
            },
        }
    }

    /// The shared words, if this breaker is (or was) in a table.
    #[inline]
    pub fn shared(&self) -> Option<&SharedWords> {
        match self {
            Storage::Shared(shared) => Some(shared),
            Storage::Local(_) => None,
        }
    }

    /// Whether the breaker lives in a table now (not local, not deleted since).
    pub fn is_shared(&self) -> bool {
        self.shared().is_some_and(|s| s.live().is_some())
    }

    /// Whether this breaker is still the one its name designates: always for a local one, while
    /// its slot holds its incarnation for a shared one.
    #[inline]
    pub fn is_current(&self) -> bool {
        match self {
            Storage::Local(_) => true,
            Storage::Shared(shared) => shared.live().is_some(),
        }
    }
}

pub fn slot_totals(slot: &Slot) -> Totals {
    let successes = slot.total(Count::Successes);
    let failures = slot.total(Count::Failures);
    let ignored = slot.total(Count::Ignored);
    Totals {
        calls: successes.wrapping_add(failures).wrapping_add(ignored),
        successes,
        failures,
        ignored,
        rejected: slot.total(Count::Rejected),
    }
}
