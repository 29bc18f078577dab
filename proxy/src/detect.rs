//! Protocol detection from a connection's first bytes.
//!
//! The proxy must decide how to forward a connection before it knows anything about it: an
//! HTTP/2 prior-knowledge preface means h2, an HTTP/1.x request line means HTTP/1, and anything
//! else (TLS, Redis, PostgreSQL, a client that says nothing) is copied as opaque TCP. The bytes
//! read to decide are replayed to whichever handler wins through
//! [`ClientIo::replay`](crate::client_io::ClientIo::replay).

use std::io;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::meta::Protocol;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The longest method we wait for before calling a stream opaque.
const MAX_METHOD_LEN: usize = 32;
/// At most this many bytes are read to decide; a request line longer than that is treated as
/// opaque rather than buffered without bound.
pub const MAX_PEEK: usize = 16 * 1024;

/// The answer for the bytes seen so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Known(Protocol),
    /// Consistent with a protocol, but too short to be sure.
    NeedMore,
}

/// Classifies a connection from its first bytes. Pure; `buf` is everything read so far.
pub fn classify(buf: &[u8]) -> Verdict {
    if buf.is_empty() {
        return Verdict::NeedMore;
    }
    if buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buf) {
        return Verdict::NeedMore;
    }
    if buf.starts_with(H2_PREFACE) {
        return Verdict::Known(Protocol::H2);
    }
    classify_http1_request_line(buf)
}

/// `method SP request-target SP HTTP/1.x CRLF` (RFC 9112 §3).
fn classify_http1_request_line(buf: &[u8]) -> Verdict {
    let opaque = Verdict::Known(Protocol::Opaque);

    let method_len = buf.iter().take_while(|b| is_tchar(**b)).count();
    if method_len > MAX_METHOD_LEN {
        return opaque;
    }
    let Some(rest) = buf.get(method_len..).filter(|rest| !rest.is_empty()) else {
        return Verdict::NeedMore;
    };
    if method_len == 0 || rest[0] != b' ' {
        return opaque;
    }

    let rest = &rest[1..];
    let target_len = rest.iter().take_while(|b| b.is_ascii_graphic()).count();
    let Some(rest) = rest.get(target_len..).filter(|rest| !rest.is_empty()) else {
        return Verdict::NeedMore;
    };
    if target_len == 0 || rest[0] != b' ' {
        return opaque;
    }

    let version = &rest[1..];
    const HTTP1: &[u8] = b"HTTP/1.";
    let checked = version.len().min(HTTP1.len());
    if version[..checked] != HTTP1[..checked] {
        return opaque;
    }
    match version.get(HTTP1.len()..) {
        None | Some([]) => Verdict::NeedMore,
        Some([minor, rest @ ..]) if minor.is_ascii_digit() => match rest {
            [] | [b'\r'] => Verdict::NeedMore,
            [b'\r', b'\n', ..] | [b'\n', ..] => Verdict::Known(Protocol::Http1),
            _ => opaque,
        },
        Some(_) => opaque,
    }
}

