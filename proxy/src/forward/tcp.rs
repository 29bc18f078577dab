//! Opaque TCP: bytes copied both ways until both sides are done, each side's FIN passed on as a
//! half-close so request/response protocols that rely on it keep working.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::connect::connect;
use super::error::ForwardError;

/// Connects to `target` and copies until both directions have closed. Returns the bytes
/// (client→upstream, upstream→client).
pub async fn forward<I>(
    mut client: I,
    target: SocketAddr,
    connect_timeout: Duration,
) -> Result<(u64, u64), ForwardError>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut upstream = connect(target, connect_timeout).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream)
        .await
        .map_err(|source| ForwardError::Connect {
            addr: target,
            source,
        })
}
