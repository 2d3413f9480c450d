//! End-to-end tests of the `haystack` binary, run as a child process on loopback.

mod auth;
mod cluster;
mod common;
mod crash;
mod directories;
mod ec_crash;
mod ec_switch;
mod gc;
mod late_writes;
mod multihost;
mod rebalance;
mod rereplication;
mod roles;
mod server;
mod shutdown;
mod signed;
mod tls;