/// `tchar` of RFC 9110 §5.6.2: the characters of a method token.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads until the protocol is known, at most [`MAX_PEEK`] bytes or until `timeout` expires,
/// and returns the verdict with the bytes read (to be replayed). A client that sends nothing,
/// closes early or sends too much without completing a request line is opaque.
pub async fn detect<I>(io: &mut I, timeout: Duration) -> io::Result<(Protocol, Bytes)>
where
    I: AsyncRead + Unpin,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if let Verdict::Known(protocol) = classify(&buf) {
            return Ok((protocol, buf.freeze()));
        }
        if buf.len() >= MAX_PEEK {
            return Ok((Protocol::Opaque, buf.freeze()));
        }
        buf.reserve(1024.min(MAX_PEEK - buf.len()));
        let room = MAX_PEEK - buf.len();
        let mut limited = (&mut buf).limit(room);
        match tokio::time::timeout_at(deadline, io.read_buf(&mut limited)).await {
            Ok(Ok(0)) | Err(_) => return Ok((Protocol::Opaque, buf.freeze())),
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_io::ClientIo;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::AsyncWriteExt;

    const HTTP1: Verdict = Verdict::Known(Protocol::Http1);
    const H2: Verdict = Verdict::Known(Protocol::H2);
    const OPAQUE: Verdict = Verdict::Known(Protocol::Opaque);

    /// First bytes as real clients send them.
    #[test]
    fn recorded_first_bytes() {
        let cases: &[(&str, &[u8], Verdict)] = &[
            ("curl GET", b"GET /index.html HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n", HTTP1),
            ("POST", b"POST /api/v1/items?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}", HTTP1),
            ("HTTP/1.0", b"GET / HTTP/1.0\r\n\r\n", HTTP1),
            ("bare LF", b"GET / HTTP/1.1\nHost: a\n\n", HTTP1),
            ("absolute-form", b"GET http://example.com:8080/x HTTP/1.1\r\nHost: example.com:8080\r\n\r\n", HTTP1),
            ("CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", HTTP1),
            ("OPTIONS *", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", HTTP1),
            ("h2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00", H2),
            (
                "TLS ClientHello",
                &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x8a, 0x1d],
                OPAQUE,
            ),
            ("Redis PING", b"*1\r\n$4\r\nPING\r\n", OPAQUE),
            (
                "Postgres startup",
                &[0x00, 0x00, 0x00, 0x08, 0x04, 0xd2, 0x16, 0x2f],
                OPAQUE,
            ),
            ("SSH banner", b"SSH-2.0-OpenSSH_9.6\r\n", OPAQUE),
            ("HTTP/2 version in an HTTP/1 line", b"GET / HTTP/2.0\r\n\r\n", OPAQUE),
            ("not the preface", b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", OPAQUE),
            ("space first", b" GET / HTTP/1.1\r\n", OPAQUE),
            ("control char in target", b"GET /a\x01b HTTP/1.1\r\n", OPAQUE),
            ("garbage after version", b"GET / HTTP/1.1 extra\r\n", OPAQUE),
        ];
        for (name, bytes, expected) in cases {
            assert_eq!(classify(bytes), *expected, "{name}");
        }
    }

    #[test]
    fn partial_input_waits_for_more() {
        let partial: &[&[u8]] = &[
            b"",
            b"G",
            b"GET",
            b"GET ",
            b"GET /index",
            b"GET /index HTTP/1",
            b"GET /index HTTP/1.1",
            b"GET /index HTTP/1.1\r",
            b"PRI",
            b"PRI * HTTP/2.0\r\n\r\nSM",
        ];
        for bytes in partial {
            assert_eq!(
                classify(bytes),
                Verdict::NeedMore,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        // Every prefix of a real request is either undecided or HTTP/1, never opaque.
        let request = b"DELETE /a/b?c=d HTTP/1.1\r\nHost: x\r\n\r\n";
        for end in 0..request.len() {
            assert_ne!(classify(&request[..end]), OPAQUE, "prefix of length {end}");
        }
        assert_eq!(classify(&[b'A'; MAX_METHOD_LEN + 1]), OPAQUE);
    }

    #[tokio::test]
    async fn detection_reads_across_segments_and_replays_everything() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            for part in [&b"GET /slow"[..], b" HTTP/1.1\r", b"\nHost: a\r\n\r\n"] {
                client.write_all(part).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let (protocol, prefix) = detect(&mut server, Duration::from_secs(30)).await.unwrap();
        assert_eq!(protocol, Protocol::Http1);
        let mut client = writer.await.unwrap();
        client.shutdown().await.unwrap();
        let mut replayed = Vec::new();
        ClientIo::new(server, Counter::default(), Counter::default())
            .replay(prefix)
            .read_to_end(&mut replayed)
            .await
            .unwrap();
        assert_eq!(replayed, b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n");
    }

    #[tokio::test]
    async fn a_silent_client_is_opaque_after_the_timeout() {
        let (_client, mut server) = tokio::io::duplex(1024);
        let (protocol, prefix) = detect(&mut server, Duration::from_millis(20))
            .await
            .unwrap();
        assert_eq!(protocol, Protocol::Opaque);
        assert!(prefix.is_empty());
    }

    #[tokio::test]
    async fn a_client_that_closes_mid_line_is_opaque() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"GET / HTT").await.unwrap();
        drop(client);
        let (protocol, prefix) = detect(&mut server, Duration::from_secs(30)).await.unwrap();
        assert_eq!(
            (protocol, &prefix[..]),
            (Protocol::Opaque, &b"GET / HTT"[..])
        );
    }

    #[tokio::test]
    async fn an_endless_request_line_is_opaque_at_the_limit() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let mut line = b"GET /".to_vec();
        line.resize(MAX_PEEK + 100, b'a');
        let writer = tokio::spawn(async move { client.write_all(&line).await.map(|_| client) });
        let (protocol, prefix) = detect(&mut server, Duration::from_secs(30)).await.unwrap();
        assert_eq!(protocol, Protocol::Opaque);
        assert_eq!(prefix.len(), MAX_PEEK);
        drop(server);
        let _ = writer.await;
    }
}
