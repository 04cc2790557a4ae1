//! Breaker configuration: validation of user input and the classification of outcomes.
//!
//! Every option is validated before anything is created or changed, and each error names its
//! argument.

use super::ffi::refs::ReleasedAttached;
use super::ffi::upcall;
use crate::engine::{
    Limits, OpenTime, Outcome, RatePolicy, BUCKETS, MAX_DURATION_MS, MAX_FAILURE_THRESHOLD,
    MAX_PROBE_COUNT, MIN_WINDOW_US, NO_FAILURE_THRESHOLD,
};
use crate::shm::options::{OptionsPatch, TableOptions, DEFAULT_PROBE_TIMEOUT_MS};
use pyo3::exceptions::{PyBaseException, PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyString, PyTuple, PyType};
use pyo3::{PyTraverseError, PyVisit};

pub struct PolicyObjects {
    /// Result predicate; `None` means every returned value is a success.
    pub success: Option<Py<PyAny>>,
    /// Exception type or tuple of types counted as failures; `None` for `Exception` (the default),
    /// so that a configuration with the default options holds no Python object and can be shared
    /// by every breaker configured alike (see `Config::is_shareable`).
    pub failure_on: Option<Py<PyAny>>,
    /// Exception types ignored even when they match `failure_on`; `None` when there are none.
    pub ignore: Option<Py<PyAny>>,
}

/// Everything a breaker needs to run and classify a call. Immutable; `configure` swaps in a new one.
pub struct Config {
    pub limits: Limits,
    pub reset_timeout: f64,
    pub probe_timeout: Option<f64>,
    /// The trip-policy options as given (`limits.rate` and `limits.open_time` are derived from them).
    pub policy: PolicyOptions,
    /// `slow_call_duration` in nanoseconds: calls are timed only when it is set.
    pub slow_call_ns: Option<u64>,
    /// The Python objects, released at once when the configuration is dropped (which can happen
    /// inside the fast entry points: see `ReleasedAttached`).
    pub objects: ReleasedAttached<PolicyObjects>,
    /// `failure_on=Exception` and no `ignore`: classification is one type check.
    default_exceptions: bool,
    /// One more than the configuration this one was made from: a breaker's configurations have
    /// increasing versions, in the order they replaced each other.
    pub version: u64,
}

impl Config {
    pub fn defaults() -> Config {
        let limits = Limits::default();
        Config {
            limits,
            reset_timeout: limits.reset_timeout_ms as f64 / 1000.0,
            probe_timeout: None,
            policy: PolicyOptions::default(),
            slow_call_ns: None,
            objects: ReleasedAttached::new(PolicyObjects {
                success: None,
                failure_on: None,
                ignore: None,
            }),
            default_exceptions: true,
            version: 0,
        }
    }

    /// The numeric options, as a shared slot stores them when this configuration creates a name.
    pub fn table_options(&self) -> TableOptions {
        TableOptions {
            failure_threshold: self.limits.failure_threshold,
            reset_timeout_ms: self.limits.reset_timeout_ms,
            half_open_max_calls: self.limits.half_open_max_calls,
            success_threshold: self.limits.success_threshold,
            probe_timeout_ms: self
                .limits
                .probe_timeout_ms
                .unwrap_or(DEFAULT_PROBE_TIMEOUT_MS),
            slow_call_ns: self.slow_call_ns,
            failure_rate: self.policy.failure_rate,
            slow_call_rate: self.policy.slow_call_rate,
            window_us: self.policy.window.1,
            min_calls: self.policy.min_calls,
            backoff: self.policy.backoff,
            max_reset_timeout_ms: self.policy.max_reset_timeout.map(|(_, ms)| ms),
            jitter: self.policy.jitter,
        }
    }

    /// Whether this configuration holds no Python object (no `success`, `ignore`, nor a
    /// `failure_on` other than `Exception`). Only such a configuration is ever shared between
    /// breakers (and the registry): it reports nothing to the garbage collector, so sharing it
    /// cannot make two owners report one reference (see `core` on ownership). A configuration
    /// with objects stays each breaker's own.
    pub fn is_shareable(&self) -> bool {
        self.objects.success.is_none()
            && self.objects.failure_on.is_none()
            && self.objects.ignore.is_none()
    }

