//! The scheduler, as pure logic: no I/O, no async, no gRPC, time injected
//! through [`Clock`]. The frontend wraps a [`Scheduler`] in a mutex, feeds it
//! events (submissions, worker connections, results, cancellations,
//! disconnected waiters) and carries out what it returns (assignments to
//! send, kills to request, waiters to wake).
//!
//! - [`platform`]: platform properties and matching.
//! - [`fair`]: the order queued operations start in: priority, then fair
//!   shares across clients and their invocations.
//! - [`scheduler`]: operations, in-flight deduplication, workers and slots.
//!
//! To change the order operations start in, change [`fair`]; which worker
//! runs them is decided in `Scheduler::next_assignments`.
#![warn(missing_docs)]

pub mod clock;
pub mod fair;
pub mod platform;
pub mod scheduler;

pub use clock::{Clock, FakeClock, SystemClock};
pub use fair::Tenant;
pub use platform::Platform;
pub use scheduler::{
    ActionKey, Assignment, CancelEffect, Counts, OpId, OpView, Outcome, PoolLoad, QueuedOp,
    SchedConfig, SchedError, Scheduler, Stage, WorkerId,
};
