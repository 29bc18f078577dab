//! Runs the futures hyper spawns for an HTTP/2 connection inside the connection's own task.
//!
//! hyper hands an executor every h2 request stream it serves, and, as a client, the connection
//! itself and a future per request that hands the response back. With tokio's executor each
//! request costs task spawns (allocation, registration in the runtime's shared task list,
//! scheduling) and every step of the exchange becomes a wake-up of another task. With a single
//! runtime thread (the sidecar's default) those tasks could never run in parallel anyway, so the
//! connection's task polls them itself, as a set of futures.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures::future::{BoxFuture, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::task::AtomicWaker;

/// Whether the runtime runs on one thread (the sidecar's default), where a connection's h2
/// futures gain nothing from tasks of their own.
pub fn single_threaded_runtime() -> bool {
    tokio::runtime::Handle::try_current().is_ok_and(|runtime| runtime.metrics().num_workers() == 1)
}

/// The executor given to hyper: queues each stream for the connection's task.
#[derive(Clone)]
pub struct StreamExecutor {
    queue: Arc<StreamQueue>,
}

/// The streams queued by the executor for the connection's task to pick up.
struct StreamQueue {
    queued: Mutex<Vec<BoxFuture<'static, ()>>>,
    /// The connection's task, woken when a stream is queued from outside its poll.
    task: AtomicWaker,
}

/// The streams of one connection, polled by the connection's task.
pub struct ConnectionStreams {
    queue: Arc<StreamQueue>,
    running: FuturesUnordered<BoxFuture<'static, ()>>,
    /// Reused to take the queue without allocating.
    taken: Vec<BoxFuture<'static, ()>>,
}

impl ConnectionStreams {
    pub fn new() -> (ConnectionStreams, StreamExecutor) {
        let queue = Arc::new(StreamQueue {
            queued: Mutex::new(Vec::new()),
            task: AtomicWaker::new(),
        });
        let streams = ConnectionStreams {
            queue: queue.clone(),
            running: FuturesUnordered::new(),
            taken: Vec::new(),
        };
        (streams, StreamExecutor { queue })
    }

    /// Polls every stream that is ready to make progress. Never completes: an empty set just
    /// waits for the next stream.
    pub fn poll_streams(&mut self, cx: &mut Context<'_>) {
        self.queue.task.register(cx.waker());
        loop {
            self.take_queued();
            match self.running.poll_next_unpin(cx) {
                Poll::Ready(Some(())) => continue,
                Poll::Ready(None) if self.has_queued() => continue,
                Poll::Ready(None) | Poll::Pending => return,
            }
        }
    }

