//! Starting a hop's two spans, one named step at a time.
//!
//! SERVER span, when a request arrives ([`start_server`]):
//! 1. **scan** the headers once ([`ScannedHeaders`]);
//! 2. **extract** what the request says about its trace (`propagation`): the caller's span, if
//!    a valid context arrived, and the rest ([`Incoming`]: sampling asks, B3 forms, the
//!    sample header);
//!    **correlate** (outbound): a request that arrived without context gets a parent inferred
//!    from the pod's inbound requests (`correlate`); inbound requests get a request id and are
//!    registered for that (after the hand-off's CLIENT span id is chosen);
//! 3. **join** the caller's (or the inferred) trace or start one ([`HopTrace`]);
//! 4. **decide** sampling (`sampling`);
//! 5. **record**: build the request attributes (`attributes`) and start the span;
//! 6. **hand off** the hop's context to the CLIENT span ([`HopContext`], a request extension).
//!
//! CLIENT span, when the request is forwarded ([`start_client`]): take the hand-off, record
//! (attributes, span), **inject** the CLIENT span's context (`propagation`).

use std::sync::Arc;

use http::request::Parts;
use http::{HeaderValue, Method};

use crate::meta::is_upgrade;
use crate::meta::{ConnMeta, Direction};
use crate::span::{AttrValue, Links, SpanId, SpanKind, TraceId};

use super::attributes::{self, RequestHeaders};
use super::context::{HopContext, Recording};
use super::correlate::{
    InFlight, Inferred, ParentContext, Registration, Source, ATTR_CANDIDATES, ATTR_SOURCE,
};
use super::propagation::{
    self, B3Forms, Extracted, Outgoing, RemoteParent, ScannedHeaders, FLAG_RANDOM, FLAG_SAMPLED,
};
use super::record::{PendingSpan, SpanGuard, SpanStart};
use super::sampling::{self, Decision};
use super::{ids, TraceResponse, TracerState};

/// What starting the SERVER span gives the layer.
pub(super) struct ServerStart {
    /// The SERVER span, when the request is recorded.
    pub(super) guard: Option<SpanGuard>,
    /// What the request body counts into, when the request is recorded.
    pub(super) recording: Option<Arc<Recording>>,
    /// The `traceresponse` header to answer with, if any.
    pub(super) trace_response: Option<HeaderValue>,
    /// Inbound: the request's registration for correlation, until its response ends.
    pub(super) in_flight: InFlight,
}

/// Starts the SERVER span of a request that arrived with `parts` on the proxy's `direction`
/// (`None`: a bare layer, which does not correlate): the steps in the module doc.
pub(super) fn start_server(
    tracer: &Arc<TracerState>,
    direction: Option<Direction>,
    parts: &mut Parts,
) -> ServerStart {
    let scanned = ScannedHeaders::scan(&parts.headers, Some(&tracer.sample_header));
    let (parent, mut incoming) = extract(tracer, &scanned);
    let mut correlated = correlate(tracer, direction, parent, &mut incoming, parts);
    let trace = HopTrace::join_or_start(correlated.parent.take());
    let decision = decide(tracer, &incoming, &trace);
    let span_id = ids::new_span_id();
    let flags = flags(decision, trace.random);
    let trace_response = trace_response(tracer, &incoming, &trace, &span_id, flags);
    let (guard, recording) = if decision.sampled && tracer.sink.is_enabled() {
        let (guard, recording) =
            record_server(tracer, parts, &scanned, &trace, span_id, flags, correlated);
        (Some(guard), Some(recording))
    } else {
        (None, None)
    };
    if incoming.sample_header.is_some() {
        // The proxy that applies the sample header removes it.
        parts.headers.remove(&tracer.sample_header);
    }
    let client_span_id = ids::new_span_id();
    let in_flight = if direction == Some(Direction::Inbound) {
        register_inbound(tracer, parts, &trace, client_span_id, flags)
    } else {
        InFlight::none()
    };
    // Hand off to the CLIENT span.
    parts.extensions.insert(HopContext {
        trace_id: trace.trace_id,
        server_span_id: span_id,
        parent_span_id: trace.parent_span_id,
        flags,
        debug: incoming.debug && decision.sampled,
        trace_state: trace.trace_state,
        trace_id_64: trace.trace_id_64,
        b3: if incoming.b3_arrived.any() {
            incoming.b3_arrived
        } else {
            tracer.default_b3
        },
        recording: recording.clone(),
        client_span_id: Some(client_span_id),
    });
    ServerStart {
        guard,
        recording,
        trace_response,
        in_flight,
    }
}

