//! Writing a message body onto a connection in the framing its head announced (RFC 9112 §6,
//! §7.1): Content-Length counted, chunked with trailers, close-delimited raw.
//!
//! Nothing is copied or buffered here: each data frame leaves in one vectored write together
//! with its chunk framing (the chunk-size line comes from an inline array), the head too when
//! the body's first frame is already there, and the last chunk with its terminator when the
//! body says it ended. The writer is flushed whenever the body has nothing ready and at the
//! end, so a buffered writer (TLS) never sits on bytes the peer waits for.
//!
//! [`BodySender`] is the state machine, polled by hand (it is `Unpin`, so the upstream client
//! can drive it beside the response and move it elsewhere if the response comes first);
//! [`send_body`] and [`send_message`] are the async forms.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::Body;
use tokio::io::AsyncWrite;

use super::fields::OutFraming;

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
    send_message(write, Bytes::new(), body, framing).await
}

/// [`send_body`] after `head` (a message head, or nothing): the head leaves in the same write
/// as the body's first frame when that frame is ready at once.
pub async fn send_message<W, B>(
    write: &mut W,
    head: Bytes,
    body: B,
    framing: OutFraming,
) -> Result<(), SendError>
where
    W: AsyncWrite + Unpin,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let body = pin!(body);
    let mut sender = BodySender::new(head, body, framing);
    poll_fn(|cx| sender.poll_send(cx, Pin::new(&mut *write))).await
}

/// Sends a head and the body after it; see the module documentation.
pub struct BodySender<B> {
    body: B,
    framing: OutFraming,
    /// Payload bytes taken from the body so far.
    sent: u64,
    out: Out,
    /// Everything is queued in `out`; nothing more comes from the body.
    ended: bool,
    /// Bytes were written since the last flush.
    dirty: bool,
}

