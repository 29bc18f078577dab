//! Requests refused before anything is forwarded, because their head is ambiguous about where
//! they go (RFC 9112 §3.2, RFC 9110 §4.2.4): an HTTP/1.1 request without `Host`, any request
//! with more than one `Host` or an unparsable one, an absolute-form target whose authority
//! differs from `Host`, and a target or `Host` carrying userinfo. The client gets a 400 with
//! `meshtrace-proxy-error`; no CLIENT span starts, since nothing is sent.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::Either;
use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Version};

use super::error::{ForwardError, HostError};

/// Wraps the inner service so that invalid requests never reach it.
#[derive(Clone, Copy, Debug, Default)]
pub struct ValidateLayer;

impl<S> tower::Layer<S> for ValidateLayer {
    type Service = Validate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Validate { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Validate<S> {
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for Validate<S>
where
    S: tower::Service<Request<B>, Error = ForwardError>,
{
    type Response = S::Response;
    type Error = ForwardError;
    type Future = Either<S::Future, Refused<S::Response>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ForwardError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let checked = match request.extensions().get::<RefusedHost>() {
            Some(RefusedHost(error)) => Err(*error),
            None => check_host(&request),
        };
        match checked {
            Ok(()) => Either::Left(self.inner.call(request)),
            Err(error) => Either::Right(Refused {
                error,
                response: PhantomData,
            }),
        }
    }
}

/// The future of a refused request: its error, without room for the response it never has
/// (every request's future would otherwise be sized for one).
pub struct Refused<R> {
    error: HostError,
    response: PhantomData<fn() -> R>,
}

impl<R> Future for Refused<R> {
    type Output = Result<R, ForwardError>;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Err(ForwardError::InvalidHost(self.error)))
    }
}

/// Extension set by the HTTP/1 codec's server on a request whose head it found faulty in its
/// Host or userinfo ([`super::h1::HeadError::is_host_class`]): refused here as such, whatever
/// [`check_host`] would say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefusedHost(pub HostError);

/// Checks the request's `Host` and target against each other (HTTP/1 only; h2's
/// `:authority` is checked by the h2 codec).
pub fn check_host<B>(request: &Request<B>) -> Result<(), HostError> {
    let version = request.version();
    if version != Version::HTTP_11 && version != Version::HTTP_10 {
        return Ok(());
    }
    let target = request.uri().authority();
    if target.is_some_and(has_userinfo) {
        return Err(HostError::Userinfo);
    }
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(HostError::Several),
        (Some(host), None) => host,
        // HTTP/1.0 predates Host; `CONNECT` names its destination in its target (and, as in
        // Go's server, is not refused for a missing Host).
        (None, _) if version == Version::HTTP_10 || request.method() == Method::CONNECT => {
            return Ok(())
        }
        (None, _) => return Err(HostError::Missing),
    };
    // An empty Host is what a client sends for a target without an authority (RFC 9110 §7.2).
    if host.is_empty() && target.is_none() {
        return Ok(());
    }
    let host = parse_host(host)?;
    match target {
        Some(target) if request.method() != Method::CONNECT && !same_authority(target, &host) => {
            Err(HostError::Mismatch)
        }
        _ => Ok(()),
    }
}

fn parse_host(value: &HeaderValue) -> Result<Authority, HostError> {
    let authority = Authority::try_from(value.as_bytes()).map_err(|_| HostError::Invalid)?;
    if has_userinfo(&authority) {
        return Err(HostError::Userinfo);
    }
    Ok(authority)
}

fn has_userinfo(authority: &Authority) -> bool {
    authority.as_str().contains('@')
}

/// Whether two authorities name the same origin of an `http` target: hosts compare without
/// case, and a missing port is 80.
fn same_authority(target: &Authority, host: &Authority) -> bool {
    target.host().eq_ignore_ascii_case(host.host())
        && target.port_u16().unwrap_or(80) == host.port_u16().unwrap_or(80)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, uri: &str, version: Version, hosts: &[&str]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(uri).version(version);
        for host in hosts {
            builder = builder.header("Host", *host);
        }
        builder.body(()).unwrap()
    }

    fn check(uri: &str, hosts: &[&str]) -> Result<(), HostError> {
        check_host(&request(Method::GET, uri, Version::HTTP_11, hosts))
    }

    #[test]
    fn host_rules_of_rfc_9112_section_3_2() {
        assert_eq!(check("/", &["svc:80"]), Ok(()));
        assert_eq!(check("/", &[]), Err(HostError::Missing));
        assert_eq!(check("/", &["a", "a"]), Err(HostError::Several));
        assert_eq!(check("/", &["a", "b"]), Err(HostError::Several));
        assert_eq!(check("/", &["a b"]), Err(HostError::Invalid));
        assert_eq!(check("/", &["u:p@a"]), Err(HostError::Userinfo));
        assert_eq!(check("http://a:8080/", &["a:8080"]), Ok(()));
        assert_eq!(check("http://A/", &["a:80"]), Ok(()));
        assert_eq!(
            check("http://a:8080/", &["b:8080"]),
            Err(HostError::Mismatch)
        );
        assert_eq!(check("http://a:8080/", &["a"]), Err(HostError::Mismatch));
        assert_eq!(check("http://a:8080/", &[]), Err(HostError::Missing));
        assert_eq!(check("http://u:p@a/", &["a"]), Err(HostError::Userinfo));
        assert_eq!(check("http://u@a/", &["u@a"]), Err(HostError::Userinfo));
        let http10 = request(Method::GET, "/", Version::HTTP_10, &[]);
        assert_eq!(check_host(&http10), Ok(()));
        let http10_twice = request(Method::GET, "/", Version::HTTP_10, &["a", "b"]);
        assert_eq!(check_host(&http10_twice), Err(HostError::Several));
        let connect = request(Method::CONNECT, "svc:443", Version::HTTP_11, &[]);
        assert_eq!(check_host(&connect), Ok(()));
        let h2 = request(Method::GET, "http://a/", Version::HTTP_2, &["b"]);
        assert_eq!(check_host(&h2), Ok(()));
    }
}
