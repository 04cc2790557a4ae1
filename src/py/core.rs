//! One breaker as the bindings hold it, and the guarded call: admit, run, classify, record.
//!
//! Nothing here holds a lock while Python runs: a breaker is reached through a reference cloned out
//! of the registry's map (the map guard is already dropped), its state is one atomic word, and
//! listeners are called from a snapshot of the listener list.
//!
//! # Ownership, as the garbage collector sees it
//!
//! The Python objects the bindings hold (listeners, and each configuration's `success`,
//! `failure_on` and `ignore`) are used by the registry, by every handle on a breaker (`Breaker`,
//! a decorated function, a `Permit`) and by calls in flight, so they live in holders that all of
//! those share: the registry's `Hub` (clock and listeners) and each breaker's `BreakerCore`.
//! CPython's collector finds garbage by subtracting, from each object's reference count, the
//! references that the objects it tracks report from `tp_traverse`; whatever is left is held from
//! outside and keeps everything it reaches alive. That is only right if an object reports exactly
//! the references that it alone holds and that go away with it. When these holders were `Arc`s
//! inside the registry, the registry reported objects that every handle also used: a registry in
//! a cycle (a listener closing over it) made the collector clear a listener or predicate that a
//! live handle then called, and the process crashed (issue 8).
//!
//! So the shared holders are themselves Python objects, tracked by the collector, and every owner
//! holds its own strong reference to them (one `Py_INCREF` each, not a shared `Arc`):
//! - `Registry` reports its `Hub`, each `BreakerCore` in its map (one reference per map entry) and
//!   the objects of its default configuration (a `Config` of its own, never shared while it holds
//!   any);
//! - `Breaker`, `Guarded` report their `BreakerCore` (and `Guarded` its function and `__dict__`);
//! - `BreakerCore` reports its `Hub` and the objects of its current configuration; a configuration
//!   that holds Python objects is each breaker's own (breakers created with such defaults get a
//!   copy), so no two breakers, and not the registry, report the same object. A configuration
//!   that holds none (`Config::is_shareable`: the default options, whatever the numbers) reports
//!   nothing, so it is shared by every breaker configured alike and by the registry (one
//!   configuration, not one per breaker: issue 11's memory per breaker);
//! - `Hub` reports the listeners in its current list.
//!
//! Each reported edge is then one strong reference owned by the reporter alone, and the collector
//! sees the true graph: it frees a listener or predicate only when every owner is garbage too, and
//! a cycle (registry + listener closing over it, with no handle left) is still collected. No
//! reference count is consulted, so nothing depends on counts that other threads change.
//!
//! The `Arc`s that remain are shared only with calls in flight, which hold them briefly: a
//! configuration loaded by a running call, and a snapshot of the listener list being announced.
//! Such a call reached the breaker through a reference held from outside the collector's graph
//! (the caller's `self` or argument, or a strong reference cloned out of the map), so while it
//! runs the `BreakerCore` and `Hub` reporting those objects are reachable and nothing they report
//! can be freed. A configuration or list replaced while a call uses it is reported by nobody, so
//! it counts as held from outside until the call drops it. Nothing is ever reported twice, which
//! is the one mistake that frees a live object; leaving something unreported can only keep a cycle
//! alive.
//!
//! `Permit`s report nothing (they are not tracked, so that `try_acquire` costs no collector work):
//! a cycle through a permit (a listener whose closure holds one) is never collected. None of these
//! holders has `__clear__`: a cycle is broken by the user's objects in it (functions, instances
//! and dicts clear themselves), and nothing is dropped behind a running call's back.

use arc_swap::ArcSwap;
use once_cell::race::OnceBox;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};
use std::borrow::Cow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::clock::Clock;
use super::config::{Config, Patch};
use super::errors::{CircuitOpenError, RejectionName};
use super::ffi::objects::is_coroutine;
use super::ffi::refs::AttachedRef;
use super::ffi::thread;
use super::ffi::upcall::{self, raise, Raised, Returned};
use super::local_window::LocalWindow;
use super::name::Name;
use super::pyrefs;
use super::storage::{LocalWords, SharedWords, Storage};
use crate::engine::remote::FleetGate;
use crate::engine::{
    Admission, Counting, FastTicket, Lanes, Limits, Machine, Mode, Outcome, PredicateFlag, Slots,
    Ticket, Transition, Window,
};
use crate::metrics::Counter;
use crate::shm::options::bucket_word;

/// What the breakers of one registry share: its clock and its state-change listeners. Owned by the
/// registry and by each of its breakers (see the module documentation).
#[pyclass(frozen, module = "panelboard._core", name = "_Hub")]
pub struct Hub {
    pub clock: Clock,
    pub listeners: ArcSwap<Vec<Py<PyAny>>>,
}

impl Hub {
    pub fn new(clock: Clock) -> Hub {
        Hub {
            clock,
            listeners: ArcSwap::from_pointee(Vec::new()),
        }
    }
}

