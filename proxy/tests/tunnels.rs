//! Byte tunnels: WebSocket after a 101, opaque TCP (detected or by port), half-close.

mod common;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use meshtrace_proxy::config::Config;
use meshtrace_proxy::shutdown::DrainOutcome;
use meshtrace_tests::tcp::{ServerFirst, TcpEcho};
use meshtrace_tests::upstream::PATIENCE;
use meshtrace_tests::ws::WsEcho;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

async fn websocket_echo_through(proxy_addr: std::net::SocketAddr, url: String) {
    let stream = TcpStream::connect(proxy_addr).await.unwrap();
    let (mut socket, response) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    assert_eq!(response.status(), 101);
    for i in 0..10 {
        socket
            .send(Message::text(format!("message {i}")))
            .await
            .unwrap();
        let echoed = tokio::time::timeout(PATIENCE, socket.next()).await.unwrap();
        assert_eq!(
            echoed.unwrap().unwrap(),
            Message::text(format!("message {i}"))
        );
    }
    let big = vec![7u8; 1 << 20];
    socket.send(Message::binary(big.clone())).await.unwrap();
    let echoed = tokio::time::timeout(PATIENCE, socket.next()).await.unwrap();
    assert_eq!(echoed.unwrap().unwrap().into_data(), big);
    socket.close(None).await.unwrap();
}

#[tokio::test]
async fn websocket_echo_in_fixed_target_mode() {
    let server = WsEcho::start().await;
    let proxy = common::start(common::fixed_target(server.addr())).await;
    websocket_echo_through(proxy.inbound, format!("ws://{}/socket", server.addr())).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn websocket_echo_in_explicit_mode() {
    let server = WsEcho::start().await;
    let proxy = common::start(common::config()).await;
    // Origin-form request whose Host names the server, as a client configured with a proxy
    // for ws:// would send after resolving nothing itself.
    websocket_echo_through(proxy.outbound, format!("ws://{}/socket", server.addr())).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn opaque_tcp_echo_with_half_close() {
    let echo = TcpEcho::start().await;
    let proxy = common::start(common::fixed_target(echo.addr())).await;
    let mut stream = TcpStream::connect(proxy.inbound).await.unwrap();
    // Starts like TLS: detected as opaque at once.
    let payload: Vec<u8> = [0x16, 0x03, 0x01, 0x00, 0x05]
        .into_iter()
        .chain((0..100_000u32).map(|i| (i % 256) as u8))
        .collect();
    stream.write_all(&payload).await.unwrap();
    // Half-close: the echo server only answers its final line after seeing our FIN, and we can
    // still read after sending it.
    stream.shutdown().await.unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut received))
        .await
        .unwrap()
        .unwrap();
    let mut expected = payload.clone();
    expected.extend_from_slice(format!("{} bytes then EOF", payload.len()).as_bytes());
    assert_eq!(received.len(), expected.len());
    assert!(received == expected);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_silent_client_becomes_opaque_after_the_detect_timeout() {
    let server = ServerFirst::start(b"220 hello from a server that speaks first\r\n").await;
    let proxy = common::start(Config {
        detect_timeout: Duration::from_millis(200),
        ..common::fixed_target(server.addr())
    })
    .await;
    let mut stream = TcpStream::connect(proxy.inbound).await.unwrap();
    let mut banner = [0u8; 43];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut banner))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&banner, b"220 hello from a server that speaks first\r\n");
    stream.write_all(b"EHLO me\r\n").await.unwrap();
    let mut echoed = [0u8; 9];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"EHLO me\r\n");
    // The tunnel is in flight until the client closes; only then can the proxy drain.
    drop(stream);
    assert_eq!(proxy.shutdown().await, DrainOutcome::Complete);
}

#[tokio::test]
async fn opaque_ports_skip_detection() {
    let server = ServerFirst::start(b"* OK server first\r\n").await;
    let proxy = common::start(Config {
        // Detection would wait far longer than the test's patience.
        detect_timeout: Duration::from_secs(3600),
        opaque_ports: server.addr().port().to_string().parse().unwrap(),
        ..common::fixed_target(server.addr())
    })
    .await;
    let mut stream = TcpStream::connect(proxy.inbound).await.unwrap();
    let mut banner = [0u8; 19];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut banner))
        .await
        .expect("banner arrives without waiting for detection")
        .unwrap();
    assert_eq!(&banner, b"* OK server first\r\n");
    drop(stream);
    assert_eq!(proxy.shutdown().await, DrainOutcome::Complete);
}
