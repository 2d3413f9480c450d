//! The store machine.