#[pymethods]
impl Hub {
    /// The listeners of the current list: each reference is held by that list alone (a snapshot
    /// taken by a running announcement shares the list, and keeps this hub reachable).
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        for listener in self.listeners.load().iter() {
            visit.call(listener)?;
        }
        Ok(())
    }
}

/// One breaker: its state word, counters and configuration. Owned by the registry's map and by
/// every handle on it (see the module documentation).
#[pyclass(frozen, module = "panelboard._core", name = "_BreakerCore")]
pub struct BreakerCore {
    pub name: Name,
    /// The state words and counters: on the heap, or in a slot of a shared table.
    pub storage: Storage,
    /// Calls slower than `slow_call_duration`, ever (slow calls are rare: one shared counter).
    pub slow_calls: AtomicU64,
    /// The sliding window of the rate rules, made when a configuration with a rate rule is first
    /// installed (a breaker without one pays a null pointer: one word, not the two of a
    /// `OnceLock`). Kept by this process, also for a shared breaker (see docs/shared-memory.md).
    window: OnceBox<LocalWindow>,
    /// This breaker's configuration: its own while it holds Python objects, else possibly shared
    /// with the breakers configured alike (see the module documentation). `configure` swaps in a
    /// new one for this breaker alone.
    pub config: ArcSwap<Config>,
    /// Whether the configuration has a `success` predicate, so that the closed fast path can skip
    /// loading the configuration at all. Published after the configuration it describes.
    predicate_flag: PredicateFlag,
    pub hub: Py<Hub>,
    rejection_name: RejectionName,
    /// Held by a Redis-synced registry's worker while the fleet decides when this breaker probes
    /// (`engine::remote`); always released on a local registry.
    pub fleet_gate: FleetGate,
}

#[pymethods]
impl BreakerCore {
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.hub)?;
        self.config.load().traverse(&visit)
    }
}

/// A handle on one breaker (`panelboard.Breaker`). Calling through it does no name lookup; it keeps
/// working on its own breaker after that breaker is deleted from the registry. Declared here, its
/// methods in `handle`: the `with` blocks (`block`, which `handle` uses) need its type.
#[pyclass(frozen, module = "panelboard", weakref)]
pub struct Breaker {
    pub(crate) core: CoreRef,
}

/// A strong reference to a breaker, as the handles and the registry's map hold it (one reference
/// each, reported by each to the garbage collector).
///
/// Every owner is a Python object or code called from Python (a method, a fast entry point), so a
/// `CoreRef` is only ever dropped by a thread attached to the interpreter: never move one into
/// `Python::detach` or another thread of Rust's own. Its drop releases the reference at once (see
/// `AttachedRef`).
pub type CoreRef = AttachedRef<BreakerCore>;

impl BreakerCore {
    pub fn new(name: Name, config: Arc<Config>, hub: Py<Hub>) -> Self {
        BreakerCore::with_storage(name, config, hub, Storage::Local(LocalWords::new()))
    }

    /// A breaker whose words are a slot of a shared table.
    pub fn shared(name: Name, config: Arc<Config>, hub: Py<Hub>, words: SharedWords) -> Self {
        BreakerCore::with_storage(name, config, hub, Storage::Shared(words))
    }

    fn with_storage(name: Name, config: Arc<Config>, hub: Py<Hub>, storage: Storage) -> Self {
        let window = OnceBox::new();
        if let Some(rate) = config.limits.rate {
            // A shared breaker counts in the table's window instead, whose width the table's
            // `window` option set (this one is for after its name is deleted).
            let width = hub.get().clock.bucket_word(&rate);
            let _ = window.set(Box::new(LocalWindow::new(width)));
        }
        BreakerCore {
            name,
            storage,
            slow_calls: AtomicU64::new(0),
            window,
            predicate_flag: PredicateFlag::new(config.version, config.has_predicate()),
            config: ArcSwap::new(config),
            hub,
            rejection_name: RejectionName::default(),
            fleet_gate: FleetGate::new(),
        }
    }

    /// A breaker that belongs to no registry (used only to probe object layout).
    pub fn detached(py: Python<'_>) -> PyResult<CoreRef> {
        let hub = Py::new(py, Hub::new(Clock::monotonic()))?;
        CoreRef::new(
            py,
            BreakerCore::new(Name::new(b""), Arc::new(Config::defaults()), hub),
        )
    }

