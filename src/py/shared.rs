//! Shared registries (issue 12, docs/shared-memory.md): the options `shared=`, `capacity=`, `mode=`,
//! opening the table, the full-table warning, and the module functions `unlink_shared` and
//! `shared_table_rows` (for `python -m panelboard inspect`).

use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyInt, PyList, PyString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::config::{type_name, Config, Patch};
use super::ffi::upcall;
use super::pyrefs;
use super::storage::slot_totals;
use crate::engine::{Mode, NO_FAILURE_THRESHOLD};
use crate::shm::layout::{ReadName, MAX_CAPACITY};
use crate::shm::options::TableOptions;
use crate::shm::{OpenError, Table};

pub const DEFAULT_CAPACITY: u64 = 4096;
pub const DEFAULT_MODE: u32 = 0o600;

/// A registry's table.
pub struct SharedTable {
    pub table: Arc<Table>,
    warned_full: AtomicBool,
}

fn int_option(value: &Bound<'_, PyAny>, arg: &str, min: u64, max: u64) -> PyResult<u64> {
    if value.is_instance_of::<PyBool>() || !value.is_instance_of::<PyInt>() {
        return Err(PyTypeError::new_err(format!(
            "{arg} must be an int, not {}",
            type_name(value)
        )));
    }
    match value.extract::<i128>() {
        Ok(n) if n >= i128::from(min) && n <= i128::from(max) => Ok(n as u64),
        _ => Err(PyValueError::new_err(format!(
            "{arg} must be between {min} and {max}, got {}",
            upcall::repr(value).map_or_else(|_| "?".to_owned(), |r| r.to_string())
        ))),
    }
}

/// The table name given as `shared=` (or to the module functions): a non-empty `str`.
fn table_name(value: &Bound<'_, PyAny>, arg: &str) -> PyResult<String> {
    let Ok(name) = value.cast::<PyString>() else {
        return Err(PyTypeError::new_err(format!(
            "{arg} must be a str naming the shared table, not {}",
            type_name(value)
        )));
    };
    let name = name.to_str().map_err(|_| {
        PyValueError::new_err(format!("{arg} must be valid text (no lone surrogates)"))
    })?;
    if name.is_empty() || name.contains('\0') {
        return Err(PyValueError::new_err(format!(
            "{arg} must be a non-empty name without NUL characters"
        )));
    }
    Ok(name.to_owned())
}

/// Opens (or creates) the table of `Registry(shared=..., capacity=..., mode=...)`; `None` for a
/// local registry (and then `capacity`/`mode` must not be given).
pub fn open_for_registry(
    py: Python<'_>,
    shared: Option<&Bound<'_, PyAny>>,
    capacity: Option<&Bound<'_, PyAny>>,
    mode: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<SharedTable>> {
    let shared = shared.filter(|s| !s.is_none());
    let Some(shared) = shared else {
        for (given, arg) in [(capacity, "capacity"), (mode, "mode")] {
            if given.is_some_and(|v| !v.is_none()) {
                return Err(PyTypeError::new_err(format!(
                    "{arg} is an option of shared registries: give shared=NAME too"
                )));
            }
        }
        return Ok(None);
    };
    let name = table_name(shared, "shared")?;
    let capacity = match capacity.filter(|c| !c.is_none()) {
        Some(c) => int_option(c, "capacity", 1, MAX_CAPACITY)?,
        None => DEFAULT_CAPACITY,
    };
    let mode = match mode.filter(|m| !m.is_none()) {
        Some(m) => int_option(m, "mode", 0, 0o777)? as u32,
        None => DEFAULT_MODE,
    };
    let table = py
        .detach(|| Table::open(&name, capacity, mode))
        .map_err(open_error)?;
    Ok(Some(SharedTable {
        table: Arc::new(table),
        warned_full: AtomicBool::new(false),
    }))
}

/// The Python exception for a table that could not be opened: `FileNotFoundError`, `ValueError`
/// (an invalid name or segment, the message naming the problem) or `OSError` (with its errno).
pub fn open_error(err: OpenError) -> PyErr {
    let message = err.to_string();
    match err {
        OpenError::NotFound(_) => PyFileNotFoundError::new_err(message),
        OpenError::InvalidName(_) | OpenError::Layout { .. } => PyValueError::new_err(message),
        OpenError::Os { err, .. } => match err.raw_os_error() {
            Some(errno) => PyOSError::new_err((errno, message)),
            None => PyOSError::new_err(message),
        },
    }
}

impl SharedTable {
    /// One warning per registry on the `panelboard` logger when its table is full.
    pub fn warn_full(&self, py: Python<'_>, name: &Bound<'_, PyAny>) {
        if self.warned_full.swap(true, Ordering::Relaxed) {
            return;
        }
        let warned = (|| -> PyResult<()> {
            let logger_name = PyString::new(py, "panelboard").into_any();
            let logger = upcall::call(pyrefs::refs(py)?.get_logger.bind(py), [&logger_name])?;
            let message = PyString::new(
                py,
                "shared table %r is full (%d slots): breaker %r and later new names are local to \
                 this process",
            )
            .into_any();
            let table = PyString::new(py, self.table.name()).into_any();
            let capacity = self.table.capacity().into_pyobject(py)?.into_any();
            upcall::call(
                &upcall::getattr(&logger, "warning")?,
                [&message, &table, &capacity, name],
            )?;
            Ok(())
        })();
        if let Err(err) = warned {
            upcall::write_unraisable(py, err);
        }
    }
}

/// Removes the shared table `name`; `True` if it existed. Processes that have it open keep their
/// mapping (and its breakers) until they close it; a new `Registry(shared=name)` makes a new table.
#[pyfunction]
pub fn unlink_shared(py: Python<'_>, name: &Bound<'_, PyAny>) -> PyResult<bool> {
    let name = table_name(name, "name")?;
    py.detach(|| crate::shm::unlink(&name)).map_err(open_error)
}

/// The display text of slot `index`'s name: the name itself (read from the slot or the name
/// heap), or, for a long name the heap had no room for, its first 88 bytes and an ellipsis.
fn display_name<'py>(py: Python<'py>, table: &Table, index: usize) -> PyResult<Bound<'py, PyAny>> {
    if let Some(bytes) = table.name_of(index) {
        return pyrefs::name_str(py, &bytes)
            .or_else(|_| Ok(PyString::new(py, &String::from_utf8_lossy(&bytes)).into_any()));
    }
    let slot_name = table
        .slot(index)
        .map_or(ReadName::Corrupt, |slot| slot.read_name());
    match slot_name {
        ReadName::Prefix { prefix, .. } => {
            Ok(PyString::new(py, &format!("{}…", String::from_utf8_lossy(&prefix))).into_any())
        }
        _ => Ok(PyString::new(py, "<corrupt name>").into_any()),
    }
}

