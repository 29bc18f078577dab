//! Opening TCP connections to upstreams.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use super::error::ForwardError;

/// Connects within `timeout`, with Nagle off (the proxy forwards whatever it gets at once).
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ForwardError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ForwardError::ConnectTimeout(addr))?
        .map_err(|error| ForwardError::connect(addr, error))?;
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "could not set TCP_NODELAY");
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::ErrorType;

    #[tokio::test]
    async fn refused_is_classified() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let error = connect(addr, Duration::from_secs(30)).await.unwrap_err();
        assert_eq!(error.error_type(), "connection_refused");
    }
}