    /// Atomically applies `patch` to the configuration (`Registry.configure`); options that do not
    /// fit with the current ones are a `ValueError` that changes nothing.
    pub fn reconfigure(&self, py: Python<'_>, patch: &Patch) -> PyResult<()> {
        // A shared breaker's numeric options are the table's: the patch applies over them (and is
        // checked against them), whatever this process's configuration says.
        let shared = self.storage.shared();
        let slot = shared.and_then(|s| s.live());
        let table = slot.map(|slot| Patch::from_table(&slot.read_options().options));
        let apply = |current: &Config| -> PyResult<Config> {
            match &table {
                Some(table) => current.with(py, table)?.with(py, patch),
                None => current.with(py, patch),
            }
        };
        // Validated against the current configuration first, so that a window is only made for a
        // configuration that will be installed.
        let candidate = apply(&self.config.load())?;
        if let Some(rate) = candidate.limits.rate {
            // Before the configuration that needs it is published. A new width forgets the old
            // buckets (their tags mean other times).
            let width = self.hub.get().clock.bucket_word(&rate);
            self.window
                .get_or_init(|| Box::new(LocalWindow::new(width)))
                .set_bucket_us(width);
        }
        drop(candidate);
        let mut error = None;
        let previous = self.config.rcu(|current| match apply(current) {
            Ok(config) => {
                error = None;
                Arc::new(config)
            }
            Err(err) => {
                // A concurrent `configure` changed an option this one's check relied on.
                error = Some(err);
                Arc::clone(current)
            }
        });
        if let Some(err) = error {
            return Err(err);
        }
        drop(previous);
        if let (Some(shared), Some(slot)) = (shared, slot) {
            // The numeric options given are the table's, for every process, and so is the window,
            // whose width only a `window` given changes (a concurrent `configure` of another
            // option must not put back the width it read). Stored only while the slot still holds
            // this breaker: a name deleted and made again meanwhile keeps its creator's (bug 37).
            let width = patch
                .window_us()
                .map(|window_us| bucket_word(window_us, self.hub.get().clock.lag_us()));
            slot.store_options_of(shared.claim(), &patch.table_patch(), || {
                if let Some(width) = width {
                    slot.window.set_bucket_us(width);
                }
            });
        }
        // Each call publishes the configuration current after its own was installed, so once it
        // returns the flag describes that one or a newer one (the flag ignores older versions).
        let current = self.config.load();
        self.predicate_flag
            .publish(current.version, current.has_predicate());
        Ok(())
    }

    /// The machine over this breaker's words, with the window when `config` has a rate rule, and
    /// the fleet gate (held only by a Redis-synced registry's worker).
    #[inline]
    pub fn machine<'a>(&'a self, limits: &'a Limits) -> Machine<'a> {
        let machine = self
            .storage
            .slots()
            .machine(limits)
            .with_fleet_gate(&self.fleet_gate);
        match (limits.rate.is_some(), self.window(), self.lanes()) {
            (true, Some(window), Some(lanes)) => machine.with_window(window).with_lanes(lanes),
            (true, Some(window), None) => machine.with_window(window),
            _ => machine,
        }
    }

    /// The window the rate rules count in: for a live shared breaker the table's, while the
    /// table's options have a rate rule (one window for every process); else the breaker's own,
    /// made with this process's first configuration that has a rate rule. `None` otherwise, so
    /// that a healthy success of a breaker without a rate rule reads no clock and writes nothing
    /// (the slot's window always exists: bug 33, docs/reliability.md).
    #[inline]
    pub fn window(&self) -> Option<&Window> {
        match self.storage.shared() {
            Some(shared) => match shared.live() {
                // The table's options say whether the breaker has a rate rule, for every process.
                Some(slot) => slot.has_rate_rule().then_some(&slot.window),
                None => self.own_window(), // deleted: words of its own
            },
            None => self.own_window(),
        }
    }

    #[inline]
    fn own_window(&self) -> Option<&Window> {
        self.window.get().map(|local| &local.words)
    }

    /// The lanes of the window `window()` returns (`local_window`): the breaker's own (none with
    /// the GIL), none for the table's window of a live shared breaker.
    #[inline]
    pub fn lanes(&self) -> Option<&Lanes> {
        if cfg!(not(Py_GIL_DISABLED)) {
            return None; // no lanes with the GIL: nothing to look up
        }
        match self.storage.shared() {
            Some(shared) if shared.live().is_some() => None,
            _ => self.window.get().and_then(|local| local.lanes()),
        }
    }

    /// When a call admitted now started, if calls are timed (`slow_call_duration`: the table's for
    /// a shared breaker, else `config`'s): no clock is read otherwise.
    #[inline]
    pub fn start_timer(&self, config: &Config) -> Option<u64> {
        self.storage
            .slow_call_ns(config.slow_call_ns)
            .map(|_| self.hub.get().clock.now_ns())
    }

