//! The sliding window of a breaker of this process, with the lanes its successes are counted in
//! on a free-threaded build (`panelboard_engine::lanes`: the first thread to count counts in the
//! window's own words until a second thread counts, then each thread in a lane of its own, so
//! that threads calling one rate-policy breaker at once do not all write one cache line on every
//! call). Only the closed fast path of a synchronous call counts in a lane; the other paths
//! (awaitables, permits, failures) count in the window's own words. With the GIL one
//! thread runs at a time: there are no lanes, and none of this costs an instruction or a byte;
//! the fast path counts a success with a load and a store instead of a compare-and-swap (the GIL
//! orders it with every other access: `Counting::Alone`).

use crate::engine::{Counting, Lanes, Window};
use pyo3::Python;

/// A breaker's own window (see the module documentation).
pub struct LocalWindow {
    pub words: Window,
    /// Two words until a second thread counts a success (then the lanes are made).
    #[cfg(Py_GIL_DISABLED)]
    lanes: Lanes,
}

impl LocalWindow {
    pub fn new(width: u64) -> LocalWindow {
        LocalWindow {
            words: Window::new(width),
            #[cfg(Py_GIL_DISABLED)]
            lanes: Lanes::new(),
        }
    }

    /// Gives the window buckets `width` wide (`Window::set_bucket_us_with`); a new width forgets
    /// the lanes' counts too, under the window's mark of a clearing in progress.
    pub fn set_bucket_us(&self, width: u64) {
        self.words.set_bucket_us_with(width, self.lanes());
    }

    /// The lanes, for the machine's judges and readers (none with the GIL).
    #[inline]
    pub fn lanes(&self) -> Option<&Lanes> {
        #[cfg(Py_GIL_DISABLED)]
        {
            Some(&self.lanes)
        }
        #[cfg(not(Py_GIL_DISABLED))]
        {
            None
        }
    }

    /// How the thread keyed `key` (`ffi::thread::key`) counts a fast success in this window: in
    /// its lane, or the window's own words, with compare-and-swaps on a free-threaded build (may
    /// make the lanes: an allocation); with a load and a store under the GIL.
    #[inline(always)]
    pub fn counting(&self, _attached: Python<'_>, _key: usize) -> Counting<'_> {
        #[cfg(Py_GIL_DISABLED)]
        {
            Counting::Shared(self.lanes.lane(_key as u64))
        }
        #[cfg(not(Py_GIL_DISABLED))]
        {
            // `_attached` is the GIL, held: every reader and writer of this window holds it (they
            // are all methods called from Python, none detached), and no other process maps it.
            Counting::Alone
        }
    }
}
