//! A message body read from a connection by its framing (RFC 9112 §6.3): Content-Length counted,
//! chunked checked by [`ChunkedDecoder`] (the chunks' data as data frames, a trailer section as
//! a trailers frame, §7.1.2), close-delimited until the end of the stream.
//!
//! The body owns the connection's read side while it is read, and hands it back, with the bytes
//! read past the body's end (the next pipelined message), through a oneshot channel as soon as
//! its last byte was read, or when it is dropped ([`Returned::complete`] then says whether the
//! read side stands at the body's end, so that the connection can carry another message). It
//! reads into a small buffer only while polled, grows it only while reads fill it, never reads
//! past a Content-Length body's end, and holds nothing once ended.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use super::chunked::{ChunkedDecoder, Decoded};
use super::error::ChunkError;
use super::exchange::BoxRead;
use super::framing::BodyFraming;
use super::head::{trim_ows, DEFAULT_MAX_HEAD_BYTES};

/// The first read's size; later reads double it while they fill the buffer, up to [`MAX_READ`].
const FIRST_READ: usize = 4 * 1024;
/// The largest read.
const MAX_READ: usize = 64 * 1024;

/// The connection's read side given back when the body ends or is dropped.
pub struct Returned {
    pub read: BoxRead,
    /// Bytes read past the body (the start of the next message).
    pub buf: BytesMut,
    /// The read side stands at the body's end: it was read to its end, or its rest was already
    /// buffered when it was dropped. `false`: the connection cannot carry another message.
    pub complete: bool,
}

impl std::fmt::Debug for Returned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Returned")
            .field("buf", &self.buf.len())
            .field("complete", &self.complete)
            .finish_non_exhaustive()
    }
}

/// Why a body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("invalid chunked body: {0}")]
    Chunk(#[from] ChunkError),
    #[error("the connection ended before the body did")]
    Incomplete,
    #[error("reading the body: {0}")]
    Io(#[from] io::Error),
}

/// What is left of the body, by its framing.
#[derive(Debug)]
enum Kind {
    /// Content-Length: bytes still to come.
    Length(u64),
    /// Chunked; the first `framing` bytes of the buffer are chunk lines and trailers read
    /// since the last data (kept until the decoder says what they were).
    Chunked {
        decoder: ChunkedDecoder,
        framing: usize,
    },
    Close,
}

/// The read side while the body is read.
struct Conn {
    read: BoxRead,
    buf: BytesMut,
    read_size: usize,
}

/// A message body read from a connection; see the module documentation.
pub struct RecvBody {
    kind: Kind,
    /// `None` once the body ended (the read side went back).
    conn: Option<Conn>,
    done: Option<oneshot::Sender<Returned>>,
}

impl std::fmt::Debug for RecvBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBody")
            .field("kind", &self.kind)
            .field("ended", &self.conn.is_none())
            .finish_non_exhaustive()
    }
}

/// What the buffered bytes gave.
enum Step {
    Frame(Frame<Bytes>),
    /// The body ended with this frame (or with none).
    Last(Option<Frame<Bytes>>),
    NeedMore,
}

impl RecvBody {
    /// `buf`: bytes already read past the head (may hold the body's start and pipelined data).
    /// A chunked body's trailer section may hold up to the default head limit; see
    /// [`RecvBody::max_trailer_bytes`].
    pub fn new(
        framing: BodyFraming,
        read: BoxRead,
        buf: BytesMut,
        done: oneshot::Sender<Returned>,
    ) -> Self {
        let kind = match framing {
            BodyFraming::None | BodyFraming::Length(0) => Kind::Length(0),
            BodyFraming::Length(n) => Kind::Length(n),
            BodyFraming::Chunked => Kind::Chunked {
                decoder: ChunkedDecoder::new(DEFAULT_MAX_HEAD_BYTES),
                framing: 0,
            },
            BodyFraming::CloseDelimited => Kind::Close,
        };
        let mut body = RecvBody {
            kind,
            conn: Some(Conn {
                read,
                buf,
                read_size: FIRST_READ,
            }),
            done: Some(done),
        };
        if matches!(body.kind, Kind::Length(0)) {
            body.finish(true);
        }
        body
    }

    /// Bounds a chunked body's trailer section (the head limit, `h1::Limits::max_head_bytes`).
    pub fn max_trailer_bytes(mut self, max: usize) -> Self {
        if let Kind::Chunked { decoder, .. } = &mut self.kind {
            *decoder = ChunkedDecoder::new(max);
        }
        self
    }