    /// Whether a breaker made with `other` would behave exactly as one made with `self` (the
    /// version aside, which only orders one breaker's configurations): for sharing.
    pub fn same_options(&self, other: &Config) -> bool {
        self.is_shareable()
            && other.is_shareable()
            && self.limits == other.limits
            && self.reset_timeout.to_bits() == other.reset_timeout.to_bits()
            && self.probe_timeout.map(f64::to_bits) == other.probe_timeout.map(f64::to_bits)
            && self.policy == other.policy
            && self.slow_call_ns == other.slow_call_ns
            && self.default_exceptions == other.default_exceptions
    }

    /// Whether a call needs this configuration to be recorded: a `success` predicate to classify
    /// it, or `slow_call_duration` to time it. What a breaker caches for its closed fast path
    /// (`PredicateFlag`, with `version`), which only the breakers with neither take (a rate rule
    /// alone keeps the fast path: its successes are counted in the breaker's window there).
    pub fn has_predicate(&self) -> bool {
        self.objects.success.is_some() || self.slow_call_ns.is_some()
    }

    /// Reports the Python objects this configuration holds to the garbage collector.
    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.objects.success)?;
        visit.call(&self.objects.failure_on)?;
        visit.call(&self.objects.ignore)
    }

    /// Classifies an exception raised by the guarded function. A `BaseException` that is not an
    /// `Exception` (KeyboardInterrupt, SystemExit, CancelledError) is always ignored.
    pub fn classify_error(&self, py: Python<'_>, err: &PyErr) -> Outcome {
        self.classify_exception(err.value(py).as_any())
    }

    /// `classify_error` for the exception object itself (a `with` block's exit is handed one).
    pub fn classify_exception(&self, value: &Bound<'_, PyAny>) -> Outcome {
        if !value.is_instance_of::<PyException>() {
            return Outcome::Ignored;
        }
        if self.default_exceptions {
            return Outcome::Failure;
        }
        let py = value.py();
        if let Some(ignore) = &self.objects.ignore {
            if upcall::is_instance(value, ignore.bind(py)).unwrap_or(false) {
                return Outcome::Ignored;
            }
        }
        let counted = match &self.objects.failure_on {
            Some(failure_on) => upcall::is_instance(value, failure_on.bind(py)).unwrap_or(false),
            None => true, // `Exception`, checked above
        };
        if counted {
            Outcome::Failure
        } else {
            Outcome::Ignored
        }
    }

    /// Classifies a returned value with the `success` predicate. If the predicate raises, the call
    /// is a failure and the predicate's exception is handed back to propagate.
    pub fn classify_result(&self, result: &Bound<'_, PyAny>) -> (Outcome, Option<PyErr>) {
        let Some(predicate) = &self.objects.success else {
            return (Outcome::Success, None);
        };
        match upcall::call(predicate.bind(result.py()), [result]).and_then(|v| upcall::truthy(&v)) {
            Ok(true) => (Outcome::Success, None),
            Ok(false) => (Outcome::Failure, None),
            Err(err) => (Outcome::Failure, Some(err)),
        }
    }

    /// This configuration with `patch` applied on top, or a `ValueError` naming the option when the
    /// options do not fit together.
    pub fn with(&self, py: Python<'_>, patch: &Patch) -> PyResult<Config> {
        let mut limits = self.limits;
        let pick = |new: Option<u64>, old: u64| new.unwrap_or(old);
        if let Some(threshold) = patch.failure_threshold {
            limits.failure_threshold = threshold.unwrap_or(NO_FAILURE_THRESHOLD);
        }
        limits.half_open_max_calls = pick(patch.half_open_max_calls, limits.half_open_max_calls);
        limits.success_threshold = pick(patch.success_threshold, limits.success_threshold);
        let mut reset_timeout = self.reset_timeout;
        if let Some((seconds, ms)) = patch.reset_timeout {
            reset_timeout = seconds;
            limits.reset_timeout_ms = ms;
        }
        let mut probe_timeout = self.probe_timeout;
        if let Some(value) = patch.probe_timeout {
            probe_timeout = value.map(|(seconds, _)| seconds);
            limits.probe_timeout_ms = value.map(|(_, ms)| ms);
        }
        let policy = self.policy.with(patch);
        policy.check(limits, reset_timeout)?;
        limits.rate = policy.rate();
        limits.open_time = policy.open_time();
        let clone = |o: &Option<Py<PyAny>>| o.as_ref().map(|p| p.clone_ref(py));
        let success = match &patch.success {
            Some(new) => clone(new),
            None => clone(&self.objects.success),
        };
        let failure_on = match &patch.failure_on {
            // `Exception` itself is the default: kept as `None` (no object held).
            Some(new) if new.bind(py).is(py.get_type::<PyException>().as_any()) => None,
            Some(new) => Some(new.clone_ref(py)),
            None => clone(&self.objects.failure_on),
        };
        let ignore = match &patch.ignore {
            Some(new) => clone(new),
            None => clone(&self.objects.ignore),
        };
        let default_exceptions = ignore.is_none() && failure_on.is_none();
        Ok(Config {
            limits,
            reset_timeout,
            probe_timeout,
            slow_call_ns: policy.slow_call_duration.map(|(_, ns)| ns),
            policy,
            objects: ReleasedAttached::new(PolicyObjects {
                success,
                failure_on,
                ignore,
            }),
            default_exceptions,
            version: self.version + 1,
        })
    }
}

