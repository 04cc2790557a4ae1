//! One breaker as the bindings hold it, and the guarded call: admit, run, classify, record.
//!
//! Nothing here holds a lock while Python runs: a breaker is reached through an `Arc` cloned out of
//! the registry's map (the map guard is already dropped), its state is one atomic word, and
//! listeners are called from a snapshot of the listener list.

use arc_swap::ArcSwap;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::clock::Clock;
use super::config::Config;
use super::errors::{CircuitOpenError, RejectionName};
use super::pyrefs;
use super::upcall;
use crate::engine::{Admission, Mode, Outcome, Slots, Ticket, Transition, Word};
use crate::metrics::{Counter, Counters};

/// What the breakers of one registry share: its clock and its state-change listeners.
pub struct Hub {
    pub clock: Clock,
    pub listeners: ArcSwap<Vec<Py<PyAny>>>,
}

pub struct BreakerCore {
    pub name: Box<[u8]>,
    pub slots: Slots,
    pub counters: Counters,
    pub times_opened: AtomicU64,
    pub config: ArcSwap<Config>,
    /// `Config::predicate_flag` of the configuration: its low bit (is there a `success`
    /// predicate?) lets the closed fast path skip loading the configuration at all. Written after
    /// the configuration it describes, and only ever raised (see `reconfigure`).
    predicate_flag: AtomicU64,
    pub hub: Arc<Hub>,
    rejection_name: RejectionName,
}

impl BreakerCore {
    pub fn new(name: Box<[u8]>, config: Arc<Config>, hub: Arc<Hub>) -> Self {
        BreakerCore {
            name,
            slots: Slots::new(),
            counters: Counters::new(),
            times_opened: AtomicU64::new(0),
            predicate_flag: AtomicU64::new(config.predicate_flag()),
            config: ArcSwap::new(config),
            hub,
            rejection_name: RejectionName::default(),
        }
    }

    /// A breaker that belongs to no registry (used only to probe object layout).
    pub fn detached(py: Python<'_>) -> Self {
        let hub = Hub {
            clock: Clock::Monotonic(std::time::Instant::now()),
            listeners: ArcSwap::from_pointee(Vec::new()),
        };
        BreakerCore::new(
            Box::default(),
            Arc::new(Config::defaults(py)),
            Arc::new(hub),
        )
    }

    /// Garbage-collector support for a handle (`Breaker`, `Guarded`) on this breaker. The Python
    /// objects in its configuration are reported only when the handle is the one owner of both the
    /// breaker and its configuration: an object must never be reported by two owners (the
    /// collector would free it while it is still in use), while not reporting one only risks
    /// leaking a cycle. A breaker still in a registry is reported by the registry instead.
    pub fn traverse_if_sole_owner(
        core: &Arc<BreakerCore>,
        visit: &PyVisit<'_>,
    ) -> Result<(), PyTraverseError> {
        if Arc::strong_count(core) != 1 {
            return Ok(());
        }
        let config = core.config.load_full();
        // 2: the breaker's own reference plus the one just loaded.
        if Arc::strong_count(&config) == 2 {
            config.traverse(visit)?;
        }
        Ok(())
    }

    /// Atomically applies `patch` to the configuration (`Registry.configure`).
    pub fn reconfigure(&self, py: Python<'_>, patch: &super::config::Patch) {
        let previous = self.config.rcu(|current| Config::with(current, py, patch));
        drop(previous);
        // Concurrent `configure` calls may publish their flags in any order, so the flag carries
        // the configuration's version and only ever grows: a late publisher of an older
        // configuration changes nothing. Each call publishes the configuration current after its
        // own was installed, so once it returns the flag describes that one or a newer one.
        let flag = self.config.load().predicate_flag();
        self.predicate_flag.fetch_max(flag, Ordering::SeqCst);
    }

