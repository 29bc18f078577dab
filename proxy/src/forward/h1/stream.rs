//! A whole byte stream of pipelined requests cut into messages with the codec's pieces, the
//! way the wiring will: head, framing decision, body. Used by the differential test and the
//! fuzz targets; it buffers everything, so it is not the data path itself.

use super::chunked::{ChunkedDecoder, Decoded};
use super::error::{ChunkError, HeadError};
use super::framing::{request_body, BodyFraming};
use super::head::{parse_request, Limits, RequestHead};

/// One request as framed: its head and its body's content (chunk data joined).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FramedRequest {
    pub head: RequestHead,
    /// The message's bytes in the stream (head, body, trailers).
    pub raw: std::ops::Range<usize>,
    pub content: Vec<u8>,
}

/// How a stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// After a complete message, with no byte left over.
    Clean,
    /// In the middle of a message (the peer would be waited for).
    Incomplete,
    /// After a message that asked to close, with bytes left over (never read).
    Closed,
    Head(HeadError),
    Body(ChunkError),
}

/// Frames every request of `input`, stopping at the first refusal, incompleteness or close.
pub fn frame_requests(input: &[u8], limits: &Limits) -> (Vec<FramedRequest>, StreamEnd) {
    let mut requests = Vec::new();
    let mut fields = Vec::new();
    let mut at = 0;
    while at < input.len() {
        let head = match parse_request(&input[at..], limits, &mut fields) {
            Ok(Some(head)) => head,
            Ok(None) => return (requests, StreamEnd::Incomplete),
            Err(error) => return (requests, StreamEnd::Head(error)),
        };
        let body_start = at + head.end;
        let (content, body_end) = match body(&input[body_start..], request_body(&head), limits) {
            Ok(Some((content, len))) => (content, body_start + len),
            Ok(None) => return (requests, StreamEnd::Incomplete),
            Err(error) => return (requests, StreamEnd::Body(error)),
        };
        requests.push(FramedRequest {
            head,
            raw: at..body_end,
            content,
        });
        at = body_end;
        if !head.connection.keep_alive && at < input.len() {
            return (requests, StreamEnd::Closed);
        }
    }
    (requests, StreamEnd::Clean)
}

/// The body at the front of `input`: its content and its length on the wire, `None` if cut.
fn body(
    input: &[u8],
    framing: BodyFraming,
    limits: &Limits,
) -> Result<Option<(Vec<u8>, usize)>, ChunkError> {
    match framing {
        BodyFraming::None => Ok(Some((Vec::new(), 0))),
        BodyFraming::Length(n) => Ok(usize::try_from(n)
            .ok()
            .and_then(|n| input.get(..n))
            .map(|bytes| (bytes.to_vec(), bytes.len()))),
        BodyFraming::Chunked => chunked_content(input, limits),
        BodyFraming::CloseDelimited => Ok(Some((input.to_vec(), input.len()))),
    }
}

/// A chunked body at the front of `input`: its content and its length on the wire, `None`
/// if cut short.
pub fn chunked_content(
    input: &[u8],
    limits: &Limits,
) -> Result<Option<(Vec<u8>, usize)>, ChunkError> {
    let mut decoder = ChunkedDecoder::new(limits.max_head_bytes);
    let (mut content, mut at) = (Vec::new(), 0);
    loop {
        match decoder.step(&input[at..])? {
            Decoded::Data(n) => {
                content.extend_from_slice(&input[at..at + n]);
                at += n;
            }
            Decoded::Framing(n) => at += n,
            Decoded::End(n) => return Ok(Some((content, at + n))),
        }
        if at == input.len() {
            return Ok(None);
        }
    }
}