/// The trip-policy options of a configuration, as given (seconds and ratios), with the whole
/// units the engine uses next to the seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PolicyOptions {
    pub failure_rate: Option<f64>,
    /// Seconds and nanoseconds.
    pub slow_call_duration: Option<(f64, u64)>,
    pub slow_call_rate: Option<f64>,
    /// Seconds and microseconds.
    pub window: (f64, u64),
    pub min_calls: u64,
    pub backoff: f64,
    /// Seconds and milliseconds.
    pub max_reset_timeout: Option<(f64, u64)>,
    pub jitter: f64,
}

impl Default for PolicyOptions {
    fn default() -> Self {
        PolicyOptions {
            failure_rate: None,
            slow_call_duration: None,
            slow_call_rate: None,
            window: (10.0, 10_000_000),
            min_calls: 10,
            backoff: 1.0,
            max_reset_timeout: None,
            jitter: 0.0,
        }
    }
}

impl PolicyOptions {
    fn with(&self, patch: &Patch) -> PolicyOptions {
        PolicyOptions {
            failure_rate: patch.failure_rate.unwrap_or(self.failure_rate),
            slow_call_duration: patch.slow_call_duration.unwrap_or(self.slow_call_duration),
            slow_call_rate: patch.slow_call_rate.unwrap_or(self.slow_call_rate),
            window: patch.window.unwrap_or(self.window),
            min_calls: patch.min_calls.unwrap_or(self.min_calls),
            backoff: patch.backoff.unwrap_or(self.backoff),
            max_reset_timeout: patch.max_reset_timeout.unwrap_or(self.max_reset_timeout),
            jitter: patch.jitter.unwrap_or(self.jitter),
        }
    }

    /// The rules that only make sense together.
    fn check(&self, limits: Limits, reset_timeout: f64) -> PyResult<()> {
        if self.slow_call_rate.is_some() && self.slow_call_duration.is_none() {
            return Err(PyValueError::new_err(
                "slow_call_rate needs slow_call_duration (the time above which a call is slow)",
            ));
        }
        if limits.failure_threshold == NO_FAILURE_THRESHOLD
            && self.failure_rate.is_none()
            && self.slow_call_rate.is_none()
        {
            return Err(PyValueError::new_err(
                "failure_threshold=None turns the consecutive-failure rule off, so failure_rate or \
                 slow_call_rate must be set: a breaker needs at least one trip rule",
            ));
        }
        if let Some((cap, cap_ms)) = self.max_reset_timeout {
            if cap_ms < limits.reset_timeout_ms {
                return Err(PyValueError::new_err(format!(
                    "max_reset_timeout must be >= reset_timeout ({reset_timeout}), got {cap}"
                )));
            }
        }
        Ok(())
    }

    fn rate(&self) -> Option<RatePolicy> {
        (self.failure_rate.is_some() || self.slow_call_rate.is_some()).then_some(RatePolicy {
            window_us: self.window.1,
            min_calls: self.min_calls,
            failure_rate: self.failure_rate,
            slow_call_rate: self.slow_call_rate,
        })
    }

