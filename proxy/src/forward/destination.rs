//! Where a request goes in explicit (forward-proxy) mode, where it names its destination; in
//! transparent mode the connection's original destination is used as it is.

use std::net::SocketAddr;

use http::header::{self, HeaderValue};
use http::uri::{Authority, Scheme, Uri};
use http::{Method, Request, Version};

use super::error::ForwardError;
use super::loop_check::OwnListeners;
use super::resolve::Resolver;

/// The addresses of the destination `request` names (rewriting an absolute-form target, see
/// [`explicit_destination`]), none of them one of the proxy's own listeners. `conn_local`: the
/// proxy's address for the client connection.
pub async fn explicit_targets<B>(
    request: &mut Request<B>,
    conn_local: SocketAddr,
    resolver: &Resolver,
    own_listeners: &OwnListeners,
) -> Result<Vec<SocketAddr>, ForwardError> {
    let authority = explicit_destination(request)?;
    let port = authority.port_u16().unwrap_or(80);
    let targets = resolver.resolve(authority.host(), port).await?;
    match own_listeners.first_reached_by(&targets, conn_local) {
        Some(own) => Err(ForwardError::Loop(own)),
        None => Ok(targets),
    }
}

/// In explicit (forward-proxy) mode, the destination named by the request: the
/// authority-form target of `CONNECT`, the absolute-form target (which is then rewritten to
/// origin-form with a matching Host, as a forward proxy must), h2's `:authority`, or Host.
pub fn explicit_destination<B>(request: &mut Request<B>) -> Result<Authority, ForwardError> {
    let invalid = |request: &Request<B>| ForwardError::InvalidTarget(request.uri().to_string());
    if request.method() == Method::CONNECT {
        return match request.uri().authority() {
            Some(authority) if authority.port_u16().is_some() => Ok(authority.clone()),
            _ => Err(invalid(request)),
        };
    }
    if request.version() == Version::HTTP_2 {
        if let Some(authority) = request.uri().authority() {
            return Ok(authority.clone());
        }
    } else if let Some(authority) = request.uri().authority().cloned() {
        if request.uri().scheme() != Some(&Scheme::HTTP) {
            return Err(invalid(request));
        }
        let origin_form = request
            .uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .parse::<Uri>()
            .map_err(|_| invalid(request))?;
        *request.uri_mut() = origin_form;
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| invalid(request))?;
        request.headers_mut().insert(header::HOST, host);
        return Ok(authority);
    }
    let host = request
        .headers()
        .get(header::HOST)
        .ok_or(ForwardError::NoDestination)?;
    host.to_str()
        .ok()
        .and_then(|host| host.parse::<Authority>().ok())
        .ok_or_else(|| ForwardError::InvalidTarget(format!("Host: {host:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, uri: &str, version: Version, host: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(uri).version(version);
        if let Some(host) = host {
            builder = builder.header("Host", host);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn explicit_destinations() {
        let mut absolute = request(
            Method::GET,
            "http://example.com:8080/a?b=c",
            Version::HTTP_11,
            Some("ignored:1"),
        );
        let authority = explicit_destination(&mut absolute).unwrap();
        assert_eq!(authority.as_str(), "example.com:8080");
        assert_eq!(absolute.uri().to_string(), "/a?b=c");
        assert_eq!(absolute.headers()["host"], "example.com:8080");

        let mut bare = request(Method::GET, "http://example.com", Version::HTTP_11, None);
        assert_eq!(explicit_destination(&mut bare).unwrap().port_u16(), None);
        assert_eq!(bare.uri().to_string(), "/");
        assert_eq!(bare.headers()["host"], "example.com");

        let mut origin = request(Method::POST, "/x", Version::HTTP_11, Some("svc:9000"));
        assert_eq!(
            explicit_destination(&mut origin).unwrap().as_str(),
            "svc:9000"
        );
        assert_eq!(origin.uri().to_string(), "/x");

        let mut connect = request(Method::CONNECT, "svc:443", Version::HTTP_11, None);
        assert_eq!(
            explicit_destination(&mut connect).unwrap().as_str(),
            "svc:443"
        );

        let mut h2 = request(
            Method::GET,
            "http://svc:50051/pkg.Svc/M",
            Version::HTTP_2,
            None,
        );
        assert_eq!(explicit_destination(&mut h2).unwrap().as_str(), "svc:50051");
        assert_eq!(h2.uri().to_string(), "http://svc:50051/pkg.Svc/M");

        let mut nothing = request(Method::GET, "/", Version::HTTP_11, None);
        assert!(matches!(
            explicit_destination(&mut nothing),
            Err(ForwardError::NoDestination)
        ));
        let mut https = request(Method::GET, "https://svc/", Version::HTTP_11, None);
        assert!(matches!(
            explicit_destination(&mut https),
            Err(ForwardError::InvalidTarget(_))
        ));
    }
}
