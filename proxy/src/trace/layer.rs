//! The two tower layers: SERVER span around everything the proxy does for a request, CLIENT
//! span around the forwarded request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::meta::{ConnMeta, ErrorType};
use crate::span::SpanKind;

use super::attributes::{self, Addressed, RequestHeaders, RequestText};
use super::body::TracedBody;
use super::context::{HopContext, Recording};
use super::propagation::{self, Outgoing, FLAG_RANDOM, FLAG_SAMPLED, TRACERESPONSE};
use super::record::{End, PendingSpan, SpanGuard, SpanStart, ERROR_OTHER};
use super::{ids, sampling, Shared};

/// Records SERVER spans; see [`super::Tracer::server_layer`].
#[derive(Clone, Debug)]
pub struct ServerSpanLayer {
    shared: Arc<Shared>,
}

impl ServerSpanLayer {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        ServerSpanLayer { shared }
    }
}

impl<S> Layer<S> for ServerSpanLayer {
    type Service = ServerSpan<S>;

    fn layer(&self, inner: S) -> ServerSpan<S> {
        ServerSpan {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Extracts the incoming context, decides sampling, records the SERVER span.
#[derive(Clone, Debug)]
pub struct ServerSpan<S> {
    inner: S,
    shared: Arc<Shared>,
}

struct ServerStart {
    guard: Option<SpanGuard>,
    recording: Option<Arc<Recording>>,
    trace_response: Option<HeaderValue>,
}

impl Shared {
    /// The sample header's rate if it is a number (counted when it is not).
    fn sample_rate_of(&self, value: &HeaderValue) -> Option<f64> {
        let rate = sampling::parse_rate(value.as_bytes());
        if rate.is_none() {
            self.metrics.sample_header_invalid.inc();
            tracing::debug!(header = %self.sample_header, "ignoring a non-numeric sample header");
        }
        rate
    }

    fn begin_server(self: &Arc<Self>, parts: &mut Parts) -> ServerStart {
        // One pass over the headers finds the sample header and every propagation header.
        let found = propagation::Found::scan(&parts.headers, Some(&self.sample_header));
        let sample = found.sample().map(|value| self.sample_rate_of(value));
        let incoming = found.extract();
        let forced_rate = sample.flatten();
        let (trace_id, parent_span_id, random, trace_state, trace_id_64) = match incoming.parent {
            Some(parent) => (
                parent.trace_id,
                Some(parent.span_id),
                parent.random,
                parent.trace_state,
                parent.trace_id_64,
            ),
            None => (ids::new_trace_id(), None, true, None, false),
        };
        let started_trace = parent_span_id.is_none();
        let decision = sampling::decide(
            forced_rate,
            incoming.debug,
            incoming.sampled,
            &trace_id,
            self.sample_rate,
        );
        let flags =
            if decision.sampled { FLAG_SAMPLED } else { 0 } | if random { FLAG_RANDOM } else { 0 };
        let server_span_id = ids::new_span_id();

        let trace_response = if self.trace_response && (started_trace || forced_rate.is_some()) {
            propagation::w3c::traceparent_value(&trace_id, &server_span_id, flags)
        } else {
            None
        };

        let (guard, recording) = if decision.sampled && self.sink.is_enabled() {
            let conn = parts.extensions.get::<Arc<ConnMeta>>().map(Arc::as_ref);
            let headers = RequestHeaders {
                host: found.host(),
                user_agent: found.user_agent(),
                content_type: found.content_type(),
            };
            let grpc = headers.is_grpc();
            let addressed = attributes::addressed(parts, headers.host, None);
            let target = addressed.as_ref().map(Addressed::target);
            let text = RequestText::new(
                self.naming,
                parts,
                &headers,
                target,
                conn.and_then(|c| c.orig_dst),
                grpc,
                trace_state.as_ref().and_then(|s| s.to_str().ok()),
            );
            let span_trace_state = text.trace_state();
            let attrs = attributes::server(parts, &headers, conn, grpc, target, &text);
            let host_header = addressed.and_then(Addressed::into_parsed);
            let recording = Recording::new(text, host_header, self.clone());
            let span = PendingSpan::new(
                SpanStart {
                    kind: SpanKind::Server,
                    trace_id,
                    span_id: server_span_id,
                    parent_span_id,
                    trace_state: span_trace_state,
                    flags,
                    grpc,
                    fallback_peer: None,
                },
                attrs,
                recording.clone(),
            );
            (Some(SpanGuard::new(span)), Some(recording))
        } else {
            (None, None)
        };

        if sample.is_some() {
            // The proxy that applies the sample header removes it.
            parts.headers.remove(&self.sample_header);
        }
        parts.extensions.insert(HopContext {
            trace_id,
            server_span_id,
            parent_span_id,
            flags,
            debug: incoming.debug && decision.sampled,
            trace_state,
            trace_id_64,
            b3: if incoming.b3_arrived.any() {
                incoming.b3_arrived
            } else {
                self.default_b3
            },
            recording: recording.clone(),
        });
        ServerStart {
            guard,
            recording,
            trace_response,
        }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ServerSpan<S>
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
        let start = self.shared.begin_server(&mut parts);
        let body = TracedBody::counting_request(body, start.recording);
        ServerFuture {
            inner: self.inner.call(Request::from_parts(parts, body)),
            guard: start.guard,
            trace_response: start.trace_response,
        }
    }
}

pin_project! {
    /// Response future of [`ServerSpan`].
    pub struct ServerFuture<F> {
        #[pin]
        inner: F,
        guard: Option<SpanGuard>,
        trace_response: Option<HeaderValue>,
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
                let mut guard = this.guard.take();
                if let Some(span) = guard.as_mut().and_then(SpanGuard::span_mut) {
                    span.on_response(rsp.status(), rsp.headers(), rsp.extensions());
                }
                Poll::Ready(Ok(rsp.map(|body| TracedBody::finishing_span(body, guard))))
            }
            Err(error) => {
                if let Some(mut guard) = this.guard.take() {
                    guard.finish(End::Failed(ERROR_OTHER));
                }
                Poll::Ready(Err(error))
            }
        }
    }
}

/// Records CLIENT spans; see [`super::Tracer::client_layer`].
#[derive(Clone, Debug)]
pub struct ClientSpanLayer {
    shared: Arc<Shared>,
}

impl ClientSpanLayer {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        ClientSpanLayer { shared }
    }
}