    /// Counts the success of a call admitted on the fast path (`record_fast_success` accepted it) in
    /// the breaker's window, which exists once a configuration had a rate rule (the fast path does
    /// not load the configuration; a window kept after the rule was configured away is counted in
    /// and never judged): a clock reading, one CAS (a store, under the GIL), one load; the window
    /// is judged only when it holds a failure or a slow call. The reading is the ticker's
    /// published one (one load, `ffi::ticker`) when the window's buckets were sized for its lag
    /// (`Clock::bucket_word`).
    #[inline(always)]
    fn count_fast_success(
        &self,
        py: Python<'_>,
        window: &Window,
        counting: Counting<'_>,
        fast: FastTicket,
    ) {
        let clock = &self.hub.get().clock;
        let generation = fast.ticket().generation();
        let still_current = || {
            let word = self.storage.slots().machine_word();
            word.mode() == Mode::Closed && word.generation() == generation
        };
        // The clock read inlined too (out of line, its call and spills cost a quarter of the path).
        let counted = window.count_success_in(
            counting,
            generation,
            #[inline(always)]
            |tolerates_lag| clock.window_now_us(tolerates_lag),
            still_current,
        );
        if let Some(now_us) = counted {
            self.judge_window(py, generation, now_us);
        }
    }

    #[cold]
    fn judge_window(&self, py: Python<'_>, generation: u32, now_us: u64) {
        let config = self.config.load();
        let limits = self.limits(&config);
        // The open time in the word is in milliseconds of the same clock, read exactly (`now_us`
        // may be a published reading, up to a few ms early).
        let clock = &self.hub.get().clock;
        let transition = self
            .machine(&limits)
            .judge_window(generation, now_us, || clock.now_ms());
        self.count_opening(transition);
        self.report(py, transition);
    }

    /// Whether a call that started at `started` (see `start_timer`) was slow (by the table's
    /// `slow_call_duration` for a shared breaker, else by `config`'s).
    fn was_slow(&self, config: &Config, started: Option<u64>) -> bool {
        match (started, self.storage.slow_call_ns(config.slow_call_ns)) {
            (Some(started), Some(limit)) => {
                self.hub.get().clock.now_ns().saturating_sub(started) > limit
            }
            _ => false,
        }
    }

