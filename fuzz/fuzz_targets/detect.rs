//! Protocol detection from a connection's first bytes (`detect::classify`, `detect::detect`).
//!
//! `classify` promises that `NeedMore` means "consistent with a protocol, but too short to be
//! sure": so once a prefix of the bytes is classified, every longer prefix gets the same
//! answer. HTTP/2 is exactly the RFC 9113 preface; HTTP/1 is a request line of RFC 9112 §3
//! (written here independently). `detect` over the same bytes in chunks of any size reaches
//! the answer of `classify` and returns a prefix of the bytes to replay.
//!
//! Input: the first byte is the chunk size for `detect`, the rest is the connection's bytes.
#![no_main]

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use meshtrace_proxy::detect::{classify, detect, Verdict, MAX_PEEK};
use meshtrace_proxy::meta::Protocol;
use tokio::io::{AsyncRead, ReadBuf};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Prefixes checked one by one up to here, then sparsely (quadratic cost otherwise).
const DENSE: usize = 512;

fn tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// `method SP request-target SP HTTP-version` then CRLF (or a bare LF, RFC 9112 §2.2).
fn http1_request_line(buf: &[u8]) -> bool {
    let Some(lf) = buf.iter().position(|&c| c == b'\n') else {
        return false;
    };
    let line = buf[..lf].strip_suffix(b"\r").unwrap_or(&buf[..lf]);
    let parts: Vec<&[u8]> = line.split(|&c| c == b' ').collect();
    let [method, target, version] = parts[..] else {
        return false;
    };
    !method.is_empty()
        && method.len() <= 32
        && method.iter().all(|&c| tchar(c))
        && !target.is_empty()
        && target.iter().all(u8::is_ascii_graphic)
        && version.len() == 8
        && version.starts_with(b"HTTP/1.")
        && version[7].is_ascii_digit()
}

/// Yields the bytes `chunk` at a time, then EOF.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.chunk.min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let full = classify(data);

    // Once known, known the same way for every longer prefix.
    let mut first_known = None;
    for end in (0..=data.len()).filter(|&end| end <= DENSE || end % 61 == 0 || end == data.len()) {
        match (classify(&data[..end]), first_known) {
            (Verdict::Known(p), None) => first_known = Some((end, p)),
            (v, Some((at, p))) => assert_eq!(v, Verdict::Known(p), "known at {at}, not at {end}"),
            (Verdict::NeedMore, None) => {}
        }
    }
    if let Some((_, p)) = first_known {
        assert_eq!(full, Verdict::Known(p));
    }

    match full {
        Verdict::Known(Protocol::H2) => assert!(data.starts_with(H2_PREFACE)),
        Verdict::Known(Protocol::Http1) => assert!(http1_request_line(data), "{data:?}"),
        Verdict::Known(Protocol::Opaque) => {
            assert!(
                !data.starts_with(H2_PREFACE) && !http1_request_line(data),
                "{data:?}"
            )
        }
        Verdict::NeedMore => {
            assert!(
                !data.starts_with(H2_PREFACE) && !http1_request_line(data),
                "{data:?}"
            )
        }
    }

    // The same bytes arriving in chunks: classify's answer, or opaque at EOF while undecided.
    let mut io = Chunked {
        data,
        chunk: usize::from(chunk).max(1),
    };
    let (protocol, prefix) = runtime()
        .block_on(detect(&mut io, Duration::from_secs(60)))
        .expect("in-memory reads do not fail");
    assert!(data.starts_with(&prefix));
    match full {
        Verdict::Known(p) => assert_eq!(protocol, p),
        Verdict::NeedMore if data.len() < MAX_PEEK => {
            assert_eq!(protocol, Protocol::Opaque);
            assert_eq!(
                &prefix[..],
                data,
                "undecided: everything read, to be replayed"
            );
        }
        Verdict::NeedMore => assert_eq!((protocol, prefix.len()), (Protocol::Opaque, MAX_PEEK)),
    }
});
