//! The adapter between hyper and one client connection's own service stack.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};

use super::head::{ExchangeGuard, Exchanges};
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
///
/// On HTTP/1 connections it also tells the connection's head limits ([`Exchanges`]) when each
/// exchange begins (hyper hands it the request) and ends (hyper drops the response body).
#[derive(Debug)]
pub struct ConnectionService<S> {
    stack: std::sync::Mutex<S>,
    meta: Arc<ConnMeta>,
    slot: Arc<ConnSlot>,
    exchanges: Option<Arc<Exchanges>>,
}

impl<S> ConnectionService<S> {
    pub fn new(
        stack: S,
        meta: Arc<ConnMeta>,
        slot: Arc<ConnSlot>,
        exchanges: Option<Arc<Exchanges>>,
    ) -> Self {
        ConnectionService {
            stack: std::sync::Mutex::new(stack),
            meta,
            slot,
            exchanges,
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
    type Response = Response<ExchangeBody<RB>>;
    type Error = BoxError;
    type Future = ExchangeFuture<S::Future>;

    fn call(&self, mut request: Request<B>) -> Self::Future {
        let guard = self.exchanges.as_ref().map(Exchanges::begin);
        let connect = request.method() == Method::CONNECT;
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
        ExchangeFuture {
            inner,
            error,
            in_flight,
            guard,
            connect,
        }
    }
}

pin_project_lite::pin_project! {
    /// The stack's response future; hands the request's [`InFlight`] mark and the exchange's
    /// guard on to the response body.
    pub struct ExchangeFuture<F> {
        #[pin]
        inner: Option<F>,
        // Why the stack could not be called (`inner` is `None`).
        error: Option<BoxError>,
        in_flight: Option<InFlight>,
        guard: Option<ExchangeGuard>,
        connect: bool,
    }
}

impl<F, RB, E> Future for ExchangeFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ExchangeBody<RB>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            let error = this.error.take().unwrap_or_else(|| NotReady.into());
            return Poll::Ready(Err(error));
        };
        let response = std::task::ready!(inner.poll(cx)).map_err(Into::into)?;
        let guard = this.guard.take();
        if let Some(guard) = &guard {
            let status = response.status();
            if status == StatusCode::SWITCHING_PROTOCOLS || (*this.connect && status.is_success()) {
                guard.upgraded();
            }
        }
        let in_flight = this.in_flight.take();
        Poll::Ready(Ok(response.map(|inner| ExchangeBody {
            inner,
            _in_flight: in_flight,
            guard,
        })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in flight and ends its exchange when hyper
    /// drops it (after writing it).
    pub struct ExchangeBody<B> {
        #[pin]
        inner: B,
        _in_flight: Option<InFlight>,
        guard: Option<ExchangeGuard>,
    }
}

impl<B: Body> Body for ExchangeBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
