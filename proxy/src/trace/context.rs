//! The per-request trace context the SERVER layer hands to the CLIENT layer (a request
//! extension), so both spans share one decision and the CLIENT span is the SERVER span's child.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use http::uri::Authority;
use http::HeaderValue;

use crate::span::{SpanId, TraceId};

use super::attributes::RequestText;
use super::propagation::{B3Forms, FLAG_RANDOM, FLAG_SAMPLED};
use super::TracerState;

/// Shared by a sampled request's two spans and its request body.
#[derive(Debug)]
pub struct Recording {
    /// Request body bytes actually read by the upstream side so far.
    pub request_body_bytes: AtomicU64,
    /// The span name and the request's other strings, copied once for both spans.
    pub text: RequestText,
    /// The `Host` header as the SERVER span parsed it, for the CLIENT span to reuse.
    pub authority: Option<Authority>,
    /// Where the request's spans go (held once per request, not once per span).
    pub(crate) tracer: Arc<TracerState>,
}

impl Recording {
    pub(crate) fn new(
        text: RequestText,
        authority: Option<Authority>,
        tracer: Arc<TracerState>,
    ) -> Arc<Recording> {
        Arc::new(Recording {
            request_body_bytes: AtomicU64::new(0),
            text,
            authority,
            tracer,
        })
    }
}

/// This hop's trace context, inserted into request extensions by the SERVER layer.
#[derive(Clone, Debug)]
pub struct HopContext {
    pub(crate) trace_id: TraceId,
    pub(crate) server_span_id: SpanId,
    pub(crate) parent_span_id: Option<SpanId>,
    pub(crate) flags: u8,
    pub(crate) debug: bool,
    pub(crate) trace_state: Option<HeaderValue>,
    pub(crate) trace_id_64: bool,
    /// B3 forms to write on the forwarded request.
    pub(crate) b3: B3Forms,
    /// `Some` when the request is sampled and spans can be exported.
    pub(crate) recording: Option<Arc<Recording>>,
    /// The id of the first CLIENT span, chosen when the SERVER span started (inbound: it is
    /// the context the application receives, registered for outbound requests to find).
    pub(crate) client_span_id: Option<SpanId>,
}

impl HopContext {
    pub fn trace_id(&self) -> &TraceId {
        &self.trace_id
    }

    /// The SERVER span's id (the CLIENT span's parent).
    pub fn server_span_id(&self) -> &SpanId {
        &self.server_span_id
    }

    /// The caller's span, `None` when this proxy started the trace.
    pub fn parent_span_id(&self) -> Option<&SpanId> {
        self.parent_span_id.as_ref()
    }

    pub fn sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }

    /// W3C flags as propagated (sampled, random).
    pub fn flags(&self) -> u8 {
        self.flags & (FLAG_SAMPLED | FLAG_RANDOM)
    }

    /// Whether spans are being recorded for this request.
    pub fn is_recording(&self) -> bool {
        self.recording.is_some()
    }
}
