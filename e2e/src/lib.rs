//! Harness for end-to-end tests: start the real service binaries as processes on free
//! ports against the local MariaDB, Redis and Kafka, wait until they are ready, and stop
//! them when dropped (and, through their stdin lifeline, when the test process dies).
//!
//! Under `cargo test` the harness builds the service binaries itself before the first
//! start (a no-op when `make test` built them), so an edit is never tested against a
//! stale binary. A service counts as ready only when its own process answers `/readyz`
//! (the body names the service and its pid); every system has its own JWT secret,
//! databases, topics and data directory, and a panicking test still kills its processes
//! and drops its databases.

#![warn(missing_docs)]

mod api;
pub mod cpu;
mod embedded;
pub mod infra;
pub mod otlp;
mod process;
pub mod promql;
mod system;

pub use api::{email, jti, Api, Reply};
pub use embedded::{embedded_env, embedded_ready_url};
pub use ordersys_testkit::eventually;
pub use process::*;
pub use system::{Options, Replicas, System};
