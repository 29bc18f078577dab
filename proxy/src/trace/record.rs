//! A span being recorded: created when a sampled request starts, finished exactly once when
//! its response body ends, fails or is dropped, then handed to the [`SpanSink`] without waiting.
//! What the attributes say is built in [`super::attributes`]; this module records and finishes.
//!
//! [`SpanSink`]: crate::span::SpanSink

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{Extensions, HeaderMap, StatusCode};

use crate::span::{SpanKind, SpanRecord, SpanStatus};

use super::attributes::{Attributes, ResponseAttributes};
use super::clock;
use super::context::Recording;

/// How a span ended.
#[derive(Debug)]
pub enum End {
    /// The response body was delivered completely.
    Complete,
    /// A body errored mid-stream.
    BodyError,
    /// The peer reset the stream with `RST_STREAM(CANCEL)` mid-body: it cancelled.
    ResetCancel,
    /// Dropped before completion (peer reset, client gone, timeout above us).
    Cancelled,
    /// The inner service failed; the low-cardinality error name.
    Failed(&'static str),
}

/// A span between its start and its end: the record so far, the request it belongs to, and
/// what its response has said.
#[derive(Debug)]
pub struct PendingSpan {
    record: SpanRecord,
    request: Arc<Recording>,
    response: ResponseAttributes,
}

/// What a new span needs besides its attributes.
pub struct SpanStart {
    pub kind: SpanKind,
    pub trace_id: crate::span::TraceId,
    pub span_id: crate::span::SpanId,
    pub parent_span_id: Option<crate::span::SpanId>,
    pub trace_state: Option<crate::span::SharedStr>,
    pub flags: u8,
    pub grpc: bool,
    /// The gRPC request's `grpc-timeout` ([`super::attributes::grpc_timeout`]).
    pub grpc_timeout: Option<std::time::Duration>,
    /// CLIENT: where the request went if the data path does not report it.
    pub fallback_peer: Option<SocketAddr>,
    /// Span links (outbound SERVER spans whose parent was ambiguous).
    pub links: crate::span::Links,
}

impl PendingSpan {
    pub fn new(
        start: SpanStart,
        attributes: Attributes,
        request: Arc<Recording>,
    ) -> Box<PendingSpan> {
        Box::new(PendingSpan {
            record: SpanRecord {
                trace_id: start.trace_id,
                span_id: start.span_id,
                parent_span_id: start.parent_span_id,
                trace_state: start.trace_state,
                flags: start.flags,
                kind: start.kind,
                name: request.text.name(),
                start_unix_nanos: clock::now_unix_nanos(),
                end_unix_nanos: 0,
                status: SpanStatus::Unset,
                attributes,
                links: start.links,
            },
            request,
            response: ResponseAttributes::new(start.grpc, start.grpc_timeout, start.fallback_peer),
        })
    }

    /// Records what the response head says.
    pub fn on_response(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
        extensions: &Extensions,
    ) {
        self.response.on_head(
            self.record.kind,
            status,
            headers,
            extensions,
            &mut self.record.attributes,
        );
    }

    /// Reads `grpc-status` from trailers.
    pub fn on_trailers(&mut self, trailers: &HeaderMap) {
        self.response.on_trailers(trailers);
    }

    pub fn add_response_bytes(&mut self, n: usize) {
        self.response.add_body_bytes(n);
    }

    /// Completes the record and hands it to the sink.
    pub fn finish(self: Box<Self>, end: End) {
        let at = clock::now_unix_nanos();
        self.finish_at(end, at);
    }

    /// [`PendingSpan::finish`] as the response body ends, in a body poll (see
    /// [`clock::body_end`]).
    pub fn finish_body(self: Box<Self>) {
        let at = clock::body_end(Arc::as_ptr(&self.request) as usize);
        self.finish_at(End::Complete, at);
    }

    fn finish_at(self: Box<Self>, end: End, end_unix_nanos: u64) {
        let PendingSpan {
            mut record,
            request,
            response,
        } = *self;
        record.end_unix_nanos = end_unix_nanos.max(record.start_unix_nanos);
        let request_body_bytes = request.request_body_bytes.load(Ordering::Relaxed);
        let elapsed =
            std::time::Duration::from_nanos(record.end_unix_nanos - record.start_unix_nanos);
        record.status = response.finish(
            record.kind,
            end,
            elapsed,
            request_body_bytes,
            &mut record.attributes,
        );
        request.tracer.send(record);
    }
}

/// Owns a pending span and finishes it as cancelled if it is dropped unfinished.
#[derive(Debug)]
pub struct SpanGuard(Option<Box<PendingSpan>>);

impl SpanGuard {
    pub fn new(span: Box<PendingSpan>) -> SpanGuard {
        SpanGuard(Some(span))
    }

    pub fn span_mut(&mut self) -> Option<&mut PendingSpan> {
        self.0.as_deref_mut()
    }

    pub fn finish(&mut self, end: End) {
        if let Some(span) = self.0.take() {
            span.finish(end);
        }
    }

    /// Finishes the span as complete because its response body ended, in a body poll.
    pub fn finish_body(&mut self) {
        if let Some(span) = self.0.take() {
            span.finish_body();
        }
    }

    pub fn is_finished(&self) -> bool {
        self.0.is_none()
    }
}

impl Drop for SpanGuard {
    fn drop(&mut self) {
        self.finish(End::Cancelled);
    }
}
