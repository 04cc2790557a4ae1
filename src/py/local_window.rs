//! The sliding window of a breaker of this process, and the lanes its successes may be counted in.
//!
//! Every success a rate rule counts writes a word of the window. On a free-threaded build, threads
//! calling one breaker at once (each with a handle of its own) would all write the same cache line
//! on every call, and two of them ran at 1.2–1.5x one thread where the same breaker without a rate
//! rule ran at 2x (issue 11, `benches/policy.md`). So the first thread to count a success on the
//! closed fast path counts in the window's own words, and every other thread in one of
//! [`LANES`] lanes ([`Lane`]: the same tagged words, on cache lines of their own), made when a
//! second thread first counts. Readers add the lanes (`Machine::with_lanes`). With the GIL one
//! thread runs at a time: there are no lanes, and nothing of this costs an instruction.

#[cfg(Py_GIL_DISABLED)]
use once_cell::race::OnceBox;
#[cfg(Py_GIL_DISABLED)]
use std::sync::atomic::{AtomicUsize, Ordering};

#[cfg(Py_GIL_DISABLED)]
use crate::engine::LANES;
use crate::engine::{Lane, Window};
use pyo3::Python;

#[cfg(Py_GIL_DISABLED)]
use super::ffi::thread;

/// No thread counts in the window's own words yet.
#[cfg(Py_GIL_DISABLED)]
const NO_THREAD: usize = usize::MAX;

/// A breaker's own window (see the module documentation).
pub struct LocalWindow {
    pub words: Window,
    /// The thread (`ffi::thread::key`) that counts its fast successes in `words`.
    #[cfg(Py_GIL_DISABLED)]
    home: AtomicUsize,
    /// The other threads' lanes, made when the first of them counts: a breaker one thread calls
    /// pays one null pointer.
    #[cfg(Py_GIL_DISABLED)]
    lanes: OnceBox<[Lane; LANES]>,
}

impl LocalWindow {
    pub fn new(width: u64) -> LocalWindow {
        LocalWindow {
            words: Window::new(width),
            #[cfg(Py_GIL_DISABLED)]
            home: AtomicUsize::new(NO_THREAD),
            #[cfg(Py_GIL_DISABLED)]
            lanes: OnceBox::new(),
        }
    }

    /// Gives the window buckets `width` wide (`Window::set_bucket_us`); a new width forgets the
    /// lanes' counts too.
    pub fn set_bucket_us(&self, width: u64) {
        if self.words.set_bucket_us(width) {
            for lane in self.lanes() {
                lane.clear();
            }
        }
    }

    /// The lanes made so far (none with the GIL).
    #[inline]
    pub fn lanes(&self) -> &[Lane] {
        #[cfg(Py_GIL_DISABLED)]
        {
            self.lanes.get().map_or(&[], |lanes| &lanes[..])
        }
        #[cfg(not(Py_GIL_DISABLED))]
        {
            &[]
        }
    }

    /// The lane the calling thread counts a fast success in: `None` for the window's own words
    /// (always, with the GIL). May make the lanes (an allocation: callers are shielded).
    #[inline(always)]
    pub fn lane(&self, _attached: Python<'_>) -> Option<&Lane> {
        #[cfg(Py_GIL_DISABLED)]
        {
            let me = thread::key(_attached);
            let home = self.home.load(Ordering::Relaxed);
            if home == me
                || (home == NO_THREAD
                    && self
                        .home
                        .compare_exchange(NO_THREAD, me, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok())
            {
                return None;
            }
            let lanes = self
                .lanes
                .get_or_init(|| Box::new(std::array::from_fn(|_| Lane::new())));
            Some(&lanes[me % LANES])
        }
        #[cfg(not(Py_GIL_DISABLED))]
        {
            None
        }
    }
}
