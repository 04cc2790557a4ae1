//! The engine of panelboard: the circuit-breaker state machine and its counters, plain Rust with
//! no PyO3 and no unsafe code, so that it is unit-tested, benchmarked and model-checked with loom
//! on its own (`cargo test -p panelboard-engine`, `make loom`).
//!
//! - [`machine`] (re-exported at the crate root): the state machine over borrowed atomic words.
//! - [`fast_path`] (re-exported too): admission into a closed breaker without a result predicate
//!   and the healthy success that writes nothing, with the versioned predicate flag.
//! - [`metrics`]: striped per-breaker counters.
//! - [`window`]: the sliding time window of the rate rules (failure rate, slow-call rate).
//! - [`lanes`]: the window's lanes, where threads other than the first count their successes.
//! - [`ticker`]: a clock reading a ticker thread publishes, for the window's closed fast path.
#![forbid(unsafe_code)]

pub mod fast_path;
pub mod lanes;
pub mod machine;
pub mod metrics;
mod sync;
pub mod ticker;
pub mod window;

pub use fast_path::{FastTicket, PredicateFlag};
pub use lanes::{Lane, Lanes, LANES};
pub use machine::*;
pub use ticker::Ticker;
pub use window::{Counting, Counts, RatePolicy, Window, BUCKETS, LAGGING, MIN_WINDOW_US};
// The fleet-synced breaker (issue 13), a child of `machine` in its own file (src/remote.rs).
pub use machine::remote;
