//! Request bodies that must keep arriving: every server reads a body piece by piece and gives
//! up when no piece arrives for its idle timeout (a client that sent its head and then trickles
//! or stops holds a connection and a worker's buffer this long at most), answering 408.

use std::time::Duration;

use futures_util::{Stream, StreamExt};

/// The default wait for the next piece of a request body.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// No piece of the body arrived within the idle timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyIdle(pub Duration);

impl std::fmt::Display for BodyIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no part of the request body arrived for {} ms",
            self.0.as_millis()
        )
    }
}

/// The stream's next item, or [`BodyIdle`] when none arrives within `idle`.
pub async fn next_within<S: Stream + Unpin>(
    s: &mut S,
    idle: Duration,
) -> Result<Option<S::Item>, BodyIdle> {
    tokio::time::timeout(idle, s.next())
        .await
        .map_err(|_| BodyIdle(idle))
}
