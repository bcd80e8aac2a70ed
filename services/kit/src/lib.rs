//! Plumbing shared by the ordersys reference services (not part of the SDK):
//! layered typed configuration, JSON logs, the admin HTTP endpoints (`/healthz`,
//! `/readyz`, `/metrics`), correlation-id / trace-context propagation for HTTP and gRPC,
//! and the shutdown signal.

#![warn(missing_docs)]

pub mod admin;
pub mod config;
pub mod context;
pub mod db;
pub mod messaging;
pub mod shutdown;
pub mod telemetry;
