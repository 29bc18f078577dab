//! What the OTLP spec allows us to retry, and how long to wait.
//!
//! Retrying anything else (a 400, a permanently broken payload) would only pile up load on a
//! collector that already said no; not retrying the transient ones loses spans on every collector
//! restart. Server hints (gRPC `RetryInfo`, HTTP `Retry-After`) override our own backoff.

use std::time::{Duration, SystemTime};

use http::{HeaderValue, StatusCode};
use prost::Message;
use rand::Rng;

use super::config::RetryPolicy;

/// The outcome of one export attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The collector took the request; `rejected` spans of it were refused (partial success).
    Accepted { rejected: u64, message: String },
    /// A transient failure; `after` is the server's requested delay, if it gave one.
    Retryable {
        after: Option<Duration>,
        reason: String,
    },
    /// Not retryable: the batch is dropped.
    Failed { reason: String },
}

/// `google.rpc.Status`, as carried in the `grpc-status-details-bin` trailer and in OTLP/HTTP
/// error bodies.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<ProtoAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoAny {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoDuration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

pub const RETRY_INFO_TYPE_URL: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// The delay a `RetryInfo` in encoded `google.rpc.Status` details asks for.
pub fn retry_info_delay(status_details: &[u8]) -> Option<Duration> {
    let status = RpcStatus::decode(status_details).ok()?;
    status
        .details
        .iter()
        .filter(|any| any.type_url.ends_with("google.rpc.RetryInfo"))
        .find_map(|any| RetryInfo::decode(any.value.as_slice()).ok()?.retry_delay)
        .map(|d| {
            Duration::from_secs(d.seconds.max(0).unsigned_abs())
                + Duration::from_nanos(u64::from(d.nanos.max(0).unsigned_abs()))
        })
}

/// Classifies a failed gRPC call per the OTLP/gRPC spec.
pub fn classify_grpc(status: &tonic::Status) -> Attempt {
    use tonic::Code;
    let after = retry_info_delay(status.details());
    let reason = format!("gRPC {:?}: {}", status.code(), status.message());
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::Cancelled
        | Code::OutOfRange
        | Code::DataLoss => Attempt::Retryable { after, reason },
        // Only retryable when the server says when recovery is possible.
        Code::ResourceExhausted if after.is_some() => Attempt::Retryable { after, reason },
        _ => Attempt::Failed { reason },
    }
}

/// Classifies a non-2xx OTLP/HTTP response per the spec.
pub fn classify_http(
    status: StatusCode,
    retry_after: Option<&HeaderValue>,
    body: &[u8],
    now: SystemTime,
) -> Attempt {
    let detail = RpcStatus::decode(body)
        .ok()
        .map(|s| s.message)
        .filter(|m| !m.is_empty())
        .unwrap_or_default();
    let reason = format!("HTTP {status} {detail}").trim_end().to_owned();
    match status.as_u16() {
        429 | 502 | 503 | 504 => Attempt::Retryable {
            after: retry_after.and_then(|v| parse_retry_after(v, now)),
            reason,
        },
        _ => Attempt::Failed { reason },
    }
}

/// `Retry-After`: delay-seconds or an HTTP-date.
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(text).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Exponential backoff with jitter: each delay is drawn from [base/2, base], and the base grows
/// by the policy's multiplier up to its maximum.
#[derive(Debug)]
pub struct Backoff {
    policy: RetryPolicy,
    base: Duration,
}

impl Backoff {
    pub fn new(policy: RetryPolicy) -> Self {
        let base = policy.initial_backoff;
        Self { policy, base }
    }

    pub fn next_delay(&mut self) -> Duration {
        let base = self.base;
        let next = base.mul_f64(self.policy.multiplier.max(1.0));
        self.base = next.min(self.policy.max_backoff);
        let half = base / 2;
        let jitter_nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rand::rng().random_range(0..=jitter_nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn details_with_retry_info(delay: Duration) -> Vec<u8> {
        RpcStatus {
            code: 8,
            message: "slow down".into(),
            details: vec![ProtoAny {
                type_url: RETRY_INFO_TYPE_URL.into(),
                value: RetryInfo {
                    retry_delay: Some(ProtoDuration {
                        seconds: delay.as_secs() as i64,
                        nanos: delay.subsec_nanos() as i32,
                    }),
                }
                .encode_to_vec(),
            }],
        }
        .encode_to_vec()
    }

    #[test]
    fn retryable_grpc_codes() {
        use tonic::Code;
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::Cancelled,
            Code::OutOfRange,
            Code::DataLoss,
        ] {
            assert!(
                matches!(
                    classify_grpc(&tonic::Status::new(code, "x")),
                    Attempt::Retryable { after: None, .. }
                ),
                "{code:?}"
            );
        }
        for code in [
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::Unimplemented,
            Code::Internal,
            Code::ResourceExhausted,
        ] {
            assert!(
                matches!(
                    classify_grpc(&tonic::Status::new(code, "x")),
                    Attempt::Failed { .. }
                ),
                "{code:?}"
            );
        }
    }

    #[test]
    fn retry_info_is_decoded() {
        let delay = Duration::from_millis(1500);
        let details = details_with_retry_info(delay);
        assert_eq!(retry_info_delay(&details), Some(delay));
        let status = tonic::Status::with_details(
            tonic::Code::ResourceExhausted,
            "slow down",
            details.into(),
        );
        assert_eq!(
            classify_grpc(&status),
            Attempt::Retryable {
                after: Some(delay),
                reason: "gRPC ResourceExhausted: slow down".into()
            }
        );
        assert_eq!(retry_info_delay(b"\xff\xff garbage"), None);
    }

    #[test]
    fn http_statuses() {
        let now = SystemTime::now();
        for code in [429, 502, 503, 504] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(matches!(
                classify_http(status, None, b"", now),
                Attempt::Retryable { after: None, .. }
            ));
        }
        for code in [400, 401, 403, 404, 413, 500] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(matches!(
                classify_http(status, None, b"", now),
                Attempt::Failed { .. }
            ));
        }
        let body = RpcStatus {
            code: 3,
            message: "bad spans".into(),
            details: vec![],
        }
        .encode_to_vec();
        assert_eq!(
            classify_http(StatusCode::BAD_REQUEST, None, &body, now),
            Attempt::Failed {
                reason: "HTTP 400 Bad Request bad spans".into()
            }
        );
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let v = HeaderValue::from_static("7");
        assert_eq!(parse_retry_after(&v, now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        let v = HeaderValue::from_str(&later).unwrap();
        assert_eq!(parse_retry_after(&v, now), Some(Duration::from_secs(30)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        let v = HeaderValue::from_str(&earlier).unwrap();
        assert_eq!(parse_retry_after(&v, now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("soon"), now),
            None
        );
        assert!(matches!(
            classify_http(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(&HeaderValue::from_static("3")),
                b"",
                now
            ),
            Attempt::Retryable { after: Some(d), .. } if d == Duration::from_secs(3)
        ));
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut backoff = Backoff::new(RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(400),
            multiplier: 2.0,
        });
        let bases = [100u64, 200, 400, 400, 400];
        for base in bases {
            let d = backoff.next_delay();
            let base = Duration::from_millis(base);
            assert!(d >= base / 2 && d <= base, "{d:?} vs {base:?}");
        }
    }
}