    fn open_time(&self) -> OpenTime {
        OpenTime {
            backoff: self.backoff,
            max_ms: self.max_reset_timeout.map_or(MAX_DURATION_MS, |(_, ms)| ms),
            jitter: self.jitter,
        }
    }
}

/// Validated options, each `None` when not given.
#[derive(Default)]
pub struct Patch {
    /// `Some(None)`: `failure_threshold=None`, the consecutive rule off.
    failure_threshold: Option<Option<u64>>,
    half_open_max_calls: Option<u64>,
    success_threshold: Option<u64>,
    reset_timeout: Option<(f64, u64)>,
    probe_timeout: Option<Option<(f64, u64)>>,
    success: Option<Option<Py<PyAny>>>,
    failure_on: Option<Py<PyAny>>,
    ignore: Option<Option<Py<PyAny>>>,
    failure_rate: Option<Option<f64>>,
    slow_call_duration: Option<Option<(f64, u64)>>,
    slow_call_rate: Option<Option<f64>>,
    window: Option<(f64, u64)>,
    min_calls: Option<u64>,
    backoff: Option<f64>,
    max_reset_timeout: Option<Option<(f64, u64)>>,
    jitter: Option<f64>,
}

pub const OPTION_NAMES: &str = "failure_threshold, reset_timeout, half_open_max_calls, success, \
success_threshold, failure_on, ignore, probe_timeout, failure_rate, slow_call_duration, \
slow_call_rate, window, min_calls, backoff, max_reset_timeout, jitter";

/// The `probe_timeout` a shared registry's breakers get unless told otherwise: a half-open permit
/// held by a process that died is reclaimed after this long (docs/shared-memory.md).
pub const SHARED_PROBE_TIMEOUT_S: f64 = 60.0;

impl Patch {
    /// The defaults a shared registry adds under its own: a finite `probe_timeout`.
    pub fn shared_defaults() -> Patch {
        Patch {
            probe_timeout: Some(Some((
                SHARED_PROBE_TIMEOUT_S,
                (SHARED_PROBE_TIMEOUT_S * 1000.0) as u64,
            ))),
            ..Patch::default()
        }
    }

    /// A shared breaker must keep a finite `probe_timeout` (a dead process's permit would never
    /// come back otherwise): `probe_timeout=None` is refused.
    pub fn check_shared(&self) -> PyResult<()> {
        if matches!(self.probe_timeout, Some(None)) {
            return Err(PyValueError::new_err(
                "probe_timeout must be a number of seconds on a shared registry, not None: a \
                 half-open permit held by a process that dies is reclaimed after probe_timeout",
            ));
        }
        Ok(())
    }

    /// The numeric options given, as a shared slot stores them (`configure` on a shared registry
    /// changes them for every process; the options not given are left as they are).
    pub fn table_patch(&self) -> OptionsPatch {
        OptionsPatch {
            failure_threshold: self
                .failure_threshold
                .map(|v| v.unwrap_or(NO_FAILURE_THRESHOLD)),
            reset_timeout_ms: self.reset_timeout.map(|(_, ms)| ms),
            half_open_max_calls: self.half_open_max_calls,
            success_threshold: self.success_threshold,
            // `None` is refused on a shared registry (`check_shared`).
            probe_timeout_ms: self.probe_timeout.flatten().map(|(_, ms)| ms),
            slow_call_ns: self.slow_call_duration.map(|v| v.map(|(_, ns)| ns)),
            failure_rate: self.failure_rate,
            slow_call_rate: self.slow_call_rate,
            window_us: self.window.map(|(_, us)| us),
            min_calls: self.min_calls,
            backoff: self.backoff,
            max_reset_timeout_ms: self.max_reset_timeout.map(|v| v.map(|(_, ms)| ms)),
            jitter: self.jitter,
        }
    }