    /// Gives the read side back; the body has ended.
    fn finish(&mut self, complete: bool) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        // An empty buffer may still share its allocation with frames in flight: hold none.
        let buf = if conn.buf.is_empty() {
            BytesMut::new()
        } else {
            conn.buf
        };
        if let Some(done) = self.done.take() {
            let _ = done.send(Returned {
                read: conn.read,
                buf,
                complete,
            });
        }
    }

    /// The next frame from the bytes already buffered.
    fn decode(&mut self) -> Result<Step, ChunkError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(Step::Last(None));
        };
        let buf = &mut conn.buf;
        match &mut self.kind {
            Kind::Length(_) | Kind::Close if buf.is_empty() => Ok(Step::NeedMore),
            Kind::Length(remaining) => {
                let n = buf
                    .len()
                    .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                *remaining -= n as u64;
                let data = Frame::data(buf.split_to(n).freeze());
                Ok(if *remaining == 0 {
                    Step::Last(Some(data))
                } else {
                    Step::Frame(data)
                })
            }
            Kind::Close => Ok(Step::Frame(Frame::data(buf.split().freeze()))),
            Kind::Chunked { decoder, framing } => loop {
                if *framing == buf.len() {
                    return Ok(Step::NeedMore);
                }
                match decoder.step(&buf[*framing..])? {
                    Decoded::Framing(n) => *framing += n,
                    Decoded::Data(n) => {
                        buf.advance(*framing);
                        *framing = 0;
                        return Ok(Step::Frame(Frame::data(buf.split_to(n).freeze())));
                    }
                    Decoded::End(n) => {
                        let run = buf.split_to(*framing + n);
                        *framing = 0;
                        return Ok(Step::Last(trailers(&run)?.map(Frame::trailers)));
                    }
                }
            },
        }
    }

    /// Reads more into the buffer: the bytes read, 0 at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        let mut want = conn.read_size;
        if let Kind::Length(remaining) = self.kind {
            // Never past the body: the connection's next bytes stay in the socket.
            let missing = remaining.saturating_sub(conn.buf.len() as u64);
            want = want.min(usize::try_from(missing).unwrap_or(usize::MAX).max(1));
        }
        if conn.buf.capacity() == conn.buf.len() {
            conn.buf.reserve(want);
        }
        let spare = conn.buf.capacity() - conn.buf.len();
        let mut limited = (&mut conn.buf).limit(want.min(spare));
        let n = ready!(tokio_util::io::poll_read_buf(
            conn.read.as_mut(),
            cx,
            &mut limited
        ))?;
        if n == conn.read_size && conn.read_size < MAX_READ {
            conn.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }

    /// Dropped before its end: whether the rest of the body is already buffered (then it is
    /// skipped and the read side stands at the body's end).
    fn skip_buffered(&mut self) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return true;
        };
        let buf = &mut conn.buf;
        match &mut self.kind {
            Kind::Length(remaining) => match usize::try_from(*remaining) {
                Ok(n) if n <= buf.len() => {
                    buf.advance(n);
                    true
                }
                _ => false,
            },
            Kind::Chunked { decoder, framing } => match decoder.feed(&buf[*framing..]) {
                Ok((n, true)) => {
                    buf.advance(*framing + n);
                    true
                }
                _ => false,
            },
            Kind::Close => false,
        }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            match this.decode() {
                Ok(Step::Frame(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(Step::Last(frame)) => {
                    this.finish(true);
                    return Poll::Ready(frame.map(Ok));
                }
                Ok(Step::NeedMore) => {}
                Err(error) => {
                    this.finish(false);
                    return Poll::Ready(Some(Err(error.into())));
                }
            }
            match ready!(this.poll_fill(cx)) {
                Ok(0) if matches!(this.kind, Kind::Close) => {
                    this.finish(true);
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.finish(false);
                    return Poll::Ready(Some(Err(BodyError::Incomplete)));
                }
                Ok(_) => {}
                Err(error) => {
                    this.finish(false);
                    return Poll::Ready(Some(Err(error.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.conn, &self.kind) {
            (None, _) => SizeHint::with_exact(0),
            (Some(_), Kind::Length(remaining)) => SizeHint::with_exact(*remaining),
            (Some(_), _) => SizeHint::default(),
        }
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        if self.conn.is_some() {
            let complete = self.skip_buffered();
            self.finish(complete);
        }
    }
}

/// The trailer section of a chunked body's last framing bytes: the previous chunk's CRLF (if
/// any), the last-chunk line, trailer fields, and the final CRLF. The decoder already checked
/// their grammar; `None` for an empty section.
fn trailers(run: &[u8]) -> Result<Option<HeaderMap>, ChunkError> {
    let run = run.strip_prefix(b"\r\n").unwrap_or(run);
    let line_end = memchr::memmem::find(run, b"\r\n").ok_or(ChunkError::Trailer)?;
    let section = &run[line_end + 2..];
    if section == b"\r\n" {
        return Ok(None);
    }
    let lines = memchr::memmem::find_iter(section, b"\r\n").count();
    let mut slots = vec![httparse::EMPTY_HEADER; lines];
    let Ok(httparse::Status::Complete((_, fields))) = httparse::parse_headers(section, &mut slots)
    else {
        return Err(ChunkError::Trailer);
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes());
        let value = HeaderValue::from_bytes(trim_ows(field.value));
        let (Ok(name), Ok(value)) = (name, value) else {
            return Err(ChunkError::Trailer);
        };
        map.append(name, value);
    }
    Ok(Some(map))
}

#[cfg(test)]
mod tests;
