//! The scheduler, as pure logic: no I/O, no async, no gRPC, time injected
//! through [`Clock`]. The frontend wraps a [`Scheduler`] in a mutex, feeds it
//! events (submissions, worker connections, results, cancellations,
//! disconnected waiters) and carries out what it returns (assignments to
//! send, kills to request, waiters to wake).
//!
//! - [`platform`]: platform properties and matching.
//! - [`scheduler`]: the queue, in-flight deduplication, workers and slots.
//!
//! To change a policy (say, fairness between instances), change
//! `Scheduler::next_assignments`; every decision is made there.
#![warn(missing_docs)]

pub mod clock;
pub mod platform;
pub mod scheduler;

pub use clock::{Clock, FakeClock, SystemClock};
pub use platform::Platform;
pub use scheduler::{
    ActionKey, Assignment, CancelEffect, Counts, OpId, OpView, Outcome, SchedConfig, SchedError,
    Scheduler, Stage, WorkerId,
};
