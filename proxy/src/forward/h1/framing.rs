//! How long a message body is, decided from a checked head (RFC 9112 §6.3, in its order).

use super::head::{BodyFields, Method, RequestHead, ResponseHead};

/// Where a message body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body: the next message (or, after a 101 or a 2xx to CONNECT, the tunnel) follows the head.
    None,
    /// Exactly this many bytes (never 0: that is `None`).
    Length(u64),
    /// Chunked; see [`super::chunked::ChunkedDecoder`].
    Chunked,
    /// Until the server closes the connection (responses only).
    CloseDelimited,
}

/// RFC 9112 §6.3 items 4–6 for a request: chunked, else Content-Length, else no body.
/// (The head check already refused every ambiguous combination, items 3–5.)
pub fn request_body(head: &RequestHead) -> BodyFraming {
    by_fields(&head.body).unwrap_or(BodyFraming::None)
}

/// RFC 9112 §6.3 for a response to a request with `method`: item 1 (HEAD; 1xx, 204, 304 have
/// no body), item 2 (a 2xx to CONNECT is a tunnel), items 4–5 (chunked, Content-Length), item 7
/// (else close-delimited). A 101 ends HTTP/1 on the connection: `None`, the tunnel follows.
pub fn response_body(method: Method, head: &ResponseHead) -> BodyFraming {
    let status = head.status;
    let no_body = method == Method::Head
        || (100..200).contains(&status)
        || status == 204
        || status == 304
        || (method == Method::Connect && (200..300).contains(&status));
    if no_body {
        return BodyFraming::None;
    }
    by_fields(&head.body).unwrap_or(BodyFraming::CloseDelimited)
}

fn by_fields(body: &BodyFields) -> Option<BodyFraming> {
    if body.chunked {
        return Some(BodyFraming::Chunked);
    }
    body.content_length.map(|length| match length {
        0 => BodyFraming::None,
        n => BodyFraming::Length(n),
    })
}
