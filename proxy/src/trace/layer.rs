//! The two tower layers: SERVER span around everything the proxy does for a request, CLIENT
//! span around the forwarded request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::meta::{Direction, ErrorType};

use super::attributes::ERROR_OTHER;
use super::body::TracedBody;
use super::correlate::InFlight;
use super::hop;
use super::propagation::TRACERESPONSE;
use super::record::{End, SpanGuard};
use super::TracerState;

/// Records SERVER spans; see [`super::Tracer::server_layer`].
#[derive(Clone, Debug)]
pub struct ServerSpanLayer {
    tracer: Arc<TracerState>,
    direction: Option<Direction>,
}

impl ServerSpanLayer {
    pub(crate) fn new(tracer: Arc<TracerState>, direction: Option<Direction>) -> Self {
        ServerSpanLayer { tracer, direction }
    }
}

impl<S> Layer<S> for ServerSpanLayer {
    type Service = ServerSpanService<S>;

    fn layer(&self, inner: S) -> ServerSpanService<S> {
        ServerSpanService {
            inner,
            tracer: self.tracer.clone(),
            direction: self.direction,
        }
    }
}

/// Extracts the incoming context, decides sampling, records the SERVER span.
#[derive(Clone, Debug)]
pub struct ServerSpanService<S> {
    inner: S,
    tracer: Arc<TracerState>,
    direction: Option<Direction>,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ServerSpanService<S>
where
    S: Service<Request<TracedBody<ReqB>>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes>,
{
    type Response = Response<TracedBody<ResB>>;
    type Error = S::Error;
    type Future = ServerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let start = hop::start_server(&self.tracer, self.direction, &mut parts);
        let body = TracedBody::counting_request(body, start.recording);
        ServerFuture {
            inner: self.inner.call(Request::from_parts(parts, body)),
            guard: start.guard,
            trace_response: start.trace_response,
            in_flight: start.in_flight,
        }
    }
}

pin_project! {
    /// Response future of [`ServerSpanService`].
    pub struct ServerFuture<F> {
        #[pin]
        inner: F,
        guard: Option<SpanGuard>,
        trace_response: Option<HeaderValue>,
        // Keeps an inbound request registered for correlation until its response ends.
        in_flight: InFlight,
    }
}

impl<F, B, E> Future for ServerFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
{
    type Output = Result<Response<TracedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match ready!(this.inner.poll(cx)) {
            Ok(mut rsp) => {
                if let Some(value) = this.trace_response.take() {
                    rsp.headers_mut().insert(TRACERESPONSE, value);
                }
                let in_flight = std::mem::replace(this.in_flight, InFlight::none());
                let rsp = traced_response(rsp, this.guard.take());
                Poll::Ready(Ok(rsp.map(|body| body.holding(in_flight))))
            }
            Err(error) => {
                fail(this.guard, ERROR_OTHER);
                Poll::Ready(Err(error))
            }
        }
    }
}

/// Records CLIENT spans; see [`super::Tracer::client_layer`]. A CLIENT span reaches the
/// tracer's sink through its request's recording, so the layer holds nothing.
#[derive(Clone, Debug)]
pub struct ClientSpanLayer {
    _made_by_the_tracer: (),
}

impl ClientSpanLayer {
    pub(crate) fn new() -> Self {
        ClientSpanLayer {
            _made_by_the_tracer: (),
        }
    }
}

impl<S> Layer<S> for ClientSpanLayer {
    type Service = ClientSpanService<S>;

    fn layer(&self, inner: S) -> ClientSpanService<S> {
        ClientSpanService { inner }
    }
}

/// Makes a CLIENT span per forwarded request and writes it into the propagation headers.
/// Without a [`super::HopContext`] (no SERVER layer above) the request is forwarded as is.
#[derive(Clone, Debug)]
pub struct ClientSpanService<S> {
    inner: S,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ClientSpanService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: ErrorType,
    ResB: Body<Data = Bytes>,
{
    type Response = Response<TracedBody<ResB>>;
    type Error = S::Error;
    type Future = ClientFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let guard = hop::start_client(&mut parts);
        ClientFuture {
            inner: self.inner.call(Request::from_parts(parts, body)),
            guard,
        }
    }
}

pin_project! {
    /// Response future of [`ClientSpanService`].
    pub struct ClientFuture<F> {
        #[pin]
        inner: F,
        guard: Option<SpanGuard>,
    }
}

impl<F, B, E> Future for ClientFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
    E: ErrorType,
{
    type Output = Result<Response<TracedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match ready!(this.inner.poll(cx)) {
            Ok(rsp) => Poll::Ready(Ok(traced_response(rsp, this.guard.take()))),
            Err(error) => {
                fail(this.guard, error.error_type());
                Poll::Ready(Err(error))
            }
        }
    }
}

/// Records the response head on the span, then hands the span to the response body, which
/// ends it.
fn traced_response<B: Body>(
    rsp: Response<B>,
    mut guard: Option<SpanGuard>,
) -> Response<TracedBody<B>> {
    if let Some(span) = guard.as_mut().and_then(SpanGuard::span_mut) {
        span.on_response(rsp.status(), rsp.headers(), rsp.extensions());
    }
    rsp.map(|body| TracedBody::finishing_span(body, guard))
}

/// Ends the span of a request whose inner service failed with `error_type`.
fn fail(guard: &mut Option<SpanGuard>, error_type: &'static str) {
    if let Some(mut guard) = guard.take() {
        guard.finish(End::Failed(error_type));
    }
}