    pub fn py_name<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        pyrefs::name_str(py, &self.name)
    }

    /// Takes a ticket, or raises `CircuitOpenError`. (The same admission as `try_admit`, written
    /// out again so that each has the engine's admission inlined, and this one keeps the time
    /// until half-open that the engine computed: one clock reading serves both.)
    pub fn admit(&self, py: Python<'_>, config: &Config) -> PyResult<Ticket> {
        let clock = &self.hub.get().clock;
        let limits = self.limits(config);
        match self
            .machine(&limits)
            .admit_gated(&self.fleet_gate, || clock.now_ms())
        {
            Admission::Admitted { ticket, transition } => {
                self.report(py, transition);
                Ok(ticket)
            }
            Admission::Rejected { retry_after_ms } => {
                self.storage.count(Counter::Rejected);
                self.report(py, None);
                Err(self.open_error(py, retry_after_ms))
            }
        }
    }

    /// The numeric options the machine runs with (the table's for a shared breaker).
    #[inline]
    pub fn limits<'a>(&self, config: &'a Config) -> Cow<'a, Limits> {
        self.storage.limits(&config.limits)
    }

    /// Takes a ticket, or counts a rejection and returns `None`.
    #[inline]
    pub fn try_admit(&self, py: Python<'_>, config: &Config) -> Option<Ticket> {
        let clock = &self.hub.get().clock;
        let limits = self.limits(config);
        match self
            .machine(&limits)
            .admit_gated(&self.fleet_gate, || clock.now_ms())
        {
            Admission::Admitted { ticket, transition } => {
                self.report(py, transition);
                Some(ticket)
            }
            Admission::Rejected { .. } => {
                self.storage.count(Counter::Rejected);
                self.report(py, None);
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
    /// `started`: when the call started, if it was timed (`start_timer`).
    #[inline]
    pub fn record(
        &self,
        config: &Config,
        ticket: Ticket,
        outcome: Outcome,
        started: Option<u64>,
    ) -> Option<Transition> {
        self.storage.count(match outcome {
            Outcome::Success => Counter::Successes,
            Outcome::Failure => Counter::Failures,
            Outcome::Ignored => Counter::Ignored,
        });
        // Slow whatever the outcome; an ignored call does not count (neither in the window).
        let slow = outcome != Outcome::Ignored && self.was_slow(config, started);
        if slow {
            self.slow_calls.fetch_add(1, Ordering::Relaxed);
        }
        let clock = &self.hub.get().clock;
        let limits = self.limits(config);
        let transition = self.machine(&limits).record_call(
            ticket,
            outcome,
            slow,
            || clock.now_ms(),
            || clock.now_us(),
        );
        self.count_opening(transition);
        transition
    }

    #[inline]
    pub fn finish(
        &self,
        py: Python<'_>,
        config: &Config,
        ticket: Ticket,
        outcome: Outcome,
        started: Option<u64>,
    ) {
        let transition = self.record(config, ticket, outcome, started);
        if transition.is_some() || self.storage.shared().is_some() {
            self.report(py, transition);
        }
    }

    pub fn count_opening(&self, transition: Option<Transition>) {
        if matches!(transition, Some(Transition { to: Mode::Open, .. })) {
            self.storage.count_opening();
        }
    }

    pub fn set_mode(&self, py: Python<'_>, mode: Mode) {
        let config = self.config.load();
        let limits = self.limits(&config);
        let transition = self.machine(&limits).set_mode(mode);
        self.count_opening(transition);
        self.report(py, transition);
    }

    /// The mode now, turning an expired open breaker half-open (and reporting it) on first sight.
    pub fn observe(&self, py: Python<'_>) -> (crate::engine::Word, f64) {
        let config = self.config.load();
        let limits = self.limits(&config);
        let machine = self.machine(&limits);
        let clock = &self.hub.get().clock;
        let (word, transition) = machine.observe_gated(&self.fleet_gate, || clock.now_ms());
        self.report(py, transition);
        let retry_after = machine.retry_after_ms(word, || clock.now_ms()) as f64 / 1000.0;
        (word, retry_after)
    }

    /// Reports what this process's listeners have not heard yet. A local breaker reports the
    /// transition this thread made (the engine hands each to exactly one caller). A shared one
    /// reports the change from the state this process last heard of to the current one, at most
    /// once per generation, whichever process made it (docs/shared-memory.md, "Listeners").
    #[inline]
    pub fn report(&self, py: Python<'_>, transition: Option<Transition>) {
        // A shared breaker whose name was deleted runs on words of its own: reported as local.
        let live = self
            .storage
            .shared()
            .and_then(|shared| Some((shared, shared.live()?)));
        match live {
            None => {
                if transition.is_some() {
                    self.announce(py, transition)
                }
            }
            Some((shared, slot)) => {
                let word = slot.machine.machine_word();
                if shared.unseen(word.generation()) {
                    self.hear(py, shared, word);
                }
            }
        }
    }

    #[cold]
    fn hear(&self, py: Python<'_>, shared: &SharedWords, word: crate::engine::Word) {
        if let Some((from, to)) = shared.hear(word) {
            self.announce(py, Some(Transition { from, to }));
        }
    }

    /// A call admitted on the fast path of a shared breaker: reports a change made elsewhere.
    #[inline]
    fn report_fast(&self, py: Python<'_>, fast: FastTicket) {
        if let Some(shared) = self.storage.shared() {
            if shared.unseen(fast.ticket().generation()) {
                self.report(py, None);
            }
        }
    }

    /// Logs the transition on the `panelboard` logger, then calls every listener with
    /// `(name, old, new)`, on this thread, after the transition and with no lock held. A listener's
    /// exception is logged, never raised. Only transitions come here, never plain calls.
    #[cold]
    pub fn announce(&self, py: Python<'_>, transition: Option<Transition>) {
        let Some(transition) = transition else { return };
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
        log_transition(py, &args, transition);
        let listeners = self.hub.get().listeners.load_full();
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

/// One record per transition on the `panelboard` logger, `extra={"breaker", "old", "new"}`: WARNING
/// when the breaker starts rejecting calls (open, forced open), INFO otherwise. `isEnabledFor` is
/// asked first, so a silenced logger costs no record. Logging errors go to `sys.unraisablehook`.
fn log_transition(
    py: Python<'_>,
    [name, old, new]: &[Bound<'_, PyAny>; 3],
    transition: Transition,
) {
    let level: i32 = match transition.to {
        Mode::Open | Mode::ForcedOpen => 30,
        _ => 20,
    };
    let logged = (|| -> PyResult<()> {
        let logger_name = PyString::new(py, "panelboard").into_any();
        let logger = upcall::call(pyrefs::refs(py)?.get_logger.bind(py), [&logger_name])?;
        let level = level.into_pyobject(py)?.into_any();
        let enabled = upcall::call(&upcall::getattr(&logger, "isEnabledFor")?, [&level])?;
        if !upcall::truthy(&enabled)? {
            return Ok(());
        }
        let extra = PyDict::new(py);
        extra.set_item("breaker", name)?;
        extra.set_item("old", old)?;
        extra.set_item("new", new)?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("extra", extra)?;
        let args = (
            level,
            "circuit breaker %r: %s -> %s",
            name,
            pyrefs::state_value(transition.from),
            pyrefs::state_value(transition.to),
        )
            .into_pyobject(py)?;
        upcall::call_with(&upcall::getattr(&logger, "log")?, &args, Some(&kwargs))?;
        Ok(())
    })();
    if let Err(e) = logged {
        upcall::write_unraisable(py, e);
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
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| Err(panic_error(payload)))
}

/// `shield` for a closure that cannot fail otherwise: only its value crosses `catch_unwind`'s
/// buffer (a `PyResult` is several words larger than a flag or a pointer, and the hot paths pay
/// for every word copied through it).
#[inline(always)]
pub fn shield_value<T>(f: impl FnOnce() -> T) -> PyResult<T> {
    catch_unwind(AssertUnwindSafe(f)).map_err(panic_error)
}

/// The `PanicException` for a caught panic.
#[cold]
fn panic_error(payload: Box<dyn std::any::Any + Send>) -> PyErr {
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panic in panelboard".to_owned());
    PanicException::new_err((message,))
}

/// The guarded call, entirely in Rust: admit, run `invoke` (which calls the user's function),
/// classify, record. `invoke` runs with no lock held.
///
/// Admission and recording run under `shield` (a Rust panic becomes `PanicException`); the user's
/// function runs outside it and through `upcall`, which parks a thread that CPython ends there at
/// shutdown instead of letting that unwind reach a `catch_unwind`. What crosses each `shield` is
/// kept small (a flag, the ticket): everything a closure takes or returns is copied through
/// `catch_unwind`'s buffer, which on the closed fast path cost more than the checks themselves.
#[inline(always)]
pub fn guarded<'py>(
    core: &BreakerCore,
    py: Python<'py>,
    invoke: impl FnOnce() -> Returned<'py>,
) -> Returned<'py> {
    // Fast path: a closed breaker without a result predicate needs no configuration to admit a
    // call or to record its success: one atomic load now, one after the call, no write. The
    // admission is two loads (nothing that can panic). Inlined for a breaker of this process
    // only, the most common kind: a shared breaker (which has news to report) and the configured
    // path are a function of their own, so that nothing about them is kept (in registers, on the
    // stack, in the frame's prologue) across the user's call on this path.
    if let Some((slots, local, fast)) = local_fast_admission(core) {
        return guarded_fast(core, py, slots, Some(local), fast, invoke);
    }
    guarded_elsewise(core, py, invoke)
}

/// `guarded` when it takes the fast path of a breaker of this process; `None` (and `invoke` not
/// called, nothing done): the call is for `guarded_unless_local_fast`. For an entry point that
/// calls that out of line (`Breaker.call`).
#[inline(always)]
pub fn guarded_local_fast<'py>(
    core: &BreakerCore,
    py: Python<'py>,
    invoke: impl FnOnce() -> Returned<'py>,
) -> Option<Returned<'py>> {
    let (slots, local, fast) = local_fast_admission(core)?;
    Some(guarded_fast(core, py, slots, Some(local), fast, invoke))
}

/// The fast path's admission into a breaker of this process (see `guarded`).
#[inline(always)]
fn local_fast_admission(core: &BreakerCore) -> Option<(&Slots, &LocalWords, FastTicket)> {
    let (slots, local) = core.storage.fast_slots()?;
    let local = local?;
    Some((slots, local, slots.admit_fast(&core.predicate_flag)?))
}

/// `guarded` for a shared breaker's fast path, and for the configured path.
#[inline(never)]
fn guarded_elsewise<'py>(
    core: &BreakerCore,
    py: Python<'py>,
    invoke: impl FnOnce() -> Returned<'py>,
) -> Returned<'py> {
    guarded_unless_local_fast(core, py, invoke)
}