/// Step 2½, correlate (outbound only): the parent of a request that arrived without trace
/// context, inferred from the pod's inbound requests (`correlate`); the caller's span when it
/// sent one. An inferred parent's sampling decision is followed unless the request asks
/// otherwise.
fn correlate(
    tracer: &TracerState,
    direction: Option<Direction>,
    parent: Option<RemoteParent>,
    incoming: &mut Incoming,
    parts: &Parts,
) -> Correlated {
    if direction != Some(Direction::Outbound) {
        return Correlated::as_sent(parent, None);
    }
    if parent.is_some() {
        tracer.metrics.count_source(Source::Propagated);
        return Correlated::as_sent(parent, Some(Source::Propagated));
    }
    let inferred = match &tracer.correlator {
        Some(correlator) => {
            let request_id = tracer
                .request_id_header
                .as_ref()
                .and_then(|name| parts.headers.get(name))
                .map(HeaderValue::as_bytes);
            correlator.infer(request_id)
        }
        None => Inferred::Background,
    };
    let source = inferred.source();
    tracer.metrics.count_source(source);
    let parent = inferred.parent().map(|context| RemoteParent {
        trace_id: context.trace_id,
        span_id: context.span_id,
        random: context.flags & FLAG_RANDOM != 0,
        trace_state: context.trace_state.clone(),
        trace_id_64: context.trace_id_64,
    });
    if let (Some(context), None) = (inferred.parent(), incoming.sampled) {
        incoming.sampled = Some(context.flags & FLAG_SAMPLED != 0);
    }
    let candidates = match &inferred {
        Inferred::Ambiguous { candidates, .. } => Some(*candidates),
        _ => None,
    };
    Correlated {
        parent,
        source: Some(source),
        candidates,
        links: inferred.links(),
    }
}

/// What the correlate step found for an outbound request.
struct Correlated {
    /// The parent to join: sent by the caller or inferred.
    parent: Option<RemoteParent>,
    /// How the parent was found (outbound requests only).
    source: Option<Source>,
    /// Candidates in flight, when ambiguous.
    candidates: Option<usize>,
    /// Links to the candidates, when ambiguous.
    links: Links,
}

impl Correlated {
    fn as_sent(parent: Option<RemoteParent>, source: Option<Source>) -> Correlated {
        Correlated {
            parent,
            source,
            candidates: None,
            links: Vec::new(),
        }
    }
}

/// Inbound: gives the request a request id if it has none (kept if it has one) and registers
/// it, with the context the application receives (the first CLIENT span), until its response
/// ends.
fn register_inbound(
    tracer: &TracerState,
    parts: &mut Parts,
    trace: &HopTrace,
    client_span_id: SpanId,
    flags: u8,
) -> InFlight {
    let Some(name) = &tracer.request_id_header else {
        return register(tracer, parts, None, trace, client_span_id, flags);
    };
    if !parts.headers.contains_key(name) {
        if let Ok(mut value) = HeaderValue::from_bytes(&ids::new_request_id()) {
            // Unique per request: h2 sends it as a never-indexed literal instead of filling
            // the HPACK table with values that never repeat (~2,000 instructions each).
            value.set_sensitive(true);
            parts.headers.insert(name.clone(), value);
        }
    }
    let request_id = parts.headers.get(name).map(HeaderValue::as_bytes);
    register(tracer, parts, request_id, trace, client_span_id, flags)
}

/// Registers an inbound request (a candidate unless it is an upgrade or `CONNECT`).
fn register(
    tracer: &TracerState,
    parts: &Parts,
    request_id: Option<&[u8]>,
    trace: &HopTrace,
    client_span_id: SpanId,
    flags: u8,
) -> InFlight {
    let Some(correlator) = &tracer.correlator else {
        return InFlight::none();
    };
    let candidate = parts.method != Method::CONNECT && !is_upgrade(&parts.headers);
    correlator.register(Registration {
        request_id,
        context: ParentContext {
            trace_id: trace.trace_id,
            span_id: client_span_id,
            flags,
            trace_id_64: trace.trace_id_64,
            trace_state: trace.trace_state.clone(),
        },
        candidate,
    })
}

