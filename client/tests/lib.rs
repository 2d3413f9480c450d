//! The client crate's one integration-test binary (link time on two cores): `failover`, the
//! directory client's list of directories against tiny HTTP servers on loopback.

mod failover;