/// `guarded`, for a caller that found no fast path of a breaker of this process a moment ago
/// (`guarded_local_fast`): the rest of `guarded`, inlined. Such a breaker takes the configured
/// path without looking again (it admits a call to a breaker that closed since as well).
#[inline(always)]
pub fn guarded_unless_local_fast<'py>(
    core: &BreakerCore,
    py: Python<'py>,
    invoke: impl FnOnce() -> Returned<'py>,
) -> Returned<'py> {
    // A shared breaker's words are looked up once for both ends (one deleted meanwhile only
    // makes the success check fail, which records on the words current then); `None`: the
    // breaker's table times its calls, so they take the configured path.
    if let Some((slots, None)) = core.storage.fast_slots() {
        if let Some(fast) = slots.admit_fast(&core.predicate_flag) {
            raise(py, shield_value(|| core.report_fast(py, fast)))?;
            return guarded_fast(core, py, slots, None, fast, invoke);
        }
    }
    let (config, ticket, started) = raise(
        py,
        shield(|| {
            let config = core.config.load();
            let ticket = core.admit(py, &config)?;
            let started = core.start_timer(&config);
            Ok((config, ticket, started))
        }),
    )?;
    let result = invoke().map_err(|raised| raised.fetch(py));
    raise(
        py,
        shield(move || settle(core, py, &config, ticket, started, false, result)),
    )
}