impl<B> std::fmt::Debug for BodySender<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodySender")
            .field("framing", &self.framing)
            .field("sent", &self.sent)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl<B> BodySender<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// Sends `head` (may be empty) then `body` framed as `framing`.
    pub fn new(head: Bytes, body: B, framing: OutFraming) -> Self {
        BodySender {
            body,
            framing,
            sent: 0,
            out: Out {
                head,
                ..Out::default()
            },
            // No body: the head alone; the body is never polled.
            ended: framing == OutFraming::None,
            dirty: false,
        }
    }

    /// Whether everything was sent (and flushed).
    pub fn is_done(&self) -> bool {
        self.ended && !self.out.has_remaining() && !self.dirty
    }

    /// Writes what the body has ready; `Ready(Ok(()))` once the whole message was written and
    /// flushed. After an error the message is broken: stop polling and close the connection.
    pub fn poll_send<W>(
        &mut self,
        cx: &mut Context<'_>,
        mut write: Pin<&mut W>,
    ) -> Poll<Result<(), SendError>>
    where
        W: AsyncWrite + ?Sized,
    {
        loop {
            // The body is polled before anything is written, so that its first frame leaves
            // with the head.
            if !self.ended && self.out.holds_no_body() {
                match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Pending => {
                        ready!(self.poll_write_out(cx, write.as_mut()))?;
                        if self.dirty {
                            ready!(write.as_mut().poll_flush(cx))?;
                            self.dirty = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(None) => self.end(None)?,
                    Poll::Ready(Some(Err(error))) => {
                        return Poll::Ready(Err(SendError::Body(error.into())))
                    }
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => self.data(data, cx)?,
                        // Trailers end the body; any other kind of frame is not HTTP/1's.
                        Err(frame) => {
                            if let Ok(trailers) = frame.into_trailers() {
                                self.end(Some(&trailers))?;
                            }
                        }
                    },
                }
            }
            ready!(self.poll_write_out(cx, write.as_mut()))?;
            if self.ended {
                if self.dirty {
                    ready!(write.as_mut().poll_flush(cx))?;
                    self.dirty = false;
                }
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Writes everything queued.
    fn poll_write_out<W>(
        &mut self,
        cx: &mut Context<'_>,
        mut write: Pin<&mut W>,
    ) -> Poll<Result<(), SendError>>
    where
        W: AsyncWrite + ?Sized,
    {
        while self.out.has_remaining() {
            let n = ready!(tokio_util::io::poll_write_buf(
                write.as_mut(),
                cx,
                &mut self.out
            ))?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
            }
            self.dirty = true;
        }
        Poll::Ready(Ok(()))
    }

    /// Queues a data frame, with the body's end if the body says it ended.
    fn data(&mut self, data: Bytes, cx: &mut Context<'_>) -> Result<(), SendError> {
        self.sent += data.len() as u64;
        if let OutFraming::Length(expected) = self.framing {
            if self.sent > expected {
                return Err(SendError::TooLong(expected));
            }
        }
        let last = self.body.is_end_stream();
        if last {
            // A body that says it ended yields `None` at once; polling it lets one that gives
            // something back at its end (a connection's read side) do so now.
            let _ = Pin::new(&mut self.body).poll_frame(cx);
        }
        match self.framing {
            OutFraming::Chunked if data.is_empty() => {
                if last {
                    self.end(None)?;
                }
            }
            OutFraming::Chunked => {
                self.out.line = ChunkLine::size(data.len());
                self.out.data = data;
                if last {
                    // The last chunk and the empty trailer section leave in the same write.
                    self.out.tail = b"\r\n0\r\n\r\n";
                    self.ended = true;
                } else {
                    self.out.tail = CRLF;
                }
            }
            _ => {
                self.out.data = data;
                if last {
                    self.end(None)?;
                }
            }
        }
        Ok(())
    }

    /// The body ended (with `trailers`, if any): the length is checked and the last chunk and
    /// trailer section queued.
    fn end(&mut self, trailers: Option<&HeaderMap>) -> Result<(), SendError> {
        self.check_length()?;
        self.ended = true;
        if self.framing == OutFraming::Chunked {
            self.out.line = ChunkLine::size(0);
            // Trailer fields as the body gives them (RFC 9112 §7.1.2); only a chunked body can
            // carry them, so with other framings they are dropped, as hyper does.
            if let Some(trailers) = trailers.filter(|t| !t.is_empty()) {
                let mut section = Vec::new();
                for (name, value) in trailers {
                    section.extend_from_slice(name.as_str().as_bytes());
                    section.extend_from_slice(b": ");
                    section.extend_from_slice(value.as_bytes());
                    section.extend_from_slice(CRLF);
                }
                self.out.data = Bytes::from(section);
            }
            self.out.tail = CRLF;
        }
        Ok(())
    }

    fn check_length(&self) -> Result<(), SendError> {
        match self.framing {
            OutFraming::Length(expected) if self.sent != expected => Err(SendError::TooShort {
                sent: self.sent,
                expected,
            }),
            _ => Ok(()),
        }
    }
}

const CRLF: &[u8] = b"\r\n";

/// A chunk-size line: lowercase hex without leading zeros, then CRLF; `at..end` is unwritten.
#[derive(Clone, Copy, Debug, Default)]
struct ChunkLine {
    bytes: [u8; 18],
    at: u8,
    end: u8,
}

impl ChunkLine {
    fn size(len: usize) -> ChunkLine {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut bytes = [0u8; 18];
        let digits = ((usize::BITS - len.leading_zeros()).div_ceil(4)).max(1) as usize;
        for (at, slot) in bytes[..digits].iter_mut().enumerate() {
            let shift = 4 * (digits - 1 - at);
            *slot = HEX[(len >> shift) & 0xf];
        }
        bytes[digits..digits + 2].copy_from_slice(CRLF);
        ChunkLine {
            bytes,
            at: 0,
            end: (digits + 2) as u8,
        }
    }

    fn rest(&self) -> &[u8] {
        &self.bytes[self.at as usize..self.end as usize]
    }
}

/// The bytes queued for one write, in order: head, chunk-size line, data, tail.
#[derive(Debug, Default)]
struct Out {
    head: Bytes,
    line: ChunkLine,
    data: Bytes,
    tail: &'static [u8],
}

impl Out {
    /// Nothing but (part of) the head is queued.
    fn holds_no_body(&self) -> bool {
        self.line.rest().is_empty() && self.data.is_empty() && self.tail.is_empty()
    }
}

impl Buf for Out {
    fn remaining(&self) -> usize {
        self.head.len() + self.line.rest().len() + self.data.len() + self.tail.len()
    }

    fn chunk(&self) -> &[u8] {
        [&self.head[..], self.line.rest(), &self.data[..], self.tail]
            .into_iter()
            .find(|part| !part.is_empty())
            .unwrap_or_default()
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let parts = [&self.head[..], self.line.rest(), &self.data[..], self.tail];
        let mut n = 0;
        for part in parts.into_iter().filter(|part| !part.is_empty()) {
            let Some(slot) = dst.get_mut(n) else { break };
            *slot = IoSlice::new(part);
            n += 1;
        }
        n
    }

    fn advance(&mut self, mut cnt: usize) {
        let head = cnt.min(self.head.len());
        self.head.advance(head);
        if self.head.is_empty() {
            // Written: let go of its buffer now, not when the next frame replaces it.
            self.head = Bytes::new();
        }
        cnt -= head;
        let line = cnt.min(self.line.rest().len());
        self.line.at += line as u8;
        cnt -= line;
        let data = cnt.min(self.data.len());
        self.data.advance(data);
        if self.data.is_empty() {
            self.data = Bytes::new();
        }
        cnt -= data;
        let tail = cnt.min(self.tail.len());
        self.tail = &self.tail[tail..];
    }
}

#[cfg(test)]
#[path = "send_tests.rs"]
mod tests;
