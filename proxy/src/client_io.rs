//! The accepted client connection as the proxy reads and writes it: every byte counted for the
//! `meshtrace_proxy_bytes` family, and the bytes read to detect the protocol replayed to
//! whichever handler then serves the connection. One wrapper, so each read and write passes
//! through a single forwarding layer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::forward::h2_head::H2HeadGuard;
use crate::forward::head::HeadGuard;

pin_project_lite::pin_project! {
    /// A client stream that counts the bytes passing through it and first returns the bytes
    /// set by [`ClientIo::replay`].
    #[derive(Debug)]
    pub struct ClientIo<I> {
        #[pin]
        io: I,
        // Bytes already read from `io` (and counted then) that the next reads return first.
        replay: Bytes,
        received: Counter,
        sent: Counter,
        // HTTP/1 only: bounds the request heads read through this stream.
        head: Option<HeadGuard>,
        // h2 only: bounds how long a header block may stay open.
        h2_head: Option<H2HeadGuard>,
    }
}

impl<I> ClientIo<I> {
    /// Counts bytes read from `io` in `received` and bytes written to it in `sent`.
    pub fn new(io: I, received: Counter, sent: Counter) -> Self {
        ClientIo {
            io,
            replay: Bytes::new(),
            received,
            sent,
            head: None,
            h2_head: None,
        }
    }

    /// Ends the stream once an h2 header block stays open longer than `guard`'s timeout.
    pub fn guard_h2_heads(mut self, guard: H2HeadGuard) -> Self {
        self.h2_head = Some(guard);
        self
    }

    /// Enforces `guard` (HTTP/1 request head limits) on the bytes read from now on, the
    /// replayed ones included.
    pub fn guard_heads(mut self, guard: HeadGuard) -> Self {
        self.head = Some(guard);
        self
    }

    /// Makes the next reads return `prefix`, bytes already read from this stream (protocol
    /// detection), before anything new. They are not counted again.
    pub fn replay(mut self, prefix: Bytes) -> Self {
        self.replay = prefix;
        self
    }
}

impl<I: AsyncRead + AsyncWrite> AsyncRead for ClientIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        if this.h2_head.as_ref().is_some_and(H2HeadGuard::expired) {
            return Poll::Ready(Ok(()));
        }
        if let Some(head) = this.head.as_mut() {
            if let Some(cut) = head.poll_cut(cx, this.io.as_mut()) {
                return cut;
            }
        }
        let before = buf.filled().len();
        let result = if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.advance(n);
            if this.replay.is_empty() {
                // Release the detection buffer rather than hold it for the connection's life.
                *this.replay = Bytes::new();
            }
            Poll::Ready(Ok(()))
        } else {
            let result = this.io.as_mut().poll_read(cx, buf);
            let read = buf.filled().len() - before;
            if read > 0 {
                this.received.inc_by(read as u64);
            }
            result
        };
        if let Some(h2) = this.h2_head.as_mut() {
            match result {
                Poll::Ready(Ok(())) => h2.on_read(&buf.filled()[before..]),
                Poll::Pending if h2.poll_expired(cx) => return Poll::Ready(Ok(())),
                _ => {}
            }
            return result;
        }
        let Some(head) = this.head.as_mut() else {
            return result;
        };
        let cut = match result {
            Poll::Ready(Ok(())) => !head.on_read(&buf.filled()[before..]),
            Poll::Pending => head.poll_expired(cx),
            Poll::Ready(Err(_)) => false,
        };
        if !cut {
            return result;
        }
        // Nothing of a rejected head reaches hyper.
        buf.set_filled(before);
        head.poll_cut(cx, this.io).unwrap_or(Poll::Ready(Ok(())))
    }
}

impl<I: AsyncWrite> AsyncWrite for ClientIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let result = count_written(this.io.poll_write(cx, buf), this.sent);
        note_write(this.head, &result);
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let result = count_written(this.io.poll_write_vectored(cx, bufs), this.sent);
        note_write(this.head, &result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let result = this.io.poll_flush(cx);
        note_write(this.head, &result);
        result
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

/// Counts the bytes a write accepted.
#[inline]
fn count_written(result: Poll<io::Result<usize>>, sent: &Counter) -> Poll<io::Result<usize>> {
    if let Poll::Ready(Ok(written)) = result {
        sent.inc_by(written as u64);
    }
    result
}

/// Tells the head guard whether hyper's write or flush completed.
#[inline]
fn note_write<T>(head: &mut Option<HeadGuard>, result: &Poll<io::Result<T>>) {
    if let Some(head) = head {
        head.on_write(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn replayed_bytes_come_first_and_are_counted_once() {
        let (mut peer, stream) = tokio::io::duplex(1024);
        let (received, sent) = (Counter::default(), Counter::default());
        let mut io = ClientIo::new(stream, received.clone(), sent.clone());
        peer.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut detected = [0; 4];
        io.read_exact(&mut detected).await.unwrap();
        assert_eq!(received.get(), 4);

        let mut io = io.replay(Bytes::copy_from_slice(&detected));
        peer.shutdown().await.unwrap();
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\n");
        assert_eq!(
            received.get(),
            16,
            "replayed bytes were counted when first read"
        );

        io.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        assert_eq!(sent.get(), 17);
    }
}
