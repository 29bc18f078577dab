//! Tunnels: after an upgrade (WebSocket, `101 Switching Protocols`) or a `CONNECT`, bytes are
//! copied both ways between client and upstream until both are done.

use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite};

use super::BoxError;
use crate::meta::Direction;
use crate::shutdown::WeakWatch;

/// Starts one direction's tunnels. Tunnels outlive the request that opened them; each holds
/// the shutdown drain open until it closes.
#[derive(Clone, Debug)]
pub struct Tunnels {
    pub direction: Direction,
    pub drain: WeakWatch,
}

impl Tunnels {
    /// Copies between the two sides once `sides` has produced them; nothing once shutdown has
    /// finished draining.
    pub fn spawn<F, C, U>(&self, sides: F)
    where
        F: Future<Output = Result<(C, U), BoxError>> + Send + 'static,
        C: AsyncRead + AsyncWrite + Unpin + Send,
        U: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let Some(watch) = self.drain.upgrade() else {
            return;
        };
        let direction = self.direction.as_str();
        tokio::spawn(async move {
            let _in_flight = watch;
            match sides.await {
                Ok((mut client, mut upstream)) => {
                    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                        Ok((sent, received)) => {
                            tracing::debug!(direction, sent, received, "tunnel closed")
                        }
                        Err(error) => tracing::debug!(direction, %error, "tunnel failed"),
                    }
                }
                Err(error) => tracing::debug!(direction, %error, "upgrade failed"),
            }
        });
    }
}
