//! Graceful shutdown: one signal that tells every listener and connection to stop, and a drain
//! that completes once the last connection (or tunnel) holding a [`Watch`] has finished.
//!
//! Connections hold a [`Watch`] for their whole life: it both tells them when to wind down
//! (HTTP/2 GOAWAY, HTTP/1 close after the current response) and keeps the drain open until they
//! are done, so `run()` can return exactly when the proxy is idle.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Starts a shutdown. Cheap to clone; triggering more than once is harmless.
#[derive(Clone, Debug, Default)]
pub struct Trigger {
    token: CancellationToken,
}

/// Held by every task that must finish before the proxy exits. Tells it when shutdown starts.
#[derive(Clone, Debug)]
pub struct Watch {
    token: CancellationToken,
    _in_flight: mpsc::Sender<()>,
}

/// A [`Watch`] that does not keep the drain open: long-lived services keep one so they can
/// hand a real [`Watch`] to tasks they spawn on behalf of a connection (e.g. upgrade tunnels).
#[derive(Clone, Debug)]
pub struct WeakWatch {
    token: CancellationToken,
    in_flight: mpsc::WeakSender<()>,
}

/// Completes once every [`Watch`] is gone.
#[derive(Debug)]
pub struct Drained {
    rx: mpsc::Receiver<()>,
}

/// How the drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every connection finished on its own.
    Complete,
    /// The grace period ran out first; remaining connections were abandoned.
    GraceExpired,
}

/// A new, untriggered shutdown: the trigger, the first watch, and the drain.
pub fn channel() -> (Trigger, Watch, Drained) {
    let token = CancellationToken::new();
    let (tx, rx) = mpsc::channel(1);
    (
        Trigger {
            token: token.clone(),
        },
        Watch {
            token,
            _in_flight: tx,
        },
        Drained { rx },
    )
}

impl Trigger {
    /// Starts the shutdown: listeners stop accepting, connections wind down.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once the shutdown has been triggered.
    pub fn triggered(&self) -> impl Future<Output = ()> + Send + 'static {
        self.token.clone().cancelled_owned()
    }
}

impl Watch {
    /// Resolves once the shutdown has been triggered.
    pub fn signaled(&self) -> impl Future<Output = ()> + Send + 'static {
        self.token.clone().cancelled_owned()
    }

    pub fn is_signaled(&self) -> bool {
        self.token.is_cancelled()
    }

    pub fn downgrade(&self) -> WeakWatch {
        WeakWatch {
            token: self.token.clone(),
            in_flight: self._in_flight.downgrade(),
        }
    }
}

impl WeakWatch {
    /// A [`Watch`], unless the proxy has already drained.
    pub fn upgrade(&self) -> Option<Watch> {
        Some(Watch {
            token: self.token.clone(),
            _in_flight: self.in_flight.upgrade()?,
        })
    }
}

impl Drained {
    /// Waits until every [`Watch`] has been dropped, or `grace` has passed.
    pub async fn wait(mut self, grace: Duration) -> DrainOutcome {
        match tokio::time::timeout(grace, self.rx.recv()).await {
            Ok(_) => DrainOutcome::Complete,
            Err(_) => DrainOutcome::GraceExpired,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drains_when_the_last_watch_is_dropped() {
        let (trigger, watch, drained) = channel();
        let held = watch.clone();
        drop(watch);
        let task = tokio::spawn(async move {
            held.signaled().await;
            drop(held);
        });
        trigger.trigger();
        assert_eq!(
            drained.wait(Duration::from_secs(30)).await,
            DrainOutcome::Complete
        );
        task.await.unwrap();
    }

    #[tokio::test]
    async fn weak_watches_do_not_hold_the_drain() {
        let (_trigger, watch, drained) = channel();
        let weak = watch.downgrade();
        let upgraded = weak.upgrade().unwrap();
        drop(watch);
        drop(upgraded);
        assert!(weak.upgrade().is_none());
        assert_eq!(
            drained.wait(Duration::from_secs(30)).await,
            DrainOutcome::Complete
        );
    }

    #[tokio::test]
    async fn grace_expires_while_a_watch_is_held() {
        let (trigger, watch, drained) = channel();
        trigger.trigger();
        assert!(watch.is_signaled());
        assert_eq!(
            drained.wait(Duration::from_millis(10)).await,
            DrainOutcome::GraceExpired
        );
        drop(watch);
    }
}