/// What an incoming request asks of this hop besides its parent, before this proxy decides
/// anything.
pub(super) struct Incoming {
    /// The caller's sampling decision; `None` defers it to this proxy.
    pub(super) sampled: Option<bool>,
    /// B3 debug: force sampling.
    pub(super) debug: bool,
    /// The B3 forms that arrived (the ones written back).
    pub(super) b3_arrived: B3Forms,
    /// The sample header: `None` when absent, `Some(None)` when not a number (ignored).
    pub(super) sample_header: Option<Option<f64>>,
}

impl Incoming {
    /// The rate the sample header forces, if it is present and a number.
    fn forced_rate(&self) -> Option<f64> {
        self.sample_header.flatten()
    }
}

/// Step 2: reads the caller's context and the sample header from the scan: the caller's span
/// (if a valid context arrived), and the rest.
fn extract(tracer: &TracerState, scanned: &ScannedHeaders<'_>) -> (Option<RemoteParent>, Incoming) {
    let sample_header = scanned
        .sample()
        .map(|value| sampling::sample_header_rate(tracer, value));
    let Extracted {
        parent,
        sampled,
        debug,
        b3_arrived,
        format: _,
    } = scanned.extract();
    let incoming = Incoming {
        sampled,
        debug,
        b3_arrived,
        sample_header,
    };
    (parent, incoming)
}

/// The trace this hop belongs to: the caller's, or one this proxy starts.
pub(super) struct HopTrace {
    pub(super) trace_id: TraceId,
    /// The caller's span; `None` when this proxy starts the trace.
    pub(super) parent_span_id: Option<SpanId>,
    /// W3C random flag.
    pub(super) random: bool,
    pub(super) trace_state: Option<HeaderValue>,
    /// The trace id arrived as a 64-bit B3 id.
    pub(super) trace_id_64: bool,
}

impl HopTrace {
    /// Step 3: continues `parent`'s trace, or starts a new one (random id, no parent).
    fn join_or_start(parent: Option<RemoteParent>) -> HopTrace {
        match parent {
            Some(parent) => HopTrace {
                trace_id: parent.trace_id,
                parent_span_id: Some(parent.span_id),
                random: parent.random,
                trace_state: parent.trace_state,
                trace_id_64: parent.trace_id_64,
            },
            None => HopTrace {
                trace_id: ids::new_trace_id(),
                parent_span_id: None,
                random: true,
                trace_state: None,
                trace_id_64: false,
            },
        }
    }

    /// Whether this proxy started the trace.
    fn started_here(&self) -> bool {
        self.parent_span_id.is_none()
    }
}

/// Step 4: the sampling decision for this trace (see [`sampling::decide`] for the order).
fn decide(tracer: &TracerState, incoming: &Incoming, trace: &HopTrace) -> Decision {
    sampling::decide(
        incoming.forced_rate(),
        incoming.debug,
        incoming.sampled,
        &trace.trace_id,
        tracer.sample_rate,
    )
}

/// The W3C flags the hop propagates.
fn flags(decision: Decision, random: bool) -> u8 {
    let sampled = if decision.sampled { FLAG_SAMPLED } else { 0 };
    sampled | if random { FLAG_RANDOM } else { 0 }
}

/// The `traceresponse` value, when the setting asks for one: `on` when this proxy applied the
/// sample header (the client asked for a trace), `always` also when this proxy started the trace.
fn trace_response(
    tracer: &TracerState,
    incoming: &Incoming,
    trace: &HopTrace,
    span_id: &SpanId,
    flags: u8,
) -> Option<HeaderValue> {
    let applied_sample_header = incoming.forced_rate().is_some();
    let wanted = match tracer.trace_response {
        TraceResponse::Off => false,
        TraceResponse::On => applied_sample_header,
        TraceResponse::Always => applied_sample_header || trace.started_here(),
    };
    if wanted {
        propagation::w3c::traceparent_value(&trace.trace_id, span_id, flags)
    } else {
        None
    }
}

