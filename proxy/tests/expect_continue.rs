//! `Expect: 100-continue` through the proxy is decided by the application (RFC 9110
//! §10.1.1): the client sees the application's own interim or final response, and a refused
//! body is never sent.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use meshtrace_tests::client::RawClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const REQUEST_HEAD: &[u8] =
    b"PUT /upload HTTP/1.1\r\nHost: app\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";

/// Reads one request head from `stream`.
async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        if stream.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    head
}

/// An application that answers the one request it gets either (`accept`) with its own
/// `100 Continue`, then reads the body and answers 200 with it, or with 417 straight away.
/// Returns its address and the head and body bytes it read.
async fn application(accept: bool) -> (SocketAddr, tokio::task::JoinHandle<(Vec<u8>, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let head = read_head(&mut stream).await;
        let mut body = vec![0; 5];
        if accept {
            stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .unwrap();
            stream.read_exact(&mut body).await.unwrap();
            let response = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
            stream.write_all(response).await.unwrap();
            stream.write_all(&body).await.unwrap();
        } else {
            stream
                .write_all(b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
            // Whatever arrives next (nothing, while the client waits) is what was sent.
            body.clear();
            let mut rest = [0; 64];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(300), stream.read(&mut rest)).await
            {
                body.extend_from_slice(&rest[..n]);
            }
        }
        (head, body)
    });
    (addr, task)
}

#[tokio::test]
async fn a_refused_expectation_gets_only_the_refusal() {
    let (app, seen) = application(false).await;
    let proxy = common::start(common::fixed_target(app)).await;
    let mut client = RawClient::connect(proxy.inbound).await;
    client.send(REQUEST_HEAD).await;
    let response = client.read_response().await;
    assert_eq!(response.status(), 417, "{}", response.head_str());
    let (head, body) = seen.await.unwrap();
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.contains("expect: 100-continue"), "{head}");
    assert!(body.is_empty(), "the refused body was sent: {body:?}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_accepted_expectation_gets_the_applications_100_then_its_response() {
    let (app, seen) = application(true).await;
    let proxy = common::start(common::fixed_target(app)).await;
    let mut client = RawClient::connect(proxy.inbound).await;
    client.send(REQUEST_HEAD).await;
    let interim = client.read_response().await;
    assert_eq!(interim.status(), 100, "{}", interim.head_str());
    client.send(b"hello").await;
    let response = client.read_response().await;
    assert_eq!(response.status(), 200, "{}", response.head_str());
    assert_eq!(response.body, b"hello");
    let (_, body) = seen.await.unwrap();
    assert_eq!(body, b"hello");
    proxy.shutdown().await;
}
