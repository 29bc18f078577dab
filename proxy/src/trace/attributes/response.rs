//! Attributes known when a span ends: response status, body sizes, gRPC status, the CLIENT
//! span's network peer, `error.type`, and the span status they imply.

use std::borrow::Cow;
use std::net::SocketAddr;

use http::{Extensions, HeaderMap, StatusCode};

use crate::meta::{UpstreamPeer, PROXY_ERROR_HEADER};
use crate::span::{AttrValue, Attributes, SpanKind, SpanStatus};

use super::super::record::End;
use super::{
    push_peer, ERROR_TYPE, HTTP_REQUEST_BODY_SIZE, HTTP_RESPONSE_BODY_SIZE,
    HTTP_RESPONSE_STATUS_CODE, RPC_GRPC_STATUS_CODE,
};

const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

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
    /// CLIENT: where the request went if the data path did not report [`UpstreamPeer`].
    fallback_peer: Option<SocketAddr>,
    peer_recorded: bool,
}

impl ResponseAttributes {
    /// Nothing known yet, for a request that is gRPC or not; `fallback_peer` as above.
    pub fn new(grpc: bool, fallback_peer: Option<SocketAddr>) -> ResponseAttributes {
        ResponseAttributes {
            body_bytes: 0,
            status_code: None,
            error_type: None,
            grpc,
            grpc_status: None,
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

    /// Pushes the attributes of a span of `kind` that ended as `end` after its request body
    /// carried `request_body_bytes`, and returns the span status they imply.
    pub fn finish(
        self,
        kind: SpanKind,
        end: End,
        request_body_bytes: u64,
        attrs: &mut Attributes,
    ) -> SpanStatus {
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
        if let Some(code) = self.grpc_status {
            attrs.push((RPC_GRPC_STATUS_CODE, AttrValue::Int(code)));
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
