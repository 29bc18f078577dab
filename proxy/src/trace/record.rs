//! A span being recorded: created when a sampled request starts, finished exactly once when
//! its response body ends, fails or is dropped, then handed to the [`SpanSink`] without waiting.
//!
//! [`SpanSink`]: crate::span::SpanSink

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{Extensions, HeaderMap, StatusCode};

use crate::meta::UpstreamPeer;
use crate::span::{AttrValue, SpanKind, SpanRecord, SpanStatus};

use super::attributes::{self as attr, Attributes};
use super::clock;
use super::context::Recording;

/// Response header set by the data path's error mapping on proxy-generated responses.
pub use crate::meta::PROXY_ERROR_HEADER as PROXY_ERROR;
const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// `error.type` when the peer went away before the exchange completed.
pub const ERROR_CANCELLED: &str = "cancelled";
/// `error.type` when a body failed mid-stream.
pub const ERROR_BODY: &str = "body_error";
/// `error.type` when the inner service failed with an error it could not name.
pub const ERROR_OTHER: &str = "_OTHER";

/// How a span ended.
#[derive(Debug)]
pub enum End {
    /// The response body was delivered completely.
    Complete,
    /// A body errored mid-stream.
    BodyError,
    /// Dropped before completion (peer reset, client gone, timeout above us).
    Cancelled,
    /// The inner service failed; the low-cardinality error name.
    Failed(&'static str),
}

#[derive(Debug)]
pub struct PendingSpan {
    record: SpanRecord,
    request: Arc<Recording>,
    response_body_bytes: u64,
    status_code: Option<StatusCode>,
    error_type: Option<Cow<'static, str>>,
    grpc: bool,
    grpc_status: Option<i64>,
    /// CLIENT: where the request went if the data path did not report [`UpstreamPeer`].
    fallback_peer: Option<SocketAddr>,
    peer_recorded: bool,
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
    pub fallback_peer: Option<SocketAddr>,
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
            },
            request,
            response_body_bytes: 0,
            status_code: None,
            error_type: None,
            grpc: start.grpc,
            grpc_status: None,
            fallback_peer: start.fallback_peer,
            peer_recorded: false,
        })
    }

    /// Records what the response head says.
    pub fn on_response(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
        extensions: &Extensions,
    ) {
        self.status_code = Some(status);
        match self.record.kind {
            SpanKind::Server => {
                if let Some(kind) = headers.get(PROXY_ERROR).and_then(|v| v.to_str().ok()) {
                    self.error_type = Some(Cow::Owned(kind.to_owned()));
                }
            }
            SpanKind::Client => {
                if let Some(UpstreamPeer(peer)) = extensions.get::<UpstreamPeer>() {
                    attr::push_upstream_peer(&mut self.record.attributes, *peer);
                    self.peer_recorded = true;
                }
            }
        }
        if self.grpc {
            self.on_trailers(headers);
        }
    }

    /// Reads `grpc-status` from trailers (or a trailers-only response head).
    pub fn on_trailers(&mut self, trailers: &HeaderMap) {
        if !self.grpc {
            return;
        }
        if let Some(code) = trailers
            .get(GRPC_STATUS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok())
        {
            self.grpc_status = Some(code);
        }
    }

    pub fn add_response_bytes(&mut self, n: usize) {
        self.response_body_bytes = self.response_body_bytes.saturating_add(n as u64);
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
            response_body_bytes,
            status_code,
            mut error_type,
            grpc_status,
            fallback_peer,
            peer_recorded,
            ..
        } = *self;
        record.end_unix_nanos = end_unix_nanos.max(record.start_unix_nanos);
        let attrs = &mut record.attributes;
        if !peer_recorded {
            if let Some(peer) = fallback_peer {
                attr::push_upstream_peer(attrs, peer);
            }
        }
        attrs.push((
            attr::HTTP_REQUEST_BODY_SIZE,
            AttrValue::Int(
                i64::try_from(request.request_body_bytes.load(Ordering::Relaxed))
                    .unwrap_or(i64::MAX),
            ),
        ));
        let mut error = false;
        if let Some(code) = status_code {
            attrs.push((
                attr::HTTP_RESPONSE_STATUS_CODE,
                AttrValue::Int(i64::from(code.as_u16())),
            ));
            attrs.push((
                attr::HTTP_RESPONSE_BODY_SIZE,
                AttrValue::Int(i64::try_from(response_body_bytes).unwrap_or(i64::MAX)),
            ));
            let failed_status = match record.kind {
                SpanKind::Server => code.is_server_error() || error_type.is_some(),
                SpanKind::Client => code.is_client_error() || code.is_server_error(),
            };
            if failed_status {
                error = true;
                error_type.get_or_insert_with(|| Cow::Owned(code.as_u16().to_string()));
            }
        }
        if let Some(code) = grpc_status {
            attrs.push((attr::RPC_GRPC_STATUS_CODE, AttrValue::Int(code)));
            error |= code != 0;
        }
        match end {
            End::Complete => {}
            End::BodyError => {
                error = true;
                error_type = Some(Cow::Borrowed(ERROR_BODY));
            }
            End::Cancelled => {
                error = true;
                error_type = Some(Cow::Borrowed(ERROR_CANCELLED));
            }
            End::Failed(kind) => {
                error = true;
                error_type = Some(Cow::Borrowed(kind));
            }
        }
        if error {
            let description = error_type.as_ref().map(|t| t.to_string());
            if let Some(kind) = error_type {
                attrs.push((
                    attr::ERROR_TYPE,
                    match kind {
                        Cow::Borrowed(s) => AttrValue::Static(s),
                        Cow::Owned(s) => AttrValue::String(s),
                    },
                ));
            }
            record.status = SpanStatus::Error(description);
        }
        request.shared.send(record);
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
