//! Writing a message body onto a connection in the framing its head announced (RFC 9112 §6,
//! §7.1): Content-Length counted, chunked with trailers, close-delimited raw.
//!
//! Nothing is buffered here: each data frame leaves in one vectored write together with its
//! chunk framing (the chunk-size line comes from a stack buffer), the head too when the body's
//! first frame is already there, and the last chunk with its terminator when the body says it
//! ended. The writer is flushed whenever the body has nothing ready and at the end, so a
//! buffered writer (TLS) never sits on bytes the peer waits for.

use std::future::poll_fn;
use std::io;
use std::pin::pin;
use std::task::Poll;

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::Body;
use tokio::io::{AsyncWrite, AsyncWriteExt};

// Until the lead's `h1/fields.rs` lands (branch wip/h1wire), a copy of its `OutFraming` as
// H1WIRE.md defines it; replaced by `use super::fields::OutFraming` on merge.
/// How the body that follows a written head is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutFraming {
    None,
    Length(u64),
    Chunked,
    Close,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a body could not be sent whole. The connection is then unusable: the caller closes it
/// (the peer sees a short or unterminated body, never a complete wrong one).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The body itself failed (e.g. the client's request body broke off).
    #[error("body failed: {0}")]
    Body(#[source] BoxError),
    #[error("writing the body failed: {0}")]
    Io(#[from] io::Error),
    #[error("body longer than its Content-Length of {0}")]
    TooLong(u64),
    #[error("body ended after {sent} of its Content-Length of {expected} bytes")]
    TooShort { sent: u64, expected: u64 },
}

/// Writes `body` to `write` framed as `framing` (Length: exactly n bytes else an error;
/// Chunked: one chunk per non-empty data frame, trailers after the last chunk; Close: raw, the
/// caller shuts the write side down after; None: nothing, the body is not polled), flushing
/// at the end of the body and whenever the body is pending.
pub async fn send_body<W, B>(write: &mut W, body: B, framing: OutFraming) -> Result<(), SendError>
where
    W: AsyncWrite + Unpin,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    send_message(write, &[], body, framing).await
}

/// [`send_body`] after `head` (a message head, or nothing): the head leaves in the same write
/// as the body's first frame when that frame is ready at once.
pub async fn send_message<W, B>(
    write: &mut W,
    head: &[u8],
    body: B,
    framing: OutFraming,
) -> Result<(), SendError>
where
    W: AsyncWrite + Unpin,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut out = Out {
        write,
        head,
        framing,
        sent: 0,
        ended: false,
    };
    if framing == OutFraming::None {
        return out.end(None).await;
    }
    let mut body = pin!(body);
    loop {
        let ready = poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await;
        let frame = match ready {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                out.flush().await?;
                poll_fn(|cx| body.as_mut().poll_frame(cx)).await
            }
        };
        let frame = match frame {
            None => return out.end(None).await,
            Some(Err(error)) => return Err(SendError::Body(error.into())),
            Some(Ok(frame)) => frame,
        };
        match frame.into_data() {
            Ok(data) => {
                if body.is_end_stream() {
                    out.last_data(data).await?;
                    // A body that said it ended yields `None` at once; polling it lets one that
                    // gives something back on its end (a connection's read side) do so.
                    let _ = poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await;
                    return Ok(());
                }
                out.data(data).await?;
            }
            Err(frame) => {
                // Trailers end the body; any other kind of frame is not HTTP/1's to send.
                if let Ok(trailers) = frame.into_trailers() {
                    return out.end(Some(&trailers)).await;
                }
            }
        }
    }
}

/// The write side of one message body.
struct Out<'a, W> {
    write: &'a mut W,
    /// Head bytes not written yet (they go with the first write).
    head: &'a [u8],
    framing: OutFraming,
    /// Body bytes sent so far (payload, without chunk framing).
    sent: u64,
    ended: bool,
}