    pub fn py_name<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        pyrefs::name_str(py, &self.name)
    }

    /// Takes a ticket, or raises `CircuitOpenError`. (The same admission as `try_admit`, written
    /// out again so that each has the engine's admission inlined, and this one keeps the time
    /// until half-open that the engine computed: one clock reading serves both.)
    pub fn admit(&self, py: Python<'_>, config: &Config) -> PyResult<Ticket> {
        let clock = &self.hub.clock;
        match self.slots.machine(&config.limits).admit(|| clock.now_ms()) {
            Admission::Admitted { ticket, transition } => {
                if transition.is_some() {
                    self.announce(py, transition);
                }
                Ok(ticket)
            }
            Admission::Rejected { retry_after_ms } => {
                self.counters.add(Counter::Rejected);
                Err(self.open_error(py, retry_after_ms))
            }
        }
    }

    /// Takes a ticket, or counts a rejection and returns `None`.
    #[inline]
    pub fn try_admit(&self, py: Python<'_>, config: &Config) -> Option<Ticket> {
        let clock = &self.hub.clock;
        match self.slots.machine(&config.limits).admit(|| clock.now_ms()) {
            Admission::Admitted { ticket, transition } => {
                if transition.is_some() {
                    self.announce(py, transition);
                }
                Some(ticket)
            }
            Admission::Rejected { .. } => {
                self.counters.add(Counter::Rejected);
                None
            }
        }
    }

    fn open_error(&self, py: Python<'_>, retry_after_ms: u64) -> PyErr {
        match self.rejection_name.get(py, &self.name) {
            Ok(name) => CircuitOpenError::new_err(py, name, retry_after_ms as f64 / 1000.0),
            Err(err) => err,
        }
    }

    /// Records an outcome and returns the transition it caused. Needs no Python, so a permit
    /// dropped without an answer can record itself as ignored (which never moves the breaker).
    #[inline]
    pub fn record(&self, config: &Config, ticket: Ticket, outcome: Outcome) -> Option<Transition> {
        self.counters.add(match outcome {
            Outcome::Success => Counter::Successes,
            Outcome::Failure => Counter::Failures,
            Outcome::Ignored => Counter::Ignored,
        });
        let clock = &self.hub.clock;
        let transition = self
            .slots
            .machine(&config.limits)
            .record(ticket, outcome, || clock.now_ms());
        self.count_opening(transition);
        transition
    }

    #[inline]
    pub fn finish(&self, py: Python<'_>, config: &Config, ticket: Ticket, outcome: Outcome) {
        let transition = self.record(config, ticket, outcome);
        if transition.is_some() {
            self.announce(py, transition);
        }
    }

    fn count_opening(&self, transition: Option<Transition>) {
        if matches!(transition, Some(Transition { to: Mode::Open, .. })) {
            self.times_opened.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn set_mode(&self, py: Python<'_>, mode: Mode) {
        let config = self.config.load();
        let transition = self.slots.machine(&config.limits).set_mode(mode);
        self.count_opening(transition);
        self.announce(py, transition);
    }

    /// The mode now, turning an expired open breaker half-open (and reporting it) on first sight.
    pub fn observe(&self, py: Python<'_>) -> (crate::engine::Word, f64) {
        let config = self.config.load();
        let machine = self.slots.machine(&config.limits);
        let clock = &self.hub.clock;
        let (word, transition) = machine.observe(|| clock.now_ms());
        self.announce(py, transition);
        let retry_after = machine.retry_after_ms(word, || clock.now_ms()) as f64 / 1000.0;
        (word, retry_after)
    }

    /// Calls every listener with `(name, old, new)`, on this thread, after the transition and with
    /// no lock held. A listener's exception is logged, never raised.
    #[cold]
    pub fn announce(&self, py: Python<'_>, transition: Option<Transition>) {
        let Some(transition) = transition else { return };
        let listeners = self.hub.listeners.load_full();
        if listeners.is_empty() {
            return;
        }
        let args = (|| -> PyResult<_> {
            Ok([
                self.py_name(py)?,
                pyrefs::state(py, transition.from)?,
                pyrefs::state(py, transition.to)?,
            ])
        })();
        let args = match args {
            Ok(args) => args,
            Err(err) => return log_error(py, "could not build state-change event", None, err),
        };
        for listener in listeners.iter() {
            let [name, old, new] = &args;
            if let Err(err) = upcall::call(listener.bind(py), [name, old, new]) {
                log_error(
                    py,
                    "state-change listener %r failed",
                    Some(listener.bind(py)),
                    err,
                );
            }
        }
    }
}

fn log_error(py: Python<'_>, message: &str, subject: Option<&Bound<'_, PyAny>>, err: PyErr) {
    let logged = (|| -> PyResult<()> {
        let kwargs = PyDict::new(py);
        kwargs.set_item("exc_info", err.value(py))?;
        let name = PyString::new(py, "panelboard").into_any();
        let logger = upcall::call(pyrefs::refs(py)?.get_logger.bind(py), [&name])?;
        let error = upcall::getattr(&logger, "error")?;
        let message = PyString::new(py, message).into_any();
        let args = match subject {
            Some(s) => PyTuple::new(py, [&message, s])?,
            None => PyTuple::new(py, [&message])?,
        };
        upcall::call_with(&error, &args, Some(&kwargs))?;
        Ok(())
    })();
    if let Err(e) = logged {
        upcall::write_unraisable(py, e);
    }
}

/// Runs `f` with Rust panics turned into `PanicException`.
pub fn shield<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panic in panelboard".to_owned());
        Err(PanicException::new_err((message,)))
    })
}

