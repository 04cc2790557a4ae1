//! What a table needs from the operating system besides the mapping: the host-wide monotonic
//! clock, whether a process is alive, the clock's identity (boot id, time namespace), and this
//! process's counter lane (re-chosen in a fork child).

use crate::layout::ClockIdentity;
use crate::table::Host;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

/// Absolute `CLOCK_MONOTONIC` in milliseconds: the same clock in every process of one time
/// namespace (read through the vDSO: no syscall).
pub fn monotonic_ms() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the duration of the call, and
    // CLOCK_MONOTONIC is supported on every platform this builds for (it cannot fail then).
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    if rc != 0 {
        return 0;
    }
    (now.tv_sec as u64).saturating_mul(1000) + (now.tv_nsec as u64) / 1_000_000
}

/// `false` only when no process `pid` exists (`kill(pid, 0)` fails with `ESRCH`).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    if pid <= 0 {
        return true; // 0 and negatives address process groups: never "dead"
    }
    // SAFETY: signal 0 performs only the existence and permission checks; no signal is sent.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// The boot id and time-namespace offsets of this process's clock.
pub fn clock_identity() -> ClockIdentity {
    let read = |path: &str| std::fs::read(path).unwrap_or_default();
    let trim = |mut v: Vec<u8>| {
        while v.last().is_some_and(|b| b.is_ascii_whitespace()) {
            v.pop();
        }
        v
    };
    ClockIdentity {
        boot_id: trim(read("/proc/sys/kernel/random/boot_id")),
        timens_offsets: read("/proc/self/timens_offsets"),
    }
}

/// The process's identity and clock, as the slot protocol reads them.
pub struct SystemHost;

impl Host for SystemHost {
    fn pid(&self) -> u32 {
        std::process::id()
    }
    fn now_ms(&self) -> u64 {
        monotonic_ms()
    }
    fn is_alive(&self, pid: u32) -> bool {
        pid_alive(pid)
    }
    fn pause(&self, round: u32) {
        if round < 64 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    fn patience(&self) -> u32 {
        80 // some yields and ~16 ms of sleeps: a creation takes microseconds
    }
}

/// Counts the forks this process descends from (bumped in every fork child), so that a table
/// re-chooses its counter lane in a child: a child must not count in its parent's stripe.
static FORK_GENERATION: AtomicUsize = AtomicUsize::new(0);
static AT_FORK: Once = Once::new();

extern "C" fn count_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// The number of forks between the first process and this one (0 in a process never forked).
#[inline]
pub fn fork_generation() -> usize {
    FORK_GENERATION.load(Ordering::Relaxed)
}

/// Registers the fork handler (once per process; a child inherits it).
pub fn watch_forks() {
    AT_FORK.call_once(|| {
        // SAFETY: the handler is a plain `extern "C"` function that only does an atomic add
        // (async-signal-safe, as a fork child handler must be); registering it has no other effect.
        unsafe {
            libc::pthread_atfork(None, None, Some(count_fork_in_child));
        }
    });
}

thread_local! {
    static THREAD_NUMBER: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed)
    };
}

/// A small number per thread of this process, handed out in order.
#[inline]
pub fn thread_number() -> usize {
    THREAD_NUMBER.with(|n| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_moves_forward_and_this_process_is_alive() {
        let a = monotonic_ms();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(monotonic_ms() >= a + 4);
        assert!(pid_alive(std::process::id()));
        // pid_max is at most 2^22: this pid cannot exist.
        assert!(!pid_alive((1 << 22) + 5));
    }

    #[test]
    fn threads_get_different_numbers() {
        let here = thread_number();
        let there = std::thread::spawn(thread_number).join().unwrap();
        assert_ne!(here, there);
        assert_eq!(here, thread_number());
    }
}
