//! A WebSocket echo server (tokio-tungstenite).

use std::net::SocketAddr;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;

pub struct WsEcho {
    addr: SocketAddr,
}

impl WsEcho {
    /// Echoes text and binary messages until the client closes.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(listener)
    }

    /// Serves on an existing listener (e.g. one bound inside a network-namespace pod).
    pub fn serve(listener: TcpListener) -> Self {
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(message)) = socket.next().await {
                        if message.is_text() || message.is_binary() {
                            if socket.send(message).await.is_err() {
                                return;
                            }
                        } else if message.is_close() {
                            return;
                        }
                    }
                });
            }
        });
        WsEcho { addr }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}
