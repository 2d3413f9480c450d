//! The load generator and benchmark harness (issue 7; not built yet).
