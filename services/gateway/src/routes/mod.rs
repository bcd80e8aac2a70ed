//! REST handlers.

pub mod auth;
pub mod orders;