impl<S> Layer<S> for ClientSpanLayer {
    type Service = ClientSpan<S>;

    fn layer(&self, inner: S) -> ClientSpan<S> {
        ClientSpan {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Makes a CLIENT span per forwarded request and writes it into the propagation headers.
/// Without a [`HopContext`] (no SERVER layer above) the request is forwarded as is.
#[derive(Clone, Debug)]
pub struct ClientSpan<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl Shared {
    fn begin_client(self: &Arc<Self>, parts: &mut Parts) -> Option<SpanGuard> {
        let hop = parts.extensions.get::<HopContext>()?;
        let client_span_id = ids::new_span_id();
        // One pass over the headers finds the propagation headers to replace and the ones the
        // attributes read.
        let found = propagation::Found::scan(&parts.headers, None);
        let present = found.present();
        let guard = hop.recording.as_ref().map(|recording| {
            let headers = RequestHeaders {
                host: found.host(),
                user_agent: found.user_agent(),
                content_type: found.content_type(),
            };
            let conn = parts.extensions.get::<Arc<ConnMeta>>().map(Arc::as_ref);
            let grpc = headers.is_grpc();
            let span = PendingSpan::new(
                SpanStart {
                    kind: SpanKind::Client,
                    trace_id: hop.trace_id,
                    span_id: client_span_id,
                    parent_span_id: Some(hop.server_span_id),
                    // The SERVER span's, which the hop context carries.
                    trace_state: recording.text.trace_state(),
                    flags: hop.flags,
                    grpc,
                    fallback_peer: conn.and_then(|c| c.orig_dst),
                },
                attributes::client(
                    parts,
                    &headers,
                    conn,
                    grpc,
                    recording.authority.as_ref(),
                    &recording.text,
                ),
                recording.clone(),
            );
            SpanGuard::new(span)
        });
        propagation::inject_into(
            &mut parts.headers,
            &Outgoing {
                trace_id: &hop.trace_id,
                span_id: &client_span_id,
                parent_span_id: &hop.server_span_id,
                flags: hop.flags,
                debug: hop.debug,
                trace_state: hop.trace_state.as_ref(),
                trace_id_64: hop.trace_id_64,
                tracecontext: true,
                b3: hop.b3,
            },
            present,
        );
        guard
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ClientSpan<S>
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
        let guard = self.shared.begin_client(&mut parts);
        ClientFuture {
            inner: self.inner.call(Request::from_parts(parts, body)),
            guard,
        }
    }
}

pin_project! {
    /// Response future of [`ClientSpan`].
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
            Ok(rsp) => {
                let mut guard = this.guard.take();
                if let Some(span) = guard.as_mut().and_then(SpanGuard::span_mut) {
                    span.on_response(rsp.status(), rsp.headers(), rsp.extensions());
                }
                Poll::Ready(Ok(rsp.map(|body| TracedBody::finishing_span(body, guard))))
            }
            Err(error) => {
                if let Some(mut guard) = this.guard.take() {
                    guard.finish(End::Failed(error.error_type()));
                }
                Poll::Ready(Err(error))
            }
        }
    }
}