/// How a call was admitted: on the fast path (closed, no result predicate: no configuration
/// needed) or with the configuration it was admitted under.
enum Admitted {
    Fast(Word),
    Configured(arc_swap::Guard<Arc<Config>>, Ticket),
}

/// The guarded call, entirely in Rust: admit, run `invoke` (which calls the user's function),
/// classify, record. `invoke` runs with no lock held.
///
/// Admission and recording run under `shield` (a Rust panic becomes `PanicException`); the user's
/// function runs outside it and through `upcall`, which parks a thread that CPython ends there at
/// shutdown instead of letting that unwind reach a `catch_unwind`.
#[inline]
pub fn guarded<'py>(
    core: &BreakerCore,
    py: Python<'py>,
    invoke: impl FnOnce() -> PyResult<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let admitted = shield(|| {
        // Fast path: a closed breaker without a result predicate needs no configuration to admit
        // a call or to record its success: one atomic load now, one after the call, no write.
        let word = core.slots.machine_word();
        if word.mode() == Mode::Closed && core.predicate_flag.load(Ordering::Acquire) & 1 == 0 {
            return Ok(Admitted::Fast(word));
        }
        let config = core.config.load();
        let ticket = core.admit(py, &config)?;
        Ok(Admitted::Configured(config, ticket))
    })?;
    let result = invoke();
    shield(move || {
        let (config, ticket, fast) = match admitted {
            Admitted::Fast(word) => {
                if result.is_ok() && word.failures() == 0 && core.slots.machine_word() == word {
                    // Healthy and unchanged: a success has nothing to record but its count.
                    core.counters.add(Counter::Successes);
                    return result;
                }
                let ticket = Ticket {
                    generation: word.generation(),
                    probe: false,
                };
                (core.config.load(), ticket, true)
            }
            Admitted::Configured(config, ticket) => (config, ticket, false),
        };
        match result {
            Ok(value) => {
                // A call admitted on the fast path had no predicate to apply when it began.
                let (outcome, predicate_error) = if fast {
                    (Outcome::Success, None)
                } else {
                    config.classify_result(&value)
                };
                core.finish(py, &config, ticket, outcome);
                predicate_error.map_or(Ok(value), Err)
            }
            Err(err) => {
                core.finish(py, &config, ticket, config.classify_error(py, &err));
                Err(err)
            }
        }
    })
}