    /// Runs the streams still going, and any they queue meanwhile, to completion (once their
    /// connection has ended they end promptly: their sends fail).
    pub async fn finish(mut self) {
        std::future::poll_fn(|cx| {
            self.poll_streams(cx);
            if self.running.is_empty() && !self.has_queued() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    fn take_queued(&mut self) {
        std::mem::swap(
            &mut *self
                .queue
                .queued
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
            &mut self.taken,
        );
        for stream in self.taken.drain(..) {
            self.running.push(stream);
        }
    }

    fn has_queued(&self) -> bool {
        !self
            .queue
            .queued
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        // A panic ends its own stream (hyper resets it when its handles drop), not the
        // connection, as it would in a task of its own.
        let stream = AssertUnwindSafe(stream).catch_unwind().map(|result| {
            if result.is_err() {
                tracing::error!("an HTTP/2 stream panicked; it was reset");
            }
        });
        self.queue
            .queued
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::pin(stream));
        self.queue.task.wake();
    }
}

/// Drives `connection` and its streams together until the connection ends, then lets the
/// streams still running finish. `on_signal` runs once when `signal` fires (graceful shutdown).
pub async fn drive<C, S, T>(
    mut connection: Pin<&mut C>,
    mut streams: ConnectionStreams,
    signal: S,
    mut on_signal: impl FnMut(Pin<&mut C>),
) -> T
where
    C: Future<Output = T>,
    S: Future<Output = ()>,
{
    let mut signal = std::pin::pin!(signal);
    let mut signaled = false;
    let output = std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = connection.as_mut().poll(cx) {
            return Poll::Ready(output);
        }
        if !signaled && signal.as_mut().poll(cx).is_ready() {
            signaled = true;
            on_signal(connection.as_mut());
            // Let the connection act on it (send GOAWAY) in this same turn.
            if let Poll::Ready(output) = connection.as_mut().poll(cx) {
                return Poll::Ready(output);
            }
        }
        streams.poll_streams(cx);
        // What the streams did (responses, body frames) is written by the connection.
        connection.as_mut().poll(cx)
    })
    .await;
    streams.finish().await;
    output
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn streams_run_on_the_connection_task_and_finish_after_it() {
        let (streams, executor) = ConnectionStreams::new();
        let done = Arc::new(AtomicUsize::new(0));
        let (release, released) = oneshot::channel::<()>();
        let (conn_done_tx, conn_done_rx) = oneshot::channel::<()>();
        // The "connection" spawns two streams, then ends when told to.
        let connection = {
            let executor = executor.clone();
            let done = done.clone();
            async move {
                for _ in 0..2 {
                    let done = done.clone();
                    executor.execute(async move {
                        tokio::task::yield_now().await;
                        done.fetch_add(1, Ordering::SeqCst);
                    });
                }
                let late = done.clone();
                let _ = conn_done_rx.await;
                // A stream queued as the connection ends still runs.
                executor.execute(async move {
                    let _ = released.await;
                    late.fetch_add(1, Ordering::SeqCst);
                });
                "ended"
            }
        };
        let mut connection = std::pin::pin!(connection);
        let driven = drive(connection.as_mut(), streams, std::future::pending(), |_| {});
        let control = async {
            tokio::task::yield_now().await;
            conn_done_tx.send(()).unwrap();
            tokio::task::yield_now().await;
            release.send(()).unwrap();
        };
        let (output, ()) = tokio::join!(driven, control);
        assert_eq!(output, "ended");
        assert_eq!(done.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_stream_queued_after_the_connection_ended_runs_while_its_spawner_waits_for_it() {
        let (streams, executor) = ConnectionStreams::new();
        let done = Arc::new(AtomicUsize::new(0));
        let (spawned_tx, spawned_rx) = oneshot::channel::<()>();
        let (connection_done_tx, connection_done_rx) = oneshot::channel::<()>();
        // Like an h2 stream starting an upgrade task: it queues a stream, then waits on it.
        let spawner = {
            let executor = executor.clone();
            let done = done.clone();
            async move {
                let _ = connection_done_rx.await;
                executor.execute(async move {
                    let _ = spawned_tx.send(());
                });
                let _ = spawned_rx.await;
                done.fetch_add(1, Ordering::SeqCst);
            }
        };
        executor.execute(spawner);
        let mut connection = std::pin::pin!(async move {
            tokio::task::yield_now().await;
            let _ = connection_done_tx.send(());
        });
        let driven = drive(connection.as_mut(), streams, std::future::pending(), |_| {});
        tokio::time::timeout(std::time::Duration::from_secs(10), driven)
            .await
            .expect("the streams finished");
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_panicking_stream_ends_alone() {
        let (streams, executor) = ConnectionStreams::new();
        let done = Arc::new(AtomicUsize::new(0));
        executor.execute(async { panic!("stream bug") });
        let counted = done.clone();
        executor.execute(async move {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        let mut connection = std::pin::pin!(async {
            tokio::task::yield_now().await;
            7
        });
        let output = drive(connection.as_mut(), streams, std::future::pending(), |_| {}).await;
        assert_eq!(output, 7);
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_signal_reaches_the_connection_once() {
        let (streams, _executor) = ConnectionStreams::new();
        let signals = AtomicUsize::new(0);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let mut stop_tx = Some(stop_tx);
        let mut connection = std::pin::pin!(async move {
            let _ = stop_rx.await;
            "graceful"
        });
        let output = drive(connection.as_mut(), streams, async {}, |_| {
            signals.fetch_add(1, Ordering::SeqCst);
            if let Some(stop) = stop_tx.take() {
                let _ = stop.send(());
            }
        })
        .await;
        assert_eq!(output, "graceful");
        assert_eq!(signals.load(Ordering::SeqCst), 1);
    }
}
