//! The head timeout for h2 connections: a header block (HEADERS or PUSH_PROMISE and its
//! CONTINUATION frames) that does not complete within the head timeout ends the connection.
//!
//! h2 cannot reset such a stream: the stream does not exist until its header block completes,
//! and while a block is open no other frame may arrive on the connection (RFC 9113 §6.10), so a
//! stalled block stalls the whole connection, and neither h2 nor hyper exposes a timer for it.
//! So the client IO follows the frame headers it reads (9 bytes each, payloads skipped by
//! count, nothing buffered) and, past the deadline, ends the stream as if the client had
//! closed it. Connections with no header block open, idle ones included (gRPC channels),
//! are never cut.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The HTTP/2 connection preface the client sends first (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

/// Where a client's frames stand: whether a header block is open.
#[derive(Debug)]
pub struct FrameScan {
    preface_left: usize,
    header: [u8; 9],
    header_len: usize,
    payload_left: usize,
    /// The frame being read belongs to a header block and ends it (END_HEADERS).
    frame_ends_block: bool,
    /// A header block is open.
    in_block: bool,
    /// Header blocks started so far (wrapping), to tell a new block from the same one.
    blocks: u32,
}

impl Default for FrameScan {
    fn default() -> Self {
        FrameScan {
            preface_left: PREFACE_LEN,
            header: [0; 9],
            header_len: 0,
            payload_left: 0,
            frame_ends_block: false,
            in_block: false,
            blocks: 0,
        }
    }
}

impl FrameScan {
    /// Follows the next bytes the client sent.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        let skip = self.preface_left.min(bytes.len());
        self.preface_left -= skip;
        bytes = &bytes[skip..];
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
                if self.payload_left == 0 {
                    self.frame_done();
                }
                continue;
            }
            let n = (9 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == 9 {
                self.header_len = 0;
                self.frame_header();
            }
        }
    }

    fn frame_header(&mut self) {
        let [l0, l1, l2, kind, flags, ..] = self.header;
        let ends_block = flags & END_HEADERS != 0;
        match kind {
            HEADERS | PUSH_PROMISE => {
                self.blocks = self.blocks.wrapping_add(1);
                self.in_block = true;
                self.frame_ends_block = ends_block;
            }
            CONTINUATION => self.frame_ends_block = ends_block,
            _ => self.frame_ends_block = false,
        }
        self.payload_left = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
        if self.payload_left == 0 {
            self.frame_done();
        }
    }

    fn frame_done(&mut self) {
        if self.frame_ends_block {
            self.in_block = false;
            self.frame_ends_block = false;
        }
    }
}

/// Ends an h2 connection whose header block stays open longer than the head timeout.
#[derive(Debug)]
pub struct H2HeadGuard {
    timeout: Duration,
    scan: FrameScan,
    /// The open block being timed: its number and when its first frame header was read.
    timed: Option<(u32, Instant)>,
    timer: Option<Pin<Box<Sleep>>>,
    expired: bool,
}

impl H2HeadGuard {
    pub fn new(timeout: Duration) -> Self {
        H2HeadGuard {
            timeout,
            scan: FrameScan::default(),
            timed: None,
            timer: None,
            expired: false,
        }
    }

    /// Follows bytes just read.
    pub fn on_read(&mut self, bytes: &[u8]) {
        self.scan.feed(bytes);
        self.timed = match self.timed {
            _ if !self.scan.in_block => None,
            Some((block, started)) if block == self.scan.blocks => Some((block, started)),
            _ => Some((self.scan.blocks, Instant::now())),
        };
    }

    /// After a read that would block: whether the open block's deadline has passed (the
    /// stream then ends). Otherwise the timer wakes the task at the deadline.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some((_, started)) = self.timed else {
            return self.expired;
        };
        let deadline = started + self.timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_ready() {
            tracing::debug!("h2 header block not completed in time; closing the connection");
            self.expired = true;
        }
        self.expired
    }

    /// The connection was cut: every read ends the stream.
    pub fn expired(&self) -> bool {
        self.expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut frame = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        frame.extend_from_slice(&[0, 0, 0, 1]);
        frame.extend_from_slice(payload);
        frame
    }

    fn scan_of(chunks: &[&[u8]]) -> FrameScan {
        let mut scan = FrameScan::default();
        for chunk in chunks {
            scan.feed(chunk);
        }
        scan
    }

    #[test]
    fn follows_header_blocks_across_frames_and_reads() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let settings = frame(0x4, 0, &[0; 6]);
        let open = frame(HEADERS, 0, b"abc");
        let more = frame(CONTINUATION, 0, b"def");
        let last = frame(CONTINUATION, END_HEADERS, b"ghi");
        let data = frame(0x0, 0x1, b"body");
        assert!(!scan_of(&[preface, &settings]).in_block);
        assert!(scan_of(&[preface, &open]).in_block);
        assert!(scan_of(&[preface, &open, &more]).in_block);
        assert!(!scan_of(&[preface, &open, &more, &last, &data]).in_block);
        // A complete HEADERS frame whose payload is still arriving is an open block.
        let whole = frame(HEADERS, END_HEADERS, b"abcdef");
        assert!(scan_of(&[preface, &whole[..12]]).in_block);
        assert!(!scan_of(&[preface, &whole]).in_block);
        // Byte by byte, the same.
        let mut scan = FrameScan::default();
        for byte in [&preface[..], &open, &last].concat() {
            scan.feed(&[byte]);
        }
        assert!(!scan.in_block);
        assert_eq!(scan.blocks, 1);
    }
}
