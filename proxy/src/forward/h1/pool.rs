//! Head buffers, lent only while a head is in flight.
//!
//! A connection takes a [`HeadBuf`] when the first byte of a head arrives and drops it once the
//! head was forwarded (the guard gives it back); a connection at rest holds none. The pool keeps
//! at most `cap` buffers, and only buffers no larger than `retain_bytes`, so a burst of large
//! heads does not pin memory after it. The free list is a lock-free bounded queue
//! (`crossbeam-channel`'s array flavour): no lock is shared across connections.

use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use crossbeam_channel::{Receiver, Sender};

use super::exchange::BoxRead;
use super::head::Field;

/// The least free space a head buffer reads into; it grows by its length when fuller.
const MIN_HEAD_READ: usize = 1024;

/// The storage of one head: its bytes and its field offsets.
#[derive(Debug, Default)]
pub struct HeadStorage {
    pub bytes: Vec<u8>,
    pub fields: Vec<Field>,
}

#[derive(Debug)]
struct Shared {
    free_tx: Sender<HeadStorage>,
    free_rx: Receiver<HeadStorage>,
    initial_bytes: usize,
    retain_bytes: usize,
}

impl HeadStorage {
    /// The bytes read past a head that ends at `end`, in a buffer of their own (unallocated
    /// when there are none), so that the lent buffer can go back to its pool.
    pub fn rest_after(&self, end: usize) -> BytesMut {
        match &self.bytes[end..] {
            [] => BytesMut::new(),
            rest => BytesMut::from(rest),
        }
    }
}

/// A bounded pool of [`HeadStorage`]s; cheap to clone (one per listener, shared by its tasks).
#[derive(Clone, Debug)]
pub struct HeadPool {
    shared: Arc<Shared>,
}

impl HeadPool {
    /// Keeps up to `cap` free buffers; new ones start at `initial_bytes`, and buffers that grew
    /// beyond `retain_bytes` are freed instead of kept.
    pub fn new(cap: usize, initial_bytes: usize, retain_bytes: usize) -> Self {
        let (free_tx, free_rx) = crossbeam_channel::bounded(cap);
        HeadPool {
            shared: Arc::new(Shared {
                free_tx,
                free_rx,
                initial_bytes,
                retain_bytes,
            }),
        }
    }

    /// A buffer for one head: a free one if there is one, else a new one.
    pub fn take(&self) -> HeadBuf {
        let storage = self
            .shared
            .free_rx
            .try_recv()
            .unwrap_or_else(|_| HeadStorage {
                bytes: Vec::with_capacity(self.shared.initial_bytes),
                fields: Vec::new(),
            });
        HeadBuf {
            storage,
            pool: self.clone(),
        }
    }

    /// Reads into the head buffer `lent`, taking one from the pool for the attempt and giving
    /// it back if nothing arrived yet: a connection waiting for a head holds no buffer until
    /// the head's first bytes arrive.
    pub fn poll_read(
        &self,
        cx: &mut Context<'_>,
        read: &mut BoxRead,
        lent: &mut Option<HeadBuf>,
    ) -> Poll<io::Result<usize>> {
        let mut head = lent.take().unwrap_or_else(|| self.take());
        let bytes = &mut head.bytes;
        if bytes.capacity() - bytes.len() < MIN_HEAD_READ {
            bytes.reserve(bytes.len().max(MIN_HEAD_READ));
        }
        let result = tokio_util::io::poll_read_buf(read.as_mut(), cx, bytes);
        if !(result.is_pending() && head.bytes.is_empty()) {
            *lent = Some(head);
        }
        result
    }

    /// Free buffers held now.
    pub fn idle(&self) -> usize {
        self.shared.free_rx.len()
    }

    fn give_back(&self, mut storage: HeadStorage) {
        if storage.bytes.capacity() > self.shared.retain_bytes {
            return;
        }
        storage.bytes.clear();
        storage.fields.clear();
        // Full: the buffer is freed.
        let _ = self.shared.free_tx.try_send(storage);
    }
}

/// A lent buffer; dropping it returns it to its pool.
#[derive(Debug)]
pub struct HeadBuf {
    storage: HeadStorage,
    pool: HeadPool,
}

impl std::ops::Deref for HeadBuf {
    type Target = HeadStorage;
    fn deref(&self) -> &HeadStorage {
        &self.storage
    }
}

impl std::ops::DerefMut for HeadBuf {
    fn deref_mut(&mut self) -> &mut HeadStorage {
        &mut self.storage
    }
}

impl Drop for HeadBuf {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.storage));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_at_most_cap_buffers() {
        let pool = HeadPool::new(2, 64, 1024);
        let lent: Vec<HeadBuf> = (0..5).map(|_| pool.take()).collect();
        assert_eq!(pool.idle(), 0, "lent buffers are not in the pool");
        drop(lent);
        assert_eq!(pool.idle(), 2, "only `cap` buffers are kept");
    }

    #[test]
    fn a_returned_buffer_is_reused_empty() {
        let pool = HeadPool::new(1, 64, 1024);
        let mut buf = pool.take();
        buf.bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let address = buf.bytes.as_ptr();
        drop(buf);
        let again = pool.take();
        assert_eq!(
            again.bytes.as_ptr(),
            address,
            "the same allocation comes back"
        );
        assert!(again.bytes.is_empty() && again.fields.is_empty());
        assert_eq!(pool.idle(), 0);
    }

    #[test]
    fn grown_buffers_are_freed_not_kept() {
        let pool = HeadPool::new(4, 64, 1024);
        let mut buf = pool.take();
        buf.bytes.resize(4096, b'x');
        drop(buf);
        assert_eq!(pool.idle(), 0, "a buffer beyond retain_bytes is not kept");
    }
}
