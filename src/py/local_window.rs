//! The sliding window of a breaker of this process, with the lanes its successes are counted in
//! on a free-threaded build (`panelboard_engine::lanes`: the first thread to count counts in the
//! window's own words until a second thread counts, then each thread in a lane of its own, so
//! that threads calling one rate-policy breaker at once do not all write one cache line on every
//! call). Only the closed fast path of a synchronous call counts in a lane; the other paths
//! (awaitables, permits, failures) count in the window's own words. With the GIL one
//! thread runs at a time: there are no lanes, and none of this costs an instruction or a byte.

use crate::engine::{Lane, Lanes, Window};
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

    /// Gives the window buckets `width` wide (`Window::set_bucket_us`); a new width forgets the
    /// lanes' counts too.
    pub fn set_bucket_us(&self, width: u64) {
        let changed = self.words.set_bucket_us(width);
        #[cfg(Py_GIL_DISABLED)]
        if changed {
            self.lanes.clear();
        }
        #[cfg(not(Py_GIL_DISABLED))]
        let _ = changed;
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

    /// The lane the thread keyed `key` (`ffi::thread::key`) counts a fast success in: `None` for
    /// the window's own words (always, with the GIL). May make the lanes (an allocation).
    #[inline(always)]
    pub fn lane(&self, _attached: Python<'_>, _key: usize) -> Option<&Lane> {
        #[cfg(Py_GIL_DISABLED)]
        {
            self.lanes.lane(_key as u64)
        }
        #[cfg(not(Py_GIL_DISABLED))]
        {
            None
        }
    }
}
