//! The proxy's HTTP/1 data path on `httparse` (issue 17): heads forwarded with their bytes,
//! field order, case and repeats; framing that two parsers could read differently refused;
//! buffers held only while a message is in flight. hyper stays for h2, the admin server and
//! as the reference the tests compare against (`MESHTRACE_HTTP1_CODEC=hyper` selects it).
//!
//! The codec (pure functions, bytes in and decisions out):
//! - [`head`]: request and response heads, parsed in place (fields as offsets into the
//!   caller's buffer), indexed by the few fields the proxy reads, and checked against the
//!   rules that decide framing (RFC 9112 §2.2, §3.2, §5, §6; RFC 9110 §5, §7.2, §8.6), with
//!   [`target`] for the request-target's form and Host.
//! - [`framing`]: the body length decision (RFC 9112 §6.3).
//! - [`chunked`]: a chunked-body checker (§7.1).
//! - [`error`]: one variant per refusal, its status (400/431/501/505) and its stable
//!   `meshtrace-proxy-error` name.
//! - [`fields`]: heads to `http` parts and back; the parts keep the received head
//!   ([`fields::RawHead`]), so fields the layers left alone leave byte for byte, in place.
//!
//! The connection side:
//! - [`server`]: one client connection: heads read into buffers lent by [`pool`], requests
//!   handed to the connection's service stack (the tracing layers see `http` parts as on the
//!   hyper path), responses written in order (pipelining), keep-alive, 1xx relay, upgrades.
//! - [`client`]: one upstream connection: the request written from its parts, its body sent
//!   beside the response ([`send`]), the response read into parts; pooled by
//!   `forward::pool`.
//! - [`body`]: a message body read from a connection by its framing, handing the connection
//!   back at its end; [`send`]: a body written in its framing.
//! - [`exchange`]: what server and client pass through a message's extensions: the
//!   connection after a protocol switch, interim (1xx) responses.
//! - [`stream`]: the codec over a buffered stream of pipelined requests (for the
//!   differential test in `proxy/tests/h1_codec.rs` and for fuzzing).
//!
//! Proof: unit tests per RFC rule (`tests.rs`) and per module, the differential test against
//! hyper's server and client (`proxy/tests/h1_codec.rs`), every data-path test of the proxy on
//! this path, and the fuzz bodies below, run by the cargo-fuzz targets `h1_request`,
//! `h1_response` and `h1_chunked` (`scripts/fuzz.sh`).

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
