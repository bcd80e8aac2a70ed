//! REST handlers.

pub mod auth;
