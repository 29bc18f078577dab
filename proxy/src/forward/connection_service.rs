//! The adapter between hyper and one client connection's own service stack.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;

use super::BoxError;
use crate::meta::ConnMeta;

/// Connects hyper to one client connection's own stack. hyper calls its services through
/// `&self`; tower's adapter for that clones the whole stack for every request, this one calls
/// the connection's stack in place. It also puts the connection's [`ConnMeta`] into every
/// request's extensions.
///
/// The stack applies no backpressure (every layer is always ready), so readiness is checked
/// without registering a waker, and a stack that is not ready fails the request rather than
/// stalling the connection.
#[derive(Debug)]
pub struct ConnectionService<S> {
    stack: std::sync::Mutex<S>,
    meta: Arc<ConnMeta>,
}

impl<S> ConnectionService<S> {
    pub fn new(stack: S, meta: Arc<ConnMeta>) -> Self {
        ConnectionService {
            stack: std::sync::Mutex::new(stack),
            meta,
        }
    }
}

/// Why a [`ConnectionService`] could not call its stack.
#[derive(Debug, thiserror::Error)]
#[error("the connection's service stack is not ready")]
pub struct NotReady;

impl<S, B> hyper::service::Service<Request<B>> for ConnectionService<S>
where
    S: tower::Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = futures::future::Either<
        futures::future::ErrInto<S::Future, BoxError>,
        futures::future::Ready<Result<S::Response, BoxError>>,
    >;

    fn call(&self, mut request: Request<B>) -> Self::Future {
        use futures::future::{err, Either, TryFutureExt};
        request.extensions_mut().insert(self.meta.clone());
        // Only this connection's task calls it, so the lock is never contended.
        let mut stack = self
            .stack
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match stack.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => Either::Left(stack.call(request).err_into()),
            Poll::Ready(Err(error)) => Either::Right(err(error.into())),
            Poll::Pending => Either::Right(err(NotReady.into())),
        }
    }
}