/// The call and the record of its success on the fast path, for a call admitted with `fast`. It
/// is a branch of its own, with its own call of `invoke`, so that nothing about the configured
/// path is kept across the user's call.
#[inline(always)]
fn guarded_fast<'py>(
    core: &BreakerCore,
    py: Python<'py>,
    slots: &Slots,
    local: Option<&LocalWords>,
    fast: FastTicket,
    invoke: impl FnOnce() -> Returned<'py>,
) -> Returned<'py> {
    match invoke() {
        Ok(value) => {
            // A local breaker's success: its checks are loads, and its count, in the common case
            // (the thread that counts in the inline block), one relaxed add: nothing that can
            // panic, so no `shield` (whose closure, passed by pointer, cost a dozen instructions).
            if let Some(words) = local {
                if is_coroutine(&value) || !slots.record_fast_success(fast) {
                    return settle_fast_admitted(core, py, fast, Ok(value));
                }
                let me = thread::key(py);
                if !words.counters.add_at_home(Counter::Successes, me) {
                    count_apart(py, words, me)?;
                }
                if let Some(window) = core.window.get() {
                    count_in_window(core, py, window, fast, me)?;
                }
                return Ok(value);
            }
            settle_fast_success(core, py, slots, local, fast, value)
        }
        // The exception is taken at once, before anything else can call into Python.
        Err(raised) => settle_fast_admitted(core, py, fast, Err(raised.fetch(py))),
    }
}

/// Records the success of a call admitted on the fast path (`settle_fast`, or `settle` when that
/// could not).
#[inline(always)]
fn settle_fast_success<'py>(
    core: &BreakerCore,
    py: Python<'py>,
    slots: &Slots,
    local: Option<&LocalWords>,
    fast: FastTicket,
    value: Bound<'py, PyAny>,
) -> Returned<'py> {
    if raise(
        py,
        shield_value(|| core.settle_fast(py, slots, local, fast, &value)),
    )? {
        return Ok(value);
    }
    settle_fast_admitted(core, py, fast, Ok(value))
}

/// Counts a local breaker's success in the counters of a thread other than their first one.
/// Out of line: it may allocate the stripes.
#[cold]
#[inline(never)]
fn count_apart(py: Python<'_>, words: &LocalWords, me: usize) -> Result<(), Raised> {
    raise(
        py,
        shield_value(|| words.counters.add_as(Counter::Successes, me)),
    )
}

/// Counts a local breaker's success in its window. Out of line, so that the fast path keeps
/// nothing on its stack for it (the exception of a panic is set here: only a flag comes back).
#[inline(never)]
fn count_in_window(
    core: &BreakerCore,
    py: Python<'_>,
    window: &LocalWindow,
    fast: FastTicket,
    me: usize,
) -> Result<(), Raised> {
    raise(
        py,
        shield_value(|| core.count_fast_success(py, &window.words, window.counting(py, me), fast)),
    )
}

/// Records the outcome of a call admitted on the fast path that `settle_fast` could not settle
/// (a failure, a coroutine, a breaker that changed or had failures): with no predicate to apply,
/// since none was set when it began. Out of line: the fast path only calls it.
#[cold]
#[inline(never)]
fn settle_fast_admitted<'py>(
    core: &BreakerCore,
    py: Python<'py>,
    fast: FastTicket,
    result: PyResult<Bound<'py, PyAny>>,
) -> Returned<'py> {
    let settled = shield(move || {
        settle(
            core,
            py,
            &core.config.load(),
            fast.ticket(),
            None,
            true,
            result,
        )
    });
    raise(py, settled)
}

impl BreakerCore {
    /// Settles a call admitted on the fast path if it succeeded and the breaker is healthy and
    /// unchanged: such a success has nothing to record but its count (and, with a rate rule, its
    /// place in the window). `false`: nothing was recorded, `settle` records it.
    #[inline(always)]
    fn settle_fast(
        &self,
        py: Python<'_>,
        slots: &Slots,
        local: Option<&LocalWords>,
        fast: FastTicket,
        value: &Bound<'_, PyAny>,
    ) -> bool {
        if is_coroutine(value) || !slots.record_fast_success(fast) {
            return false;
        }
        match local {
            // The thread is told by its thread state, not a Rust thread-local (see `ffi::thread`).
            Some(words) => {
                let me = thread::key(py);
                words.counters.add_as(Counter::Successes, me);
                if let Some(window) = self.window.get() {
                    self.count_fast_success(py, &window.words, window.counting(py, me), fast);
                }
            }
            None => {
                self.storage.count(Counter::Successes);
                if let Some(window) = self.window() {
                    self.count_fast_success(py, window, Counting::Shared(None), fast);
                }
            }
        }
        true
    }
}

/// Classifies and records the outcome of a call admitted with `ticket` (`fast`: on the fast path,
/// with no predicate to apply), and returns what the caller gets.
fn settle<'py>(
    core: &BreakerCore,
    py: Python<'py>,
    config: &Config,
    ticket: Ticket,
    started: Option<u64>,
    fast: bool,
    result: PyResult<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    // A sync call that returned a coroutine did not run the work yet: it cannot be guarded.
    if matches!(&result, Ok(value) if is_coroutine(value)) {
        core.finish(py, config, ticket, Outcome::Ignored, started);
        return Err(refuse_coroutine(result?));
    }
    match result {
        Ok(value) => {
            let (outcome, predicate_error) = if fast {
                (Outcome::Success, None)
            } else {
                config.classify_result(&value)
            };
            core.finish(py, config, ticket, outcome, started);
            predicate_error.map_or(Ok(value), Err)
        }
        Err(err) => {
            let outcome = config.classify_error(py, &err);
            core.finish(py, config, ticket, outcome, started);
            Err(err)
        }
    }
}