    /// Every numeric option of a shared slot, as a patch: applied over a process's configuration,
    /// it makes that configuration follow the table's.
    pub fn from_table(options: &TableOptions) -> Patch {
        let seconds = |units: u64, per_second: f64| (units as f64 / per_second, units);
        Patch {
            failure_threshold: Some(
                (options.failure_threshold != NO_FAILURE_THRESHOLD)
                    .then_some(options.failure_threshold),
            ),
            half_open_max_calls: Some(options.half_open_max_calls),
            success_threshold: Some(options.success_threshold),
            reset_timeout: Some(seconds(options.reset_timeout_ms, 1e3)),
            probe_timeout: Some(Some(seconds(options.probe_timeout_ms, 1e3))),
            failure_rate: Some(options.failure_rate),
            slow_call_duration: Some(options.slow_call_ns.map(|ns| seconds(ns, 1e9))),
            slow_call_rate: Some(options.slow_call_rate),
            window: Some(seconds(options.window_us, 1e6)),
            min_calls: Some(options.min_calls),
            backoff: Some(options.backoff),
            max_reset_timeout: Some(options.max_reset_timeout_ms.map(|ms| seconds(ms, 1e3))),
            jitter: Some(options.jitter),
            ..Patch::default()
        }
    }

    /// The `window` given, in microseconds.
    pub fn window_us(&self) -> Option<u64> {
        self.window.map(|(_, us)| us)
    }

    pub fn is_empty(&self) -> bool {
        self.failure_threshold.is_none()
            && self.half_open_max_calls.is_none()
            && self.success_threshold.is_none()
            && self.reset_timeout.is_none()
            && self.probe_timeout.is_none()
            && self.success.is_none()
            && self.failure_on.is_none()
            && self.ignore.is_none()
            && self.failure_rate.is_none()
            && self.slow_call_duration.is_none()
            && self.slow_call_rate.is_none()
            && self.window.is_none()
            && self.min_calls.is_none()
            && self.backoff.is_none()
            && self.max_reset_timeout.is_none()
            && self.jitter.is_none()
    }

    /// Parses and validates keyword options; unknown names are a `TypeError`.
    pub fn parse(options: Option<&Bound<'_, PyDict>>) -> PyResult<Patch> {
        let mut patch = Patch::default();
        let Some(options) = options else {
            return Ok(patch);
        };
        for (key, value) in options.iter() {
            // A keyword that is not valid UTF-8 (a lone surrogate) is just another unknown one.
            let name = key.cast::<PyString>()?.to_str().unwrap_or("");
            match name {
                "failure_threshold" => {
                    patch.failure_threshold = Some(if value.is_none() {
                        None
                    } else {
                        Some(count(&value, "failure_threshold", MAX_FAILURE_THRESHOLD)?)
                    })
                }
                "failure_rate" => {
                    patch.failure_rate = Some(optional(&value, "failure_rate", ratio)?)
                }
                "slow_call_rate" => {
                    patch.slow_call_rate = Some(optional(&value, "slow_call_rate", ratio)?)
                }
                "slow_call_duration" => {
                    patch.slow_call_duration =
                        Some(optional(&value, "slow_call_duration", |v, arg| {
                            let seconds = finite_seconds(v, arg, 0.0)?;
                            let ns = (seconds * 1e9).round();
                            if ns > (MAX_DURATION_MS as f64) * 1e6 {
                                return Err(PyValueError::new_err(format!(
                                    "{arg} must be at most {} seconds",
                                    MAX_DURATION_MS / 1000
                                )));
                            }
                            Ok((seconds, ns as u64))
                        })?)
                }
                "window" => {
                    let seconds = finite_seconds(&value, "window", 0.0)?;
                    let us = (seconds * 1e6).round();
                    // Nine buckets of whole microseconds keep within a tenth of the window from
                    // 0.1 ms up (`RatePolicy::bucket_us`).
                    if us < MIN_WINDOW_US as f64 {
                        let narrowest = RatePolicy {
                            window_us: MIN_WINDOW_US,
                            min_calls: 1,
                            failure_rate: None,
                            slow_call_rate: None,
                        };
                        return Err(PyValueError::new_err(format!(
                            "window must be > 0 and at least {} seconds ({BUCKETS} buckets of \
                             {} µs), got {seconds}",
                            MIN_WINDOW_US as f64 / 1e6,
                            narrowest.bucket_us()
                        )));
                    }
                    if us > MAX_DURATION_MS as f64 * 1000.0 {
                        return Err(PyValueError::new_err(format!(
                            "window must be at most {} seconds",
                            MAX_DURATION_MS / 1000
                        )));
                    }
                    patch.window = Some((seconds, us as u64));
                }
                "min_calls" => {
                    patch.min_calls = Some(count(&value, "min_calls", MAX_FAILURE_THRESHOLD)?)
                }
                "backoff" => {
                    let factor = finite_number(&value, "backoff")?;
                    if factor < 1.0 {
                        return Err(PyValueError::new_err(format!(
                            "backoff must be >= 1 (1: no backoff), got {factor}"
                        )));
                    }
                    patch.backoff = Some(factor);
                }
                "max_reset_timeout" => {
                    patch.max_reset_timeout =
                        Some(optional(&value, "max_reset_timeout", |v, arg| {
                            duration(v, arg, true)
                        })?)
                }
                "jitter" => {
                    let fraction = finite_number(&value, "jitter")?;
                    if !(0.0..1.0).contains(&fraction) {
                        return Err(PyValueError::new_err(format!(
                            "jitter must be in [0, 1), got {fraction}"
                        )));
                    }
                    patch.jitter = Some(fraction);
                }
                "half_open_max_calls" => {
                    patch.half_open_max_calls =
                        Some(count(&value, "half_open_max_calls", MAX_PROBE_COUNT)?)
                }
                "success_threshold" => {
                    patch.success_threshold =
                        Some(count(&value, "success_threshold", MAX_PROBE_COUNT)?)
                }
                "reset_timeout" => {
                    patch.reset_timeout = Some(duration(&value, "reset_timeout", true)?)
                }
                "probe_timeout" => {
                    patch.probe_timeout = Some(if value.is_none() {
                        None
                    } else {
                        Some(duration(&value, "probe_timeout", false)?)
                    })
                }
                "success" => {
                    if !value.is_none() && !value.is_callable() {
                        return Err(PyTypeError::new_err(format!(
                            "success must be a callable or None, not {}",
                            type_name(&value)
                        )));
                    }
                    patch.success = Some((!value.is_none()).then(|| value.unbind()));
                }
                "failure_on" => {
                    let types = exception_types(&value, "failure_on")?;
                    reject_base_exceptions(&types)?;
                    patch.failure_on = Some(types.unbind())
                }
                "ignore" => {
                    let types = exception_types(&value, "ignore")?;
                    let empty = types.cast::<PyTuple>().is_ok_and(|t| t.is_empty());
                    patch.ignore = Some((!empty).then(|| types.unbind()));
                }
                _ => {
                    return Err(PyTypeError::new_err(format!(
                        "unexpected keyword argument {} (options are: {OPTION_NAMES})",
                        upcall::repr(&key)?
                    )))
                }
            }
        }
        Ok(patch)
    }
}

