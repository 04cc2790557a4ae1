//! What one process's listeners have heard of a shared breaker: the generation and mode they last
//! heard, so that each change made by any process is reported to them at most once per generation
//! (docs/shared-memory.md, "Listeners"). Process-local (it lives in the binding's breaker, not in
//! the table); model-checked in `tests/loom.rs` (`each_generation_is_heard_once`).

use crate::sync::{AtomicU64, Ordering};
use panelboard_engine::{is_newer_generation, Mode, Word};

fn mode_code(mode: Mode) -> u64 {
    match mode {
        Mode::Closed => 0,
        Mode::Open => 1,
        Mode::HalfOpen => 2,
        Mode::ForcedOpen => 3,
        Mode::Disabled => 4,
    }
}

fn mode_of(code: u64) -> Mode {
    match code {
        0 => Mode::Closed,
        1 => Mode::Open,
        2 => Mode::HalfOpen,
        3 => Mode::ForcedOpen,
        _ => Mode::Disabled,
    }
}

fn pack(word: Word) -> u64 {
    u64::from(word.generation()) << 8 | mode_code(word.mode())
}

/// `generation << 8 | mode` of the newest word reported.
pub struct Heard(AtomicU64);

impl Heard {
    /// Starts from `word`: what is there when the process attaches is not news.
    pub fn new(word: Word) -> Heard {
        Heard(AtomicU64::new(pack(word)))
    }

    /// Whether `generation` differs from the one last reported (one load: the fast path's check).
    #[inline]
    pub fn is_news(&self, generation: u32) -> bool {
        (self.0.load(Ordering::Acquire) >> 8) as u32 != generation
    }

    /// Marks `word` as heard; returns the change to report, from the mode last heard, when `word`
    /// is newer than the last one reported and its mode differs. A word read late (older than the
    /// last reported) reports nothing.
    pub fn hear(&self, word: Word) -> Option<(Mode, Mode)> {
        let next = pack(word);
        let mut heard = self.0.load(Ordering::Acquire);
        loop {
            if !is_newer_generation(word.generation(), (heard >> 8) as u32) {
                return None;
            }
            match self
                .0
                .compare_exchange(heard, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let from = mode_of(heard & 0xff);
                    return (from != word.mode()).then_some((from, word.mode()));
                }
                Err(actual) => heard = actual,
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use panelboard_engine::{Limits, Slots};

    #[test]
    fn changes_are_heard_once_and_late_words_never() {
        let slots = Slots::new();
        let limits = Limits::default();
        let machine = slots.machine(&limits);
        let heard = Heard::new(slots.machine_word());
        assert!(!heard.is_news(slots.machine_word().generation()));
        machine.set_mode(Mode::ForcedOpen);
        let forced = slots.machine_word();
        assert!(heard.is_news(forced.generation()));
        machine.set_mode(Mode::Disabled);
        let disabled = slots.machine_word();
        assert_eq!(heard.hear(disabled), Some((Mode::Closed, Mode::Disabled)));
        assert_eq!(heard.hear(disabled), None, "once");
        assert_eq!(heard.hear(forced), None, "an older word read late");
        machine.set_mode(Mode::Closed);
        machine.set_mode(Mode::Disabled);
        assert_eq!(
            heard.hear(slots.machine_word()),
            None,
            "same mode: nothing to tell"
        );
    }
}
