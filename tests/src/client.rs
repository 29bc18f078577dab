//! Raw HTTP/1 clients: write exact bytes, read back exact bytes.

use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::upstream::{chunked_length, PATIENCE};

/// A response as it arrived on the wire.
#[derive(Clone, Debug)]
pub struct RawResponse {
    /// Status line and header block, through the blank line.
    pub head: Vec<u8>,
    /// The body exactly as framed (chunk sizes and trailers included).
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn head_str(&self) -> String {
        String::from_utf8_lossy(&self.head).into_owned()
    }

    pub fn status(&self) -> u16 {
        self.head_str()
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0)
    }

    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head_str().split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// A client connection that writes raw bytes and parses raw responses.
pub struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Self::from_stream(stream)
    }

    /// A client on an already connected stream (e.g. one connected from inside a pod).
    pub fn from_stream(stream: TcpStream) -> Self {
        RawClient {
            stream,
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads the next response (an interim 1xx counts as one). `head_request`: no body follows.
    pub async fn read_response_to(&mut self, head_request: bool) -> RawResponse {
        tokio::time::timeout(PATIENCE, self.read_response_inner(head_request))
            .await
            .expect("no response in time")
    }

    pub async fn read_response(&mut self) -> RawResponse {
        self.read_response_to(false).await
    }

    async fn read_response_inner(&mut self, head_request: bool) -> RawResponse {
        let head_len = self
            .fill(|b| b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4))
            .await
            .expect("connection closed before a response head");
        let head = self.buf.split_to(head_len).to_vec();
        let response = RawResponse {
            head,
            body: Vec::new(),
        };
        let status = response.status();
        if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
            return response;
        }
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        let body_len = if chunked {
            self.fill(chunked_length).await
        } else if let Some(length) = response.header("content-length") {
            let n: usize = length.parse().expect("content-length");
            self.fill(|b| (b.len() >= n).then_some(n)).await
        } else {
            // Close-delimited.
            while self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map(|n| n > 0)
                .unwrap_or(false)
            {}
            Some(self.buf.len())
        };
        let body_len = body_len.expect("connection closed mid-body");
        RawResponse {
            body: self.buf.split_to(body_len).to_vec(),
            ..response
        }
    }

    async fn fill(&mut self, complete: impl Fn(&[u8]) -> Option<usize>) -> Option<usize> {
        loop {
            if let Some(n) = complete(&self.buf) {
                return Some(n);
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Whether the server closed the connection (EOF with nothing left unread).
    pub async fn is_closed_by_peer(&mut self) -> bool {
        tokio::time::timeout(PATIENCE, self.stream.read_buf(&mut self.buf))
            .await
            .map(|read| matches!(read, Ok(0) | Err(_)))
            .unwrap_or(false)
    }

    pub fn into_stream(self) -> TcpStream {
        self.stream
    }
}

/// One request, one response, on a fresh connection.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut client = RawClient::connect(addr).await;
    client.send(request).await;
    client.read_response().await
}