pub fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map_or_else(|_| "object".to_owned(), |n| n.to_string())
}

/// An `int` (not a `bool`) between 1 and `max`.
fn count(value: &Bound<'_, PyAny>, arg: &str, max: u64) -> PyResult<u64> {
    if value.is_instance_of::<PyBool>() || !value.is_instance_of::<PyInt>() {
        return Err(PyTypeError::new_err(format!(
            "{arg} must be an int, not {}",
            type_name(value)
        )));
    }
    match value.extract::<i128>() {
        Ok(n) if n >= 1 && n <= i128::from(max) => Ok(n as u64),
        _ => Err(PyValueError::new_err(format!(
            "{arg} must be between 1 and {max}, got {}",
            upcall::repr(value).map_or_else(|_| "?".to_owned(), |r| r.to_string())
        ))),
    }
}

/// `None`, or what `parse` makes of the value.
fn optional<'py, T>(
    value: &Bound<'py, PyAny>,
    arg: &str,
    parse: impl FnOnce(&Bound<'py, PyAny>, &str) -> PyResult<T>,
) -> PyResult<Option<T>> {
    if value.is_none() {
        Ok(None)
    } else {
        parse(value, arg).map(Some)
    }
}

/// A finite `int` or `float` (not a `bool`).
fn finite_number(value: &Bound<'_, PyAny>, arg: &str) -> PyResult<f64> {
    if value.is_instance_of::<PyBool>()
        || !(value.is_instance_of::<PyFloat>() || value.is_instance_of::<PyInt>())
    {
        return Err(PyTypeError::new_err(format!(
            "{arg} must be a number (int or float), not {}",
            type_name(value)
        )));
    }
    let number: f64 = value
        .extract()
        .map_err(|_| PyValueError::new_err(format!("{arg} is too large")))?;
    if !number.is_finite() {
        return Err(PyValueError::new_err(format!(
            "{arg} must be finite, got {number}"
        )));
    }
    Ok(number)
}

