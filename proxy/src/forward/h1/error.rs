//! Why the codec refused a message: one variant per rule, each with the status a client gets and
//! a stable name for the `meshtrace-proxy-error` header and the `error.type` span attribute.
//! The Host rules use the names of `forward::error::HostError` (the hyper path's checks), so a
//! refusal reads the same on either path.

use http::StatusCode;

use crate::forward::error::HostError;
use crate::meta::ErrorType;

/// A message head the codec refuses to forward (RFC 9112 §2–§6, RFC 9110 §5, §7.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("message head exceeds the head size limit")]
    HeadTooLarge,
    #[error("message head has more fields than the field-count limit")]
    TooManyFields,
    #[error("malformed start line")]
    StartLine,
    #[error("unsupported HTTP version")]
    Version,
    #[error("malformed header field")]
    FieldSyntax,
    #[error("bare CR, bare LF or NUL in the message head")]
    LineEnding,
    #[error("malformed request-target")]
    Target,
    #[error("request-target carries userinfo")]
    Userinfo,
    #[error("HTTP/1.1 request without a Host field")]
    HostMissing,
    #[error("more than one Host field")]
    HostRepeated,
    #[error("malformed Host field")]
    HostInvalid,
    #[error("Host differs from the absolute-form target's authority")]
    HostMismatch,
    #[error("malformed Content-Length")]
    ContentLengthInvalid,
    #[error("more than one Content-Length value")]
    ContentLengthRepeated,
    #[error("both Content-Length and Transfer-Encoding")]
    ContentLengthWithTransferEncoding,
    #[error("Transfer-Encoding whose final coding is not chunked")]
    TransferEncodingInvalid,
    #[error("Transfer-Encoding in an HTTP/1.0 message")]
    TransferEncodingHttp10,
    #[error("transfer coding this proxy does not implement")]
    TransferCodingUnknown,
    #[error("Content_Length or Transfer_Encoding: a framing field spelled with an underscore")]
    FramingFieldAlias,
}

impl HeadError {
    /// The stack's name for a Host-class refusal.
    pub fn host_error(&self) -> Option<HostError> {
        match self {
            HeadError::HostMissing => Some(HostError::Missing),
            HeadError::HostRepeated => Some(HostError::Several),
            HeadError::HostInvalid => Some(HostError::Invalid),
            HeadError::HostMismatch => Some(HostError::Mismatch),
            HeadError::Userinfo => Some(HostError::Userinfo),
            _ => None,
        }
    }

    /// A refusal about where the request goes (Host, userinfo), not about its framing: the
    /// codec's server leaves these to the service stack (`forward::validate`).
    pub fn is_host_class(&self) -> bool {
        self.host_error().is_some()
    }

    /// The status a client gets for a refused request head (RFC 9110 §15.5.1, RFC 6585 §5,
    /// RFC 9112 §6.1 for 501, RFC 9110 §15.6.6 for 505). A refused response head becomes a 502
    /// for the client instead; that mapping belongs to the wiring.
    pub fn status(&self) -> StatusCode {
        match self {
            HeadError::HeadTooLarge | HeadError::TooManyFields => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            HeadError::TransferCodingUnknown => StatusCode::NOT_IMPLEMENTED,
            HeadError::Version => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl ErrorType for HeadError {
    fn error_type(&self) -> &'static str {
        match self {
            HeadError::HeadTooLarge => "request_head_too_large",
            HeadError::TooManyFields => "too_many_fields",
            HeadError::StartLine => "invalid_start_line",
            HeadError::Version => "unsupported_version",
            HeadError::FieldSyntax => "invalid_field",
            HeadError::LineEnding => "invalid_line_ending",
            HeadError::Target => "invalid_target",
            HeadError::Userinfo => "userinfo",
            HeadError::HostMissing => "missing_host",
            HeadError::HostRepeated => "duplicate_host",
            HeadError::HostInvalid => "invalid_host",
            HeadError::HostMismatch => "host_mismatch",
            HeadError::ContentLengthInvalid => "invalid_content_length",
            HeadError::ContentLengthRepeated => "repeated_content_length",
            HeadError::ContentLengthWithTransferEncoding => "content_length_with_transfer_encoding",
            HeadError::TransferEncodingInvalid => "invalid_transfer_encoding",
            HeadError::TransferEncodingHttp10 => "transfer_encoding_http10",
            HeadError::TransferCodingUnknown => "unknown_transfer_coding",
            HeadError::FramingFieldAlias => "framing_field_alias",
        }
    }
}

/// A chunked body the codec refuses to pass on (RFC 9112 §7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("malformed chunk size")]
    Size,
    #[error("chunk size overflows 64 bits")]
    SizeOverflow,
    #[error("malformed chunk extension")]
    Extension,
    #[error("chunk line exceeds the chunk line limit")]
    LineTooLong,
    #[error("chunk extensions exceed the per-body extension budget")]
    ExtensionsTooLarge,
    #[error("chunk line or chunk data not ended by CRLF")]
    LineEnding,
    #[error("malformed trailer field")]
    Trailer,
    #[error("trailer section exceeds the head size limit")]
    TrailersTooLarge,
}

impl ChunkError {
    /// Every chunked-body error is the sender's fault: 400 for a request body (RFC 9112 §7.1,
    /// §6.3 item 4 by analogy). A response body error is an upstream failure for the wiring.
    pub fn status(&self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }
}

impl ErrorType for ChunkError {
    fn error_type(&self) -> &'static str {
        match self {
            ChunkError::Size => "invalid_chunk_size",
            ChunkError::SizeOverflow => "chunk_size_overflow",
            ChunkError::Extension => "invalid_chunk_extension",
            ChunkError::LineTooLong => "chunk_line_too_long",
            ChunkError::ExtensionsTooLarge => "chunk_extensions_too_large",
            ChunkError::LineEnding => "invalid_chunk_line_ending",
            ChunkError::Trailer => "invalid_trailer",
            ChunkError::TrailersTooLarge => "trailers_too_large",
        }
    }
}
