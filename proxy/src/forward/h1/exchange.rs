//! What the codec's server and client sides pass to each other through a message's
//! extensions, beside the message itself: the connection once a protocol switch happened
//! ([`OnUpgrade`]), and the interim (1xx) responses an upstream sends before its final one
//! ([`Informational`]).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use super::super::BoxError;

/// The read side of a connection, boxed once per connection.
pub type BoxRead = Pin<Box<dyn AsyncRead + Send>>;
/// The write side of a connection, boxed once per connection.
pub type BoxWrite = Pin<Box<dyn AsyncWrite + Send>>;

/// Any connection the tunnel code can copy between.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}
/// An upgraded connection of either codec.
pub type BoxIo = Box<dyn Io>;

/// A connection after a protocol switch: its two sides, and the bytes already read past the
/// last HTTP/1 head, which reads return first.
pub struct Upgraded {
    pub read: BoxRead,
    pub write: BoxWrite,
    pub prefix: Bytes,
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgraded")
            .field("prefix", &self.prefix.len())
            .finish_non_exhaustive()
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        self.read.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write.as_mut().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.write.as_mut().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.write.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.write.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.write.as_mut().poll_shutdown(cx)
    }
}

/// Why a connection was not handed over.
#[derive(Debug, thiserror::Error)]
#[error("the connection was not upgraded (closed before the protocol switch)")]
pub struct NotUpgraded;

/// Extension on a request (set by the codec's server) or a response (set by its client) whose
/// connection may switch protocols: yields the connection once the 101 or 2xx-to-CONNECT head
/// was written to the client (server) or read from the upstream (client).
#[derive(Clone, Debug)]
pub struct OnUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

/// Hands the connection to the [`OnUpgrade`] it was made with.
#[derive(Debug)]
pub struct UpgradeSender(oneshot::Sender<Upgraded>);

impl UpgradeSender {
    /// Gives the connection away; `Err` gives it back when nobody waits for it.
    pub fn send(self, upgraded: Upgraded) -> Result<(), Upgraded> {
        self.0.send(upgraded)
    }
}

/// A connection hand-off, its sending half for the codec and its receiving half for the
/// message's extensions.
pub fn pending() -> (UpgradeSender, OnUpgrade) {
    let (tx, rx) = oneshot::channel();
    (UpgradeSender(tx), OnUpgrade(Arc::new(Mutex::new(Some(rx)))))
}

impl OnUpgrade {
    /// The connection, once handed over.
    pub async fn upgraded(self) -> Result<Upgraded, NotUpgraded> {
        let rx = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        match rx {
            Some(rx) => rx.await.map_err(|_| NotUpgraded),
            None => Err(NotUpgraded),
        }
    }
}

/// The upgraded connection of a request: the codec's hand-off when the request came through it,
/// else hyper's.
pub fn on_request<B>(
    request: &mut http::Request<B>,
) -> impl Future<Output = Result<BoxIo, BoxError>> + Send + 'static {
    let ours = request.extensions_mut().remove::<OnUpgrade>();
    let hyper = ours.is_none().then(|| hyper::upgrade::on(&mut *request));
    upgraded(ours, hyper)
}

/// The upgraded connection of a response; as [`on_request`].
pub fn on_response<B>(
    response: &mut http::Response<B>,
) -> impl Future<Output = Result<BoxIo, BoxError>> + Send + 'static {
    let ours = response.extensions_mut().remove::<OnUpgrade>();
    let hyper = ours.is_none().then(|| hyper::upgrade::on(&mut *response));
    upgraded(ours, hyper)
}

async fn upgraded(
    ours: Option<OnUpgrade>,
    hyper: Option<hyper::upgrade::OnUpgrade>,
) -> Result<BoxIo, BoxError> {
    match (ours, hyper) {
        (Some(ours), _) => Ok(Box::new(ours.upgraded().await?)),
        (None, Some(hyper)) => Ok(Box::new(TokioIo::new(hyper.await?))),
        (None, None) => Err(NotUpgraded.into()),
    }
}

/// Extension on a request that came through the codec's server: where the upstream side relays
/// interim (1xx, not 101) response heads, as bytes ready to write, so that the client sees
/// them before the final response. The server writes them in order; none after the final head.
///
/// It points into its connection's one [`Relayed`], which every exchange of the connection
/// reuses: a request costs no allocation for it, and a head sent for an exchange that is over
/// is dropped.
#[derive(Debug)]
pub struct Informational {
    relay: Arc<Relay>,
    exchange: u64,
}

/// The interim heads of a connection's current exchange, shared by its server ([`Relayed`])
/// and the exchange's [`Informational`] handles. Locked only by its own connection's task.
#[derive(Debug, Default)]
struct Relay(Mutex<RelayState>);

#[derive(Debug, Default)]
struct RelayState {
    /// Which exchange the heads belong to; handles of earlier ones are ignored.
    exchange: u64,
    /// The current exchange's [`Informational`] handles (its end of the relay is closed at 0).
    senders: usize,
    heads: VecDeque<Bytes>,
    waker: Option<Waker>,
}

impl Relay {
    fn state(&self) -> MutexGuard<'_, RelayState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Wakes the receiver waiting on `state`, if one is, after releasing the lock.
fn wake_receiver(mut state: MutexGuard<'_, RelayState>) {
    let waker = state.waker.take();
    drop(state);
    if let Some(waker) = waker {
        waker.wake();
    }
}

impl Informational {
    /// A sender for a request's extensions and the receiver its server reads.
    pub fn channel() -> (Informational, Relayed) {
        let relayed = Relayed::default();
        (relayed.begin(), relayed)
    }