/// Every live breaker of the existing table `name`, as dicts (see docs/shared-memory.md), with its
/// numeric options (`options`). Reads only: nothing is created, and an open breaker past its
/// timeout is listed as open, retry_after 0.
#[pyfunction]
pub fn shared_table_rows<'py>(
    py: Python<'py>,
    name: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyList>> {
    let name = table_name(name, "name")?;
    let table = py.detach(|| Table::attach(&name)).map_err(open_error)?;
    let rows = PyList::empty(py);
    let now = crate::shm::host_monotonic_ms();
    for (index, claim) in table.live() {
        let Some(slot) = table.slot(index) else {
            continue;
        };
        let options = slot.read_options().options;
        let limits = options.limits();
        let word = slot.machine.machine_word();
        let retry_after_ms = slot.machine.machine(&limits).retry_after_ms(word, || now);
        let totals = slot_totals(slot);
        // The slot may have been deleted or re-created while it was read: skip it then.
        if slot.claim.load(std::sync::atomic::Ordering::Acquire) != claim {
            continue;
        }
        let row = PyDict::new(py);
        row.set_item("name", display_name(py, &table, index)?)?;
        row.set_item("state", pyrefs::state_value(word.mode()))?;
        row.set_item(
            "consecutive_failures",
            if word.mode() == Mode::Closed {
                word.failures()
            } else {
                0
            },
        )?;
        row.set_item("calls", totals.calls)?;
        row.set_item("successes", totals.successes)?;
        row.set_item("failures", totals.failures)?;
        row.set_item("ignored", totals.ignored)?;
        row.set_item("rejected", totals.rejected)?;
        row.set_item(
            "times_opened",
            slot.times_opened.load(std::sync::atomic::Ordering::Relaxed),
        )?;
        row.set_item("retry_after", retry_after_ms as f64 / 1000.0)?;
        row.set_item("slot", index)?;
        row.set_item("options", options_dict(py, &options)?)?;
        rows.append(row)?;
    }
    Ok(rows)
}

/// `config` following the numeric options of slot `index`, which are every process's: what a
/// process attaching to a breaker of the table runs with (and keeps if the name is deleted). The
/// table's options are read at each call anyway; this keeps the configuration's own copy (its
/// closed fast path, a deleted name's breaker) in step with them.
pub fn with_table_options(
    py: Python<'_>,
    config: Arc<Config>,
    table: &Table,
    index: usize,
) -> Arc<Config> {
    match table.slot(index) {
        Some(slot) => config
            .with(py, &Patch::from_table(&slot.read_options().options))
            .map(Arc::new)
            .unwrap_or(config),
        None => config,
    }
}

/// The options of a slot as `inspect` shows them: seconds for durations, `None` for none.
fn options_dict<'py>(py: Python<'py>, options: &TableOptions) -> PyResult<Bound<'py, PyDict>> {
    let seconds = |units: u64, per_second: f64| units as f64 / per_second;
    let dict = PyDict::new(py);
    dict.set_item(
        "failure_threshold",
        (options.failure_threshold != NO_FAILURE_THRESHOLD).then_some(options.failure_threshold),
    )?;
    dict.set_item("reset_timeout", seconds(options.reset_timeout_ms, 1e3))?;
    dict.set_item("half_open_max_calls", options.half_open_max_calls)?;
    dict.set_item("success_threshold", options.success_threshold)?;
    dict.set_item("probe_timeout", seconds(options.probe_timeout_ms, 1e3))?;
    dict.set_item("failure_rate", options.failure_rate)?;
    dict.set_item(
        "slow_call_duration",
        options.slow_call_ns.map(|ns| seconds(ns, 1e9)),
    )?;
    dict.set_item("slow_call_rate", options.slow_call_rate)?;
    dict.set_item("window", seconds(options.window_us, 1e6))?;
    dict.set_item("min_calls", options.min_calls)?;
    dict.set_item("backoff", options.backoff)?;
    dict.set_item(
        "max_reset_timeout",
        options.max_reset_timeout_ms.map(|ms| seconds(ms, 1e3)),
    )?;
    dict.set_item("jitter", options.jitter)?;
    Ok(dict)
}

/// The display name of a slot for the registry's listings (see `display_name`).
pub fn slot_display_name<'py>(
    py: Python<'py>,
    table: &Table,
    index: usize,
) -> PyResult<Bound<'py, PyAny>> {
    display_name(py, table, index)
}

/// The whole name bytes of a slot, if they are known (see `Table::name_of`).
pub fn slot_key(table: &Table, index: usize) -> Option<Vec<u8>> {
    table.name_of(index)
}
