//! Integration tests of the uploader over a real directory and stores on loopback (testkit),
//! one binary with a module per area.

mod auth;
mod bad_input;
mod common;
mod failures;
mod idempotency;
mod photos;
mod videos;
mod wire;