    /// Relays one interim head; dropped when the client's exchange is over.
    pub fn send(&self, head: Bytes) {
        let mut state = self.relay.state();
        if state.exchange == self.exchange {
            state.heads.push_back(head);
            wake_receiver(state);
        }
    }
}

impl Clone for Informational {
    fn clone(&self) -> Self {
        let mut state = self.relay.state();
        if state.exchange == self.exchange {
            state.senders += 1;
        }
        Informational {
            relay: self.relay.clone(),
            exchange: self.exchange,
        }
    }
}

impl Drop for Informational {
    fn drop(&mut self) {
        let mut state = self.relay.state();
        if state.exchange == self.exchange {
            state.senders -= 1;
            if state.senders == 0 {
                wake_receiver(state);
            }
        }
    }
}

/// A connection's receiving end of the interim heads its exchanges relay, one exchange at a
/// time: [`Relayed::begin`] starts one (and forgets the heads of any before).
#[derive(Debug, Default)]
pub struct Relayed {
    relay: Arc<Relay>,
}

impl Relayed {
    /// Starts the next exchange: the heads sent through the returned handle (and its clones)
    /// are received here until [`Relayed::end`] or the next `begin`.
    pub fn begin(&self) -> Informational {
        let mut state = self.relay.state();
        state.exchange += 1;
        state.senders = 1;
        state.heads.clear();
        state.waker = None;
        Informational {
            relay: self.relay.clone(),
            exchange: state.exchange,
        }
    }

    /// Ends the current exchange: heads sent for it from now on are dropped.
    pub fn end(&self) {
        let mut state = self.relay.state();
        state.exchange += 1;
        state.senders = 0;
        state.heads = VecDeque::new();
        state.waker = None;
    }

    /// The next head of the current exchange, in order; `None` once none is queued and no
    /// handle of the exchange remains (or it ended).
    pub async fn recv(&mut self) -> Option<Bytes> {
        std::future::poll_fn(|cx| {
            let mut state = self.relay.state();
            if let Some(head) = state.heads.pop_front() {
                return Poll::Ready(Some(head));
            }
            if state.senders == 0 {
                return Poll::Ready(None);
            }
            state.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// The next head already queued, if any.
    pub fn try_recv(&mut self) -> Option<Bytes> {
        self.relay.state().heads.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn handed_over_connection_reads_its_prefix_first() {
        let (near, far) = tokio::io::duplex(64);
        let (read, write) = tokio::io::split(near);
        let (sender, on_upgrade) = pending();
        let mut request = http::Request::new(());
        request.extensions_mut().insert(on_upgrade);
        let upgraded = on_request(&mut request);
        let handed = Upgraded {
            read: Box::pin(read),
            write: Box::pin(write),
            prefix: Bytes::from_static(b"early "),
        };
        assert!(sender.send(handed).is_ok());
        let mut io = upgraded.await.expect("handed over");
        let mut far = far;
        far.write_all(b"late").await.expect("write");
        let mut got = [0u8; 10];
        io.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"early late");
        io.write_all(b"back").await.expect("write back");
        let mut back = [0u8; 4];
        far.read_exact(&mut back).await.expect("read back");
        assert_eq!(&back, b"back");
    }

    #[tokio::test]
    async fn dropped_hand_off_is_not_upgraded() {
        let (sender, on_upgrade) = pending();
        drop(sender);
        assert!(on_upgrade.upgraded().await.is_err());
    }

    #[tokio::test]
    async fn relay_keeps_each_exchange_apart() {
        let (first, mut relayed) = Informational::channel();
        first.send(Bytes::from_static(b"100"));
        let copy = first.clone();
        copy.send(Bytes::from_static(b"103"));
        assert_eq!(relayed.recv().await.as_deref(), Some(&b"100"[..]));
        assert_eq!(relayed.try_recv().as_deref(), Some(&b"103"[..]));
        // A head sent after its exchange ended, or for an exchange before the current one,
        // never reaches the client.
        relayed.end();
        first.send(Bytes::from_static(b"late"));
        let second = relayed.begin();
        copy.send(Bytes::from_static(b"stale"));
        assert_eq!(relayed.try_recv(), None);
        second.send(Bytes::from_static(b"102"));
        assert_eq!(relayed.recv().await.as_deref(), Some(&b"102"[..]));
        // The earlier exchange's handles going away do not close the current one.
        drop((first, copy));
        let pending = tokio::time::timeout(std::time::Duration::from_millis(10), relayed.recv());
        assert!(
            pending.await.is_err(),
            "the current exchange's handle is still there"
        );
    }

    #[tokio::test]
    async fn relay_closes_when_the_exchanges_handles_are_gone() {
        let (informational, mut relayed) = Informational::channel();
        let copy = informational.clone();
        let waiting = tokio::spawn(async move {
            let mut received = Vec::new();
            while let Some(head) = relayed.recv().await {
                received.push(head);
            }
            received
        });
        tokio::task::yield_now().await;
        drop(informational);
        copy.send(Bytes::from_static(b"100"));
        tokio::task::yield_now().await;
        drop(copy);
        // A guard against a receiver never woken, not a measure of speed.
        let received = tokio::time::timeout(std::time::Duration::from_secs(10), waiting).await;
        let received = received
            .expect("woken once no handle remains")
            .expect("receiver");
        assert_eq!(received, [Bytes::from_static(b"100")]);
    }
}