/// The error for a sync call whose function returned a coroutine. The coroutine is closed (it has
/// not started, so no code of it runs), which also spares the "never awaited" warning.
#[cold]
fn refuse_coroutine(coroutine: Bound<'_, PyAny>) -> PyErr {
    let described =
        upcall::repr(&coroutine).map_or_else(|_| "a coroutine".to_owned(), |r| r.to_string());
    if let Err(err) =
        upcall::getattr(&coroutine, "close").and_then(|close| upcall::call(&close, []))
    {
        return err;
    }
    pyo3::exceptions::PyTypeError::new_err(format!(
        "the function called through the breaker returned {described}, which a sync call cannot \
         guard: decorate the async def function itself, or use `await breaker.acall(fn)`"
    ))
}

/// A call admitted for a guarded coroutine (`awaitable`), kept across its suspensions. It borrows
/// no configuration (a guard must not be held that long): the configuration is loaded again when
/// the outcome is recorded, as a `Permit` does.
#[derive(Clone, Copy)]
pub enum HeldTicket {
    /// Admitted on the closed fast path, as `guarded` admits a call (no predicate, no timer).
    Fast(FastTicket),
    /// Admitted with the configuration: the ticket, and when the call started if it is timed.
    Configured(Ticket, Option<u64>),
}

impl HeldTicket {
    fn parts(self) -> (Ticket, Option<u64>) {
        match self {
            HeldTicket::Fast(fast) => (fast.ticket(), None),
            HeldTicket::Configured(ticket, started) => (ticket, started),
        }
    }
}

impl BreakerCore {
    /// Admits a call whose outcome comes later (a guarded coroutine, when it is first awaited),
    /// as `guarded` admits a sync call; raises `CircuitOpenError` when rejected.
    #[inline]
    pub fn admit_held(&self, py: Python<'_>) -> PyResult<HeldTicket> {
        if let Some(fast) = self.storage.slots().admit_fast(&self.predicate_flag) {
            self.report_fast(py, fast);
            return Ok(HeldTicket::Fast(fast));
        }
        let config = self.config.load();
        let ticket = self.admit(py, &config)?;
        Ok(HeldTicket::Configured(ticket, self.start_timer(&config)))
    }

    /// Records a held call that returned `value`: classified by the `success` predicate (a call
    /// admitted on the fast path had none), whose exception, if it raised, is handed back.
    #[inline]
    pub fn settle_held_result(
        &self,
        py: Python<'_>,
        held: HeldTicket,
        value: &Bound<'_, PyAny>,
    ) -> Option<PyErr> {
        match held {
            HeldTicket::Fast(fast) => {
                if self.storage.slots().record_fast_success(fast) {
                    // Healthy and unchanged, as in `guarded`: only the count (and the window).
                    self.storage.count(Counter::Successes);
                    if let Some(window) = self.window() {
                        self.count_fast_success(py, window, Counting::Shared(None), fast);
                    }
                } else {
                    let config = self.config.load();
                    self.finish(py, &config, fast.ticket(), Outcome::Success, None);
                }
                None
            }
            HeldTicket::Configured(ticket, started) => {
                let config = self.config.load();
                let (outcome, predicate_error) = config.classify_result(value);
                self.finish(py, &config, ticket, outcome, started);
                predicate_error
            }
        }
    }

    /// Records a held call that raised `err`, classified by `failure_on` and `ignore`.
    pub fn settle_held_error(&self, py: Python<'_>, held: HeldTicket, err: &PyErr) {
        let (ticket, started) = held.parts();
        let config = self.config.load();
        let outcome = config.classify_error(py, err);
        self.finish(py, &config, ticket, outcome, started);
    }

    /// Records a held call as ignored (a function given to `acall` that returned no awaitable).
    pub fn settle_held_ignored(&self, py: Python<'_>, held: HeldTicket) {
        let (ticket, started) = held.parts();
        self.finish(py, &self.config.load(), ticket, Outcome::Ignored, started);
    }

    /// Records a held call that will never finish (its coroutine was collected unfinished) as
    /// ignored, without Python: that releases a half-open slot and never moves the breaker, so no
    /// listener has to run (as for a dropped `Permit`).
    pub fn abandon_held(&self, held: HeldTicket) {
        let (ticket, _) = held.parts();
        self.record(&self.config.load(), ticket, Outcome::Ignored, None);
    }
}
