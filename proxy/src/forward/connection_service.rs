//! The adapter between hyper and one client connection's own service stack.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};

use super::BoxError;
use crate::admission::{ConnSlot, InFlight};
use crate::meta::ConnMeta;

/// Connects hyper to one client connection's own stack. hyper calls its services through
/// `&self`; tower's adapter for that clones the whole stack for every request, this one calls
/// the connection's stack in place. It also puts the connection's [`ConnMeta`] into every
/// request's extensions, and marks each request in flight on the connection's [`ConnSlot`]
/// until its response body is done (a connection without one may be shed).
///
/// The stack applies no backpressure (every layer is always ready), so readiness is checked
/// without registering a waker, and a stack that is not ready fails the request rather than
/// stalling the connection.
#[derive(Debug)]
pub struct ConnectionService<S> {
    stack: std::sync::Mutex<S>,
    meta: Arc<ConnMeta>,
    slot: Arc<ConnSlot>,
}

impl<S> ConnectionService<S> {
    pub fn new(stack: S, meta: Arc<ConnMeta>, slot: Arc<ConnSlot>) -> Self {
        ConnectionService {
            stack: std::sync::Mutex::new(stack),
            meta,
            slot,
        }
    }
}

/// Why a [`ConnectionService`] could not call its stack.
#[derive(Debug, thiserror::Error)]
#[error("the connection's service stack is not ready")]
pub struct NotReady;

impl<S, B, RB> hyper::service::Service<Request<B>> for ConnectionService<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<InFlightBody<RB>>;
    type Error = BoxError;
    type Future = InFlightFuture<S::Future>;

    fn call(&self, mut request: Request<B>) -> Self::Future {
        request.extensions_mut().insert(self.meta.clone());
        let in_flight = Some(self.slot.request_started());
        // Only this connection's task calls it, so the lock is never contended.
        let mut stack = self
            .stack
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let (inner, error) = match stack.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => (Some(stack.call(request)), None),
            Poll::Ready(Err(error)) => (None, Some(error.into())),
            Poll::Pending => (None, Some(NotReady.into())),
        };
        InFlightFuture {
            inner,
            error,
            in_flight,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's response future, holding the request's [`InFlight`] mark.
    pub struct InFlightFuture<F> {
        // `None` when the stack was not ready: then `error` says why.
        #[pin]
        inner: Option<F>,
        error: Option<BoxError>,
        in_flight: Option<InFlight>,
    }
}

impl<F, RB, E> Future for InFlightFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<InFlightBody<RB>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.inner.as_pin_mut() {
            Some(future) => std::task::ready!(future.poll(cx)).map_err(Into::into),
            None => Err(this.error.take().unwrap_or_else(|| NotReady.into())),
        };
        let in_flight = this.in_flight.take();
        Poll::Ready(result.map(|response| {
            response.map(|inner| InFlightBody {
                inner,
                _in_flight: in_flight,
            })
        }))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in flight until hyper drops it.
    #[derive(Debug)]
    pub struct InFlightBody<B> {
        #[pin]
        inner: B,
        _in_flight: Option<InFlight>,
    }
}

impl<B: Body> Body for InFlightBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
