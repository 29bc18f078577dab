//! Attributes known when a span ends: response status, body sizes, gRPC status, the CLIENT
//! span's network peer, `error.type`, and the span status they imply.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Extensions, HeaderMap, StatusCode};

use crate::meta::{UpstreamPeer, PROXY_ERROR_HEADER};
use crate::span::{AttrValue, Attributes, SpanKind, SpanStatus};

use super::super::record::End;
use super::{
    push_peer, ERROR_TYPE, HTTP_REQUEST_BODY_SIZE, HTTP_RESPONSE_BODY_SIZE,
    HTTP_RESPONSE_STATUS_CODE, RPC_GRPC_STATUS_CODE,
};

const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// gRPC status `CANCELLED`: the call was cancelled (client gone, `RST_STREAM(CANCEL)`).
pub const GRPC_CANCELLED: i64 = 1;
/// gRPC status `DEADLINE_EXCEEDED`: the call's `grpc-timeout` elapsed.
pub const GRPC_DEADLINE_EXCEEDED: i64 = 4;

/// The request's `grpc-timeout` (`1*8DIGIT` and a unit: `H`, `M`, `S`, `m`, `u`, `n`), for a
/// gRPC request; `None` when absent, not gRPC or malformed.
pub fn grpc_timeout(grpc: bool, headers: &HeaderMap) -> Option<Duration> {
    if !grpc {
        return None;
    }
    let value = headers.get(GRPC_TIMEOUT)?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Whether a call that ended `elapsed` after this proxy received it ran out its
/// `grpc-timeout`. The client counted from before it sent the request, so the deadline it
/// enforces comes a little earlier than here: a call ending within a tenth of the timeout
/// (at most 100 ms) before it counts as having reached it.
fn deadline_reached(timeout: Duration, elapsed: Duration) -> bool {
    let slack = (timeout / 10).min(Duration::from_millis(100));
    elapsed + slack >= timeout
}

/// `error.type` when the peer went away before the exchange completed.
pub const ERROR_CANCELLED: &str = "cancelled";
/// `error.type` when a body failed mid-stream.
pub const ERROR_BODY: &str = "body_error";
/// `error.type` when the inner service failed with an error it could not name.
pub const ERROR_OTHER: &str = "_OTHER";

/// What a span learns from its response until it ends, turned into attributes by
/// [`ResponseAttributes::finish`].
#[derive(Debug)]
pub struct ResponseAttributes {
    body_bytes: u64,
    status_code: Option<StatusCode>,
    error_type: Option<Cow<'static, str>>,
    grpc: bool,
    grpc_status: Option<i64>,
    /// The gRPC request's `grpc-timeout`.
    grpc_timeout: Option<Duration>,
    /// CLIENT: where the request went if the data path did not report [`UpstreamPeer`].
    fallback_peer: Option<SocketAddr>,
    peer_recorded: bool,
}

impl ResponseAttributes {
    /// Nothing known yet, for a request that is gRPC or not (with its `grpc-timeout`, see
    /// [`grpc_timeout`]); `fallback_peer` as above.
    pub fn new(
        grpc: bool,
        grpc_timeout: Option<Duration>,
        fallback_peer: Option<SocketAddr>,
    ) -> ResponseAttributes {
        ResponseAttributes {
            body_bytes: 0,
            status_code: None,
            error_type: None,
            grpc,
            grpc_status: None,
            grpc_timeout,
            fallback_peer,
            peer_recorded: false,
        }
    }

    /// Reads the response head: its status; on a SERVER span, the name of the error the data
    /// path answered for (its [`PROXY_ERROR_HEADER`]); on a CLIENT span, the peer the data path
    /// reports (pushed into `attrs` now); a trailers-only gRPC status.
    pub fn on_head(
        &mut self,
        kind: SpanKind,
        status: StatusCode,
        headers: &HeaderMap,
        extensions: &Extensions,
        attrs: &mut Attributes,
    ) {
        self.status_code = Some(status);
        match kind {
            SpanKind::Server => {
                if let Some(kind) = headers
                    .get(PROXY_ERROR_HEADER)
                    .and_then(|v| v.to_str().ok())
                {
                    self.error_type = Some(Cow::Owned(kind.to_owned()));
                }
            }
            SpanKind::Client => {
                if let Some(UpstreamPeer(peer)) = extensions.get::<UpstreamPeer>() {
                    push_peer(attrs, *peer);
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

    pub fn add_body_bytes(&mut self, n: usize) {
        self.body_bytes = self.body_bytes.saturating_add(n as u64);
    }

    /// The gRPC status a call that ended as `end`, `elapsed` after it started, ended with: its
    /// `grpc-status` when the response carried one; otherwise `DEADLINE_EXCEEDED` when it did
    /// not complete and its `grpc-timeout` elapsed, `CANCELLED` when it was cancelled (client
    /// gone, or a `RST_STREAM(CANCEL)`).
    fn grpc_status(&self, end: &End, elapsed: Duration) -> Option<i64> {
        if !self.grpc || self.grpc_status.is_some() {
            return self.grpc_status;
        }
        if matches!(end, End::Complete) {
            return None;
        }
        if self
            .grpc_timeout
            .is_some_and(|timeout| deadline_reached(timeout, elapsed))
        {
            Some(GRPC_DEADLINE_EXCEEDED)
        } else if matches!(end, End::Cancelled | End::ResetCancel) {
            Some(GRPC_CANCELLED)
        } else {
            None
        }
    }

    /// Pushes the attributes of a span of `kind` that ended as `end`, `elapsed` after it
    /// started, after its request body carried `request_body_bytes`, and returns the span
    /// status they imply.
    pub fn finish(
        self,
        kind: SpanKind,
        end: End,
        elapsed: Duration,
        request_body_bytes: u64,
        attrs: &mut Attributes,
    ) -> SpanStatus {
        let grpc_status = self.grpc_status(&end, elapsed);
        if !self.peer_recorded {
            if let Some(peer) = self.fallback_peer {
                push_peer(attrs, peer);
            }
        }
        attrs.push((
            HTTP_REQUEST_BODY_SIZE,
            AttrValue::Int(i64::try_from(request_body_bytes).unwrap_or(i64::MAX)),
        ));
        let mut error_type = self.error_type;
        let mut error = false;
        if let Some(code) = self.status_code {
            attrs.push((
                HTTP_RESPONSE_STATUS_CODE,
                AttrValue::Int(i64::from(code.as_u16())),
            ));
            attrs.push((
                HTTP_RESPONSE_BODY_SIZE,
                AttrValue::Int(i64::try_from(self.body_bytes).unwrap_or(i64::MAX)),
            ));
            let failed_status = match kind {
                SpanKind::Server => code.is_server_error() || error_type.is_some(),
                SpanKind::Client => code.is_client_error() || code.is_server_error(),
            };
            if failed_status {
                error = true;
                error_type.get_or_insert_with(|| Cow::Owned(code.as_u16().to_string()));
            }
        }
        if let Some(code) = grpc_status {
            attrs.push((RPC_GRPC_STATUS_CODE, AttrValue::Int(code)));
            error |= code != 0;
        }
        match end {
            End::Complete => {}
            End::BodyError => {
                error = true;
                error_type = Some(Cow::Borrowed(ERROR_BODY));
            }
            End::Cancelled | End::ResetCancel => {
                error = true;
                error_type = Some(Cow::Borrowed(ERROR_CANCELLED));
            }
            End::Failed(kind) => {
                error = true;
                error_type = Some(Cow::Borrowed(kind));
            }
        }
        if !error {
            return SpanStatus::Unset;
        }
        let description = error_type.as_ref().map(|t| t.to_string());
        if let Some(kind) = error_type {
            attrs.push((
                ERROR_TYPE,
                match kind {
                    Cow::Borrowed(s) => AttrValue::Static(s),
                    Cow::Owned(s) => AttrValue::String(s),
                },
            ));
        }
        SpanStatus::Error(description)
    }
}