/// Step 5: builds the SERVER span's attributes and starts it, with the request's recording
/// (shared with the CLIENT span and the request body).
fn record_server(
    tracer: &Arc<TracerState>,
    parts: &Parts,
    scanned: &ScannedHeaders<'_>,
    trace: &HopTrace,
    span_id: SpanId,
    flags: u8,
    correlated: Correlated,
) -> (SpanGuard, Arc<Recording>) {
    let conn = conn_of(parts);
    let trace_state = trace.trace_state.as_ref().and_then(|s| s.to_str().ok());
    let request = attributes::server_request(
        tracer.naming,
        parts,
        &attribute_headers(scanned),
        conn,
        trace_state,
    );
    let span_trace_state = request.text.trace_state();
    let mut attributes = request.attributes;
    if let Some(source) = correlated.source {
        attributes.push((ATTR_SOURCE, AttrValue::Static(source.as_str())));
    }
    if let Some(candidates) = correlated.candidates {
        let candidates = i64::try_from(candidates).unwrap_or(i64::MAX);
        attributes.push((ATTR_CANDIDATES, AttrValue::Int(candidates)));
    }
    let recording = Recording::new(request.text, request.host_header, tracer.clone());
    let span = PendingSpan::new(
        SpanStart {
            kind: SpanKind::Server,
            trace_id: trace.trace_id,
            span_id,
            parent_span_id: trace.parent_span_id,
            trace_state: span_trace_state,
            flags,
            grpc: request.grpc,
            grpc_timeout: attributes::grpc_timeout(request.grpc, &parts.headers),
            fallback_peer: None,
            links: correlated.links,
        },
        attributes,
        recording.clone(),
    );
    (SpanGuard::new(span), recording)
}

/// Starts the CLIENT span of a forwarded request and writes its context into the request's
/// propagation headers. Without a [`HopContext`] (no SERVER layer above) nothing happens.
pub(super) fn start_client(parts: &mut Parts) -> Option<SpanGuard> {
    // The first forwarded request takes the id chosen with the SERVER span (inbound: the one
    // registered for correlation); any further one (a retry) gets a new id.
    let span_id = parts
        .extensions
        .get_mut::<HopContext>()?
        .client_span_id
        .take()
        .unwrap_or_else(ids::new_span_id);
    let hop = parts.extensions.get::<HopContext>()?;
    // One pass over the headers finds the propagation headers to replace and the ones the
    // attributes read.
    let scanned = ScannedHeaders::scan(&parts.headers, None);
    let present = scanned.present();
    let guard = hop
        .recording
        .as_ref()
        .map(|recording| record_client(parts, &scanned, hop, recording, span_id));
    propagation::inject_into(&mut parts.headers, &outgoing(hop, &span_id), present);
    guard
}

/// Builds the CLIENT span's attributes (reusing what the SERVER span read) and starts it.
fn record_client(
    parts: &Parts,
    scanned: &ScannedHeaders<'_>,
    hop: &HopContext,
    recording: &Arc<Recording>,
    span_id: SpanId,
) -> SpanGuard {
    let headers = attribute_headers(scanned);
    let conn = conn_of(parts);
    let grpc = headers.is_grpc();
    let span = PendingSpan::new(
        SpanStart {
            kind: SpanKind::Client,
            trace_id: hop.trace_id,
            span_id,
            parent_span_id: Some(hop.server_span_id),
            // The SERVER span's, which the hop context carries.
            trace_state: recording.text.trace_state(),
            flags: hop.flags,
            grpc,
            grpc_timeout: attributes::grpc_timeout(grpc, &parts.headers),
            fallback_peer: conn.and_then(|c| c.orig_dst),
            links: Vec::new(),
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
}

/// The context the CLIENT span `span_id` writes on the forwarded request.
fn outgoing<'a>(hop: &'a HopContext, span_id: &'a SpanId) -> Outgoing<'a> {
    Outgoing {
        trace_id: &hop.trace_id,
        span_id,
        parent_span_id: &hop.server_span_id,
        flags: hop.flags,
        debug: hop.debug,
        trace_state: hop.trace_state.as_ref(),
        trace_id_64: hop.trace_id_64,
        tracecontext: true,
        b3: hop.b3,
    }
}

/// The request headers the attributes read, as the scan found them (no lookup of their own).
fn attribute_headers<'a>(scanned: &ScannedHeaders<'a>) -> RequestHeaders<'a> {
    RequestHeaders {
        host: scanned.host(),
        user_agent: scanned.user_agent(),
        content_type: scanned.content_type(),
    }
}

/// The connection the request came on, as the listener recorded it.
fn conn_of(parts: &Parts) -> Option<&ConnMeta> {
    parts.extensions.get::<Arc<ConnMeta>>().map(Arc::as_ref)
}
