//! Plain TCP servers for opaque-forwarding tests.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Echoes every byte back; when the client half-closes, sends `"<n> bytes then EOF"` (proof
/// that the FIN arrived while the other direction still works) and closes.
pub struct TcpEcho {
    addr: SocketAddr,
}

impl TcpEcho {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(listener)
    }

    /// Serves on an existing listener (e.g. one bound inside a network-namespace pod).
    pub fn serve(listener: TcpListener) -> Self {
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut total = 0usize;
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) => break,
                            Ok(n) => {
                                total += n;
                                if stream.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                            Err(_) => return,
                        }
                    }
                    let _ = stream
                        .write_all(format!("{total} bytes then EOF").as_bytes())
                        .await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        TcpEcho { addr }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// A server-speaks-first protocol (like SMTP or MySQL): sends `banner` on accept, then echoes.
pub struct ServerFirst {
    addr: SocketAddr,
}

impl ServerFirst {
    pub async fn start(banner: &'static [u8]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(listener, banner)
    }

    /// Serves on an existing listener (e.g. one bound inside a network-namespace pod).
    pub fn serve(listener: TcpListener, banner: &'static [u8]) -> Self {
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if stream.write_all(banner).await.is_err() {
                        return;
                    }
                    let (mut reader, mut writer) = stream.split();
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                });
            }
        });
        ServerFirst { addr }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}
