//! Lanes: the call counts of a window's successes kept apart from its own words, so that threads
//! counting successes at once do not all write one cache line (issue 11: two free-threaded
//! threads, each with its own handle on one rate-policy breaker, reach at most 1.5x one thread
//! when every success writes the same word; `benches/policy.md`).
//!
//! The bindings give each breaker's own window lanes on free-threaded builds (`src/py/
//! local_window.rs`): two threads with their own handles on one rate-policy breaker reached 1.80x
//! one thread with them where they reached 1.23x without, in one session. The two words fit in
//! the window's allocation since the window has nine buckets, not ten (`crate::window`): a
//! rate-policy breaker takes 498 B at 100,000 names on 3.13t, within issue 11's 512 B.
//!
//! The first thread to count a success in a window counts in the window's own words, and is its
//! *home*; when a second thread first counts, [`LANES`] lanes are made (one allocation), and from
//! then on every thread counts in lane `thread key % LANES`, the home thread too (the window's
//! first cache line, which every success reads, then holds no word a success writes), so that a
//! breaker one thread calls pays two words and no lanes. A lane holds
//! what the window's `calls` words hold, in the same tagged words (a stale word is reset by the
//! CAS that counts, a word of another generation or time is skipped by the readers), and only
//! successes counted on the closed fast path go in one: failures, slow calls and the successes
//! of the slow path go in the window's own words, so the note of a failing bucket stays the
//! window's. Every reader of call counts adds the lanes ([`crate::Window::counts`] and the rest
//! take them). A shared-memory slot's window has none: its processes count apart in the slot's
//! stripes, not its window.
//!
//! **Lanes made during a judge.** A failure's judge reads the newest call count of every lane with
//! a read-modify-write, as it does the window's own (see the window's module documentation: a
//! success and a failure judging at once cannot both miss the other). The lanes themselves are
//! made lazily, so a judge may find none while another thread is making them and counting in
//! one. The `state` word settles it: it is only ever written by read-modify-writes (the home's
//! claim, the maker's mark, and the judges of failures, which read it with `fetch_add(0)` after
//! noting their bucket), so a judge that reads "no lanes" heads a release sequence that the
//! maker's later mark continues, and every thread that then finds the lanes (an acquire load of
//! that mark) sees the failure's note and judges the window itself. Model-checked:
//! `tests/loom.rs`, `a_success_in_lanes_made_during_the_judge_of_a_failure_trips`.

use crate::sync::{AtomicU64, Ordering};
use crate::window::BUCKETS;
use once_cell::race::OnceBox;

/// Lanes a window may be given: a success's thread takes lane `thread key % LANES`.
#[cfg(not(loom))]
pub const LANES: usize = 4;
/// Under loom, one lane (what the models check, that a count in a lane is summed and judged like
/// one in the window's own words, does not depend on how many there are).
#[cfg(loom)]
pub const LANES: usize = 1;

/// The call counts of one lane: the window's `calls` words, on cache lines of their own.
#[derive(Debug)]
#[repr(C, align(128))] // a lane per pair of cache lines: CPUs fetch lines in pairs
pub struct Lane {
    pub(crate) calls: [AtomicU64; BUCKETS],
}