/// A ratio in (0, 1].
fn ratio(value: &Bound<'_, PyAny>, arg: &str) -> PyResult<f64> {
    let number = finite_number(value, arg)?;
    if number <= 0.0 || number > 1.0 {
        return Err(PyValueError::new_err(format!(
            "{arg} must be a ratio in (0, 1], got {number}"
        )));
    }
    Ok(number)
}

/// A finite `int` or `float` (not a `bool`) of seconds, at least `min`.
pub fn finite_seconds(value: &Bound<'_, PyAny>, arg: &str, min: f64) -> PyResult<f64> {
    if value.is_instance_of::<PyBool>()
        || !(value.is_instance_of::<PyFloat>() || value.is_instance_of::<PyInt>())
    {
        return Err(PyTypeError::new_err(format!(
            "{arg} must be a number of seconds (int or float), not {}",
            type_name(value)
        )));
    }
    let seconds: f64 = value
        .extract()
        .map_err(|_| PyValueError::new_err(format!("{arg} is too large")))?;
    if !seconds.is_finite() {
        return Err(PyValueError::new_err(format!(
            "{arg} must be finite, got {seconds}"
        )));
    }
    if seconds < min {
        return Err(PyValueError::new_err(format!(
            "{arg} must be >= {min}, got {seconds}"
        )));
    }
    Ok(seconds)
}

/// Seconds and the whole milliseconds the engine uses (rounded to nearest). `reset_timeout` may be
/// 0; `probe_timeout` must be positive.
///
/// A positive duration is at least 1 ms: rounded to 0 it would mean "at once", and a
/// `probe_timeout` of 0 ms lets every caller reclaim the half-open slot (unlimited probes).
fn duration(value: &Bound<'_, PyAny>, arg: &str, zero_ok: bool) -> PyResult<(f64, u64)> {
    let seconds = finite_seconds(value, arg, 0.0)?;
    if !zero_ok && seconds == 0.0 {
        return Err(PyValueError::new_err(format!("{arg} must be > 0")));
    }
    let ms = (seconds * 1000.0)
        .round()
        .max(if seconds > 0.0 { 1.0 } else { 0.0 });
    if ms > MAX_DURATION_MS as f64 {
        return Err(PyValueError::new_err(format!(
            "{arg} must be at most {} seconds",
            MAX_DURATION_MS / 1000
        )));
    }
    Ok((seconds, ms as u64))
}

/// `failure_on` naming a `BaseException` that is not an `Exception` would silently do nothing
/// (those are always ignored), so it is an error.
fn reject_base_exceptions(types: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = types.py();
    let exception = py.get_type::<PyException>();
    let items: Vec<Bound<'_, PyAny>> = match types.cast::<PyTuple>() {
        Ok(tuple) => tuple.iter().collect(),
        Err(_) => vec![types.clone()],
    };
    for item in items {
        if let Ok(t) = item.cast::<PyType>() {
            // BaseException itself is fine (it covers Exception); KeyboardInterrupt is not.
            if !upcall::is_subclass(t, &exception)? && !upcall::is_subclass(&exception, t)? {
                return Err(PyValueError::new_err(format!(
                    "failure_on must name Exception subclasses; {} is a BaseException that is always \
                     ignored (KeyboardInterrupt, SystemExit and CancelledError never count)",
                    t.name()?
                )));
            }
        }
    }
    Ok(())
}

/// An exception class or a tuple of exception classes.
fn exception_types<'py>(value: &Bound<'py, PyAny>, arg: &str) -> PyResult<Bound<'py, PyAny>> {
    let py = value.py();
    let base = py.get_type::<PyBaseException>();
    let is_exception_type = |v: &Bound<'py, PyAny>| {
        v.cast::<PyType>()
            .is_ok_and(|t| upcall::is_subclass(t, &base).unwrap_or(false))
    };
    if is_exception_type(value) {
        return Ok(value.clone());
    }
    if let Ok(tuple) = value.cast::<PyTuple>() {
        if tuple.iter().all(|item| is_exception_type(&item)) {
            return Ok(value.clone());
        }
    }
    Err(PyTypeError::new_err(format!(
        "{arg} must be an exception class or a tuple of exception classes, not {}",
        type_name(value)
    )))
}