/// `0\r\n`: the last chunk (without the trailer section's end).
const LAST_CHUNK: &[u8] = b"0\r\n";
const CRLF: &[u8] = b"\r\n";

impl<W: AsyncWrite + Unpin> Out<'_, W> {
    /// A data frame that is not known to be the last.
    async fn data(&mut self, data: Bytes) -> Result<(), SendError> {
        self.check_length(data.len())?;
        match self.framing {
            OutFraming::Chunked if data.is_empty() => Ok(()),
            OutFraming::Chunked => {
                let (line, len) = chunk_size_line(data.len());
                let mut buf = self.head.chain(&line[..len]).chain(&data[..]).chain(CRLF);
                self.put(&mut buf).await
            }
            _ => self.put(&mut self.head.chain(&data[..])).await,
        }
    }

    /// The last data frame: written with the body's end in the same write.
    async fn last_data(&mut self, data: Bytes) -> Result<(), SendError> {
        self.check_length(data.len())?;
        match self.framing {
            OutFraming::Chunked if !data.is_empty() => {
                let (line, len) = chunk_size_line(data.len());
                let end = b"\r\n0\r\n\r\n";
                let mut buf = self
                    .head
                    .chain(&line[..len])
                    .chain(&data[..])
                    .chain(&end[..]);
                self.ended = true;
                self.put(&mut buf).await?;
            }
            OutFraming::Chunked => {}
            _ => self.put(&mut self.head.chain(&data[..])).await?,
        }
        self.end(None).await
    }

    /// The body ended (with `trailers`, if any): the length is checked, the last chunk and
    /// trailer section written, and everything flushed.
    async fn end(&mut self, trailers: Option<&HeaderMap>) -> Result<(), SendError> {
        if let OutFraming::Length(expected) = self.framing {
            if self.sent != expected {
                return Err(SendError::TooShort {
                    sent: self.sent,
                    expected,
                });
            }
        }
        if self.framing == OutFraming::Chunked && !self.ended {
            self.ended = true;
            let mut section = Vec::new();
            // Trailer fields as the body gives them (RFC 9112 §7.1.2); only a chunked body can
            // carry them, so with other framings they are dropped, as hyper does.
            for (name, value) in trailers.into_iter().flatten() {
                section.extend_from_slice(name.as_str().as_bytes());
                section.extend_from_slice(b": ");
                section.extend_from_slice(value.as_bytes());
                section.extend_from_slice(CRLF);
            }
            let mut buf = self.head.chain(LAST_CHUNK).chain(&section[..]).chain(CRLF);
            self.put(&mut buf).await?;
        } else if !self.head.is_empty() {
            let mut head = self.head;
            self.put(&mut head).await?;
        }
        self.ended = true;
        self.flush().await
    }

    fn check_length(&mut self, len: usize) -> Result<(), SendError> {
        self.sent += len as u64;
        match self.framing {
            OutFraming::Length(expected) if self.sent > expected => {
                Err(SendError::TooLong(expected))
            }
            _ => Ok(()),
        }
    }

    async fn put(&mut self, buf: &mut impl Buf) -> Result<(), SendError> {
        self.write.write_all_buf(buf).await?;
        self.head = &[];
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SendError> {
        if !self.head.is_empty() {
            let mut head = self.head;
            self.put(&mut head).await?;
        }
        Ok(self.write.flush().await?)
    }
}

/// The chunk-size line for `len` bytes: lowercase hex without leading zeros, then CRLF.
fn chunk_size_line(len: usize) -> ([u8; 18], usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut line = [0u8; 18];
    let digits = ((usize::BITS - len.leading_zeros()).div_ceil(4)).max(1) as usize;
    for (at, slot) in line[..digits].iter_mut().enumerate() {
        let shift = 4 * (digits - 1 - at);
        *slot = HEX[(len >> shift) & 0xf];
    }
    line[digits..digits + 2].copy_from_slice(CRLF);
    (line, digits + 2)
}

#[cfg(test)]
#[path = "send_tests.rs"]
mod tests;