impl Lane {
    fn new() -> Lane {
        Lane {
            calls: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// `state`: no thread is home yet.
const NO_HOME: u64 = (1 << 63) - 1;
/// `state`: the lanes are made (the other bits keep the home's key).
const MADE: u64 = 1 << 63;

/// A window's home thread and its lanes (see the module documentation).
#[derive(Debug)]
pub struct Lanes {
    /// The home's thread key (low 63 bits; `NO_HOME` before the first count), and [`MADE`] once
    /// the lanes are. Written only by read-modify-writes.
    state: AtomicU64,
    lanes: OnceBox<[Lane; LANES]>,
}

impl Default for Lanes {
    fn default() -> Lanes {
        Lanes::new()
    }
}

impl Lanes {
    pub fn new() -> Lanes {
        Lanes {
            state: AtomicU64::new(NO_HOME),
            lanes: OnceBox::new(),
        }
    }

    /// The lane the thread keyed `key` counts a fast success in: `None` for the window's own
    /// words (the first thread's to ask, until a second thread asks). Makes the lanes when a
    /// second thread first asks (an allocation, which like any Rust allocation aborts the process
    /// if memory is exhausted).
    #[inline]
    pub fn lane(&self, key: u64) -> Option<&Lane> {
        let key = key & NO_HOME;
        let state = self.state.load(Ordering::Acquire);
        if state & MADE != 0 {
            if let Some(lanes) = self.lanes.get() {
                return Some(&lanes[slot(key)]);
            }
        } else if state == key {
            return None;
        }
        self.lane_first(key, state)
    }

    /// [`Lanes::lane`] when this thread is the first to count (it becomes the home) or the lanes
    /// are not made yet and it is not the home (it makes them, then marks them made).
    #[cold]
    fn lane_first(&self, key: u64, state: u64) -> Option<&Lane> {
        if state & NO_HOME == NO_HOME {
            match self.state.compare_exchange(
                state,
                (state & MADE) | key,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return None,
                Err(actual) if actual & NO_HOME == key => return None,
                Err(_) => {}
            }
        }
        let lanes = self
            .lanes
            .get_or_init(|| Box::new(std::array::from_fn(|_| Lane::new())));
        // Made before marked: whoever reads the mark finds the lanes.
        self.state.fetch_or(MADE, Ordering::SeqCst);
        Some(&lanes[slot(key)])
    }

    /// The lanes made so far, for a reader (metrics, the fleet's snapshot, a success's judge).
    pub fn made(&self) -> &[Lane] {
        self.lanes_if(self.state.load(Ordering::SeqCst))
    }

    /// The lanes made so far, for the judge of a failure or slow call, which reads the mark with a
    /// read-modify-write after noting its bucket (see the module documentation).
    pub(crate) fn made_for_judge(&self) -> &[Lane] {
        self.lanes_if(self.state.fetch_add(0, Ordering::SeqCst))
    }

    fn lanes_if(&self, state: u64) -> &[Lane] {
        match self.lanes.get() {
            Some(lanes) if state & MADE != 0 => &lanes[..],
            _ => &[],
        }
    }

    /// Forgets every count of the lanes (a new bucket width: the old tags mean other times).
    pub(crate) fn clear(&self) {
        for lane in self.lanes.get().into_iter().flatten() {
            for word in &lane.calls {
                word.store(0, Ordering::SeqCst);
            }
        }
    }
}

/// The lane of thread key `key`.
#[inline]
fn slot(key: u64) -> usize {
    (key % LANES as u64) as usize
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_first_thread_is_home_and_the_second_makes_the_lanes() {
        let lanes = Lanes::new();
        assert!(lanes.made().is_empty());
        assert!(
            lanes.lane(7).is_none(),
            "the first thread counts in the window's words"
        );
        assert!(lanes.lane(7).is_none());
        assert!(lanes.made().is_empty(), "one thread makes no lanes");
        let second = lanes.lane(8).expect("a second thread counts in a lane");
        assert_eq!(lanes.made().len(), LANES);
        assert!(std::ptr::eq(second, &lanes.made()[8 % LANES]));
        assert!(
            std::ptr::eq(lanes.lane(7).unwrap(), &lanes.made()[7 % LANES]),
            "once the lanes are made, the home thread counts in its lane too"
        );
        assert!(std::ptr::eq(lanes.lane(8).unwrap(), second));
        assert!(std::ptr::eq(
            lanes.lane(9).unwrap(),
            &lanes.made()[9 % LANES]
        ));
        assert_eq!(lanes.made_for_judge().len(), LANES);
    }

    #[test]
    fn a_lane_has_cache_lines_of_its_own() {
        assert_eq!(std::mem::align_of::<Lane>(), 128);
        assert!(std::mem::size_of::<Lane>() >= BUCKETS * 8);
        // What a breaker one thread calls pays: two words.
        assert_eq!(std::mem::size_of::<Lanes>(), 16);
    }

    #[test]
    fn clear_forgets_the_lanes_counts() {
        let lanes = Lanes::new();
        lanes.lane(1);
        let lane = lanes.lane(2).unwrap();
        lane.calls[3].store(42, Ordering::SeqCst);
        lanes.clear();
        assert!(lanes.made()[2 % LANES]
            .calls
            .iter()
            .all(|w| w.load(Ordering::SeqCst) == 0));
    }
}
