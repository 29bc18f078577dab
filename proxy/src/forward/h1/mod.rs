//! The HTTP/1 codec on `httparse` (issue 17), built to replace hyper on the proxy's HTTP/1 data
//! path: pure functions, bytes in and decisions out, no I/O.
//!
//! - [`head`]: request and response heads, parsed in place (fields as offsets into the
//!   caller's buffer, order, case and repeats kept, so the original bytes can be forwarded),
//!   indexed by the few fields the proxy reads, and checked against the rules that decide
//!   framing (RFC 9112 §2.2, §3.2, §5, §6; RFC 9110 §5, §7.2, §8.6), with [`target`] for the
//!   request-target's form and Host.
//! - [`framing`]: the body length decision (RFC 9112 §6.3).
//! - [`chunked`]: a chunked-body checker that passes the bytes through unchanged (§7.1).
//! - [`error`]: one variant per refusal, its status (400/431/501/505) and its stable
//!   `meshtrace-proxy-error` name.
//! - [`pool`]: head buffers lent only while a head is in flight.
//! - [`stream`]: the pieces composed over a buffered stream of pipelined requests (for the
//!   differential test in `proxy/tests/h1_codec.rs` and for fuzzing).
//!
//! Not yet wired in; what the next session does to put it on the data path:
//! - a connection task per client connection that reads into a [`pool::HeadBuf`] taken on the
//!   first byte of a head (the head timeout counts from there), calls [`head::parse_request`]
//!   until complete, answers a [`error::HeadError`] with its status and `meshtrace-proxy-error`,
//!   and drops the buffer once the head was written upstream;
//! - writing the head upstream from the original bytes minus hop-by-hop fields (by their spans)
//!   plus the trace fields (one vectored write), then the body by [`framing::request_body`],
//!   Content-Length counted and chunked checked by [`chunked::ChunkedDecoder`] as it streams;
//!   a body error before anything was sent → 400, after → reset/close both sides;
//! - the response side the same way with [`head::parse_response`] and [`framing::response_body`]
//!   (a refused response head → 502), 1xx relayed (100-continue decided by the application),
//!   101 and 2xx-to-CONNECT handed to the tunnel code, pipelining in order, keep-alive and the
//!   upstream pool; the `MESHTRACE_HTTP1_MAX_HEADER_BYTES` setting into [`head::Limits`]; the
//!   tracing layers on top.
//!
//! Proof so far: unit tests per RFC rule (`tests.rs`), the differential test against hyper's
//! server and client (`proxy/tests/h1_codec.rs`), and the fuzz bodies below, run by the
//! cargo-fuzz targets `h1_request`, `h1_response` and `h1_chunked` (`scripts/fuzz.sh`).

pub mod body;
pub mod chunked;
pub mod client;
pub mod error;
pub mod exchange;
pub mod fields;
pub mod framing;
pub mod head;
pub mod pool;
pub mod send;
pub mod server;
pub mod stream;
pub mod target;

pub use self::body::{RecvBody, Returned};
pub use self::chunked::{ChunkedDecoder, Decoded};
pub use self::error::{ChunkError, HeadError};
pub use self::framing::{request_body, response_body, BodyFraming};
pub use self::head::{
    parse_request, parse_response, Field, FieldKind, Limits, RequestHead, ResponseHead,
};
pub use self::pool::{HeadBuf, HeadPool};

/// Prefixes checked one by one up to here, then sparsely (quadratic cost otherwise).
const DENSE_PREFIXES: usize = 512;

/// Fuzz body for request heads: never panics; an accepted head lies within the input, holds
/// no bare CR/LF or NUL and no CL+TE, and every shorter prefix of it asks for more bytes
/// (nothing is decided before the head is complete); framing a stream never panics.
pub fn fuzz_request_head(data: &[u8]) {
    let mut fields = Vec::new();
    if let Ok(Some(head)) = parse_request(data, &Limits::default(), &mut fields) {
        assert!(head.start <= head.end && head.end <= data.len());
        assert!(head.target.end as usize <= head.end);
        assert!(fields.iter().all(|f| f.value.end as usize <= head.end));
        let lines = &data[head.start..head.end];
        assert!(lines.ends_with(b"\r\n\r\n") && !lines.contains(&0));
        let crlf = lines.windows(2).filter(|w| w == b"\r\n").count();
        let lf = lines.iter().filter(|b| **b == b'\n').count();
        let cr = lines.iter().filter(|b| **b == b'\r').count();
        assert!(crlf == lf && crlf == cr, "only CRLF line ends");
        assert!(!(head.body.chunked && head.body.content_length.is_some()));
        let _ = request_body(&head);
        let prefixes = (0..head.end).filter(|&end| end <= DENSE_PREFIXES || end % 61 == 0);
        for end in prefixes {
            let partial = parse_request(&data[..end], &Limits::default(), &mut fields);
            assert_eq!(
                partial,
                Ok(None),
                "prefix of {end} bytes of an accepted head"
            );
        }
    }
    let _ = stream::frame_requests(data, &Limits::default());
}

/// Fuzz body for response heads: as [`fuzz_request_head`], for every request method class.
pub fn fuzz_response_head(data: &[u8]) {
    let mut fields = Vec::new();
    if let Ok(Some(head)) = parse_response(data, &Limits::default(), &mut fields) {
        assert!(head.start <= head.end && head.end <= data.len());
        assert!(fields.iter().all(|f| f.value.end as usize <= head.end));
        for method in [
            head::Method::Head,
            head::Method::Connect,
            head::Method::Other,
        ] {
            let _ = response_body(method, &head);
        }
    }
}

/// Fuzz body for the chunked decoder: fed whole and fed one byte at a time, it reaches the
/// same verdict at the same offset, and never claims more than it was given.
pub fn fuzz_chunked(data: &[u8]) {
    let mut whole = ChunkedDecoder::new(1024);
    let at_once = whole.feed(data);
    let mut bytewise = ChunkedDecoder::new(1024);
    let mut one_by_one = Ok((0, false));
    for (at, byte) in data.iter().enumerate() {
        match bytewise.feed(std::slice::from_ref(byte)) {
            Ok((_, true)) => {
                one_by_one = Ok((at + 1, true));
                break;
            }
            Ok(_) => one_by_one = Ok((at + 1, false)),
            Err(error) => {
                one_by_one = Err(error);
                break;
            }
        }
    }
    assert_eq!(at_once, one_by_one);
}

#[cfg(test)]
mod tests;
