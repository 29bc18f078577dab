//! Request attribute tests: what each span records of a request, and what it never records.

use std::sync::Arc;

use http::header::{HeaderMap, CONTENT_TYPE, HOST, USER_AGENT};
use http::Request;

use crate::meta::Direction;
use crate::span::{SharedStr, SpanKind};

use super::target::plain_host;
use super::*;

/// The attribute headers of `headers`, read as the layers' scan reads them (first values).
fn headers_of(headers: &HeaderMap) -> RequestHeaders<'_> {
    RequestHeaders {
        host: headers.get(HOST),
        user_agent: headers.get(USER_AGENT),
        content_type: headers.get(CONTENT_TYPE),
    }
}

/// Whether the request is gRPC, read from its own headers.
fn is_grpc(headers: &HeaderMap) -> bool {
    headers_of(headers).is_grpc()
}

/// [`addressed`] with the request's own `Host` header.
fn target_authority<'a>(req: &'a Parts, known: Option<&'a Authority>) -> Option<Addressed<'a>> {
    addressed(req, req.headers.get(HOST), known)
}

fn conn() -> Arc<ConnMeta> {
    Arc::new(ConnMeta {
        direction: Direction::Inbound,
        client_addr: "10.0.0.7:51000".parse().unwrap(),
        local_addr: "10.0.0.9:4143".parse().unwrap(),
        orig_dst: Some("10.0.0.9:8080".parse().unwrap()),
    })
}

/// The attribute's value, strings normalised to `String` whatever their representation.
fn get(attrs: &Attributes, key: &str) -> Option<AttrValue> {
    let value = attrs.iter().find(|(k, _)| *k == key).map(|(_, v)| v)?;
    Some(match value {
        AttrValue::Static(_) | AttrValue::Int(_) | AttrValue::Bool(_) => value.clone(),
        AttrValue::Text { .. } => panic!("{key}: unresolved text; use `resolved`"),
        text => AttrValue::String(text.to_text(&SharedStr::from(""))?.into_owned()),
    })
}

/// `attrs` with their request-text ranges turned into the strings they are in `text`.
fn resolved(mut attrs: Attributes, text: &RequestText) -> Attributes {
    let name = text.name();
    for (_, value) in &mut attrs {
        if let AttrValue::Text { .. } = value {
            let resolved = value.to_text(&name).map(|t| t.into_owned());
            *value = AttrValue::String(resolved.unwrap_or_default());
        }
    }
    attrs
}

/// Calls `attributes` with what the layers compute from a request before its attributes.
fn with_request_text<R>(
    req: &Parts,
    conn: Option<&ConnMeta>,
    grpc: bool,
    attributes: impl FnOnce(&RequestHeaders, Option<Addressed>, &RequestText) -> R,
) -> R {
    let headers = headers_of(&req.headers);
    let authority = target_authority(req, None);
    let target = authority.as_ref().map(Addressed::target);
    let orig_dst = conn.and_then(|c| c.orig_dst);
    let text = RequestText::new(
        SpanNaming::Template,
        req,
        &headers,
        target,
        orig_dst,
        grpc,
        None,
    );
    attributes(&headers, authority, &text)
}

/// SERVER attributes as the layer computes them.
fn server_of(req: &Parts, conn: Option<&ConnMeta>, grpc: bool) -> Attributes {
    with_request_text(req, conn, grpc, |headers, authority, text| {
        let target = authority.as_ref().map(Addressed::target);
        resolved(server(req, headers, conn, grpc, target, text), text)
    })
}

/// CLIENT attributes as the layer computes them, for a request the SERVER layer saw the
/// same way.
fn client_of(req: &Parts, conn: Option<&ConnMeta>, grpc: bool) -> Attributes {
    with_request_text(req, conn, grpc, |headers, authority, text| {
        let known = authority.and_then(Addressed::into_parsed);
        resolved(client(req, headers, conn, grpc, known.as_ref(), text), text)
    })
}

fn s(v: &str) -> AttrValue {
    AttrValue::String(v.into())
}

fn secret_request() -> Parts {
    Request::builder()
        .method("POST")
        .uri("http://alice:hunter2@svc.ns:8080/orders/7?token=s3cr3t")
        .header("authorization", "Bearer s3cr3t")
        .header("proxy-authorization", "Basic s3cr3t")
        .header("cookie", "session=s3cr3t")
        .header("user-agent", "curl/8")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

fn assert_no_secrets(attrs: &Attributes) {
    let dump = format!("{attrs:?}");
    for secret in [
        "s3cr3t", "hunter2", "alice", "token", "frag", "Bearer", "session",
    ] {
        assert!(!dump.contains(secret), "{secret} leaked: {dump}");
    }
}

#[test]
fn server_attributes() {
    let conn = conn();
    let req = parts("/orders/7?x=1", Some("svc.ns:8080"));
    let attrs = server_of(&req, Some(&conn), false);
    assert_eq!(get(&attrs, DIRECTION), Some(AttrValue::Static("inbound")));
    assert_eq!(
        get(&attrs, HTTP_REQUEST_METHOD),
        Some(AttrValue::Static("GET"))
    );
    assert_eq!(get(&attrs, URL_PATH), Some(s("/orders/7")));
    assert_eq!(get(&attrs, URL_SCHEME), Some(AttrValue::Static("http")));
    assert_eq!(get(&attrs, SERVER_ADDRESS), Some(s("svc.ns")));
    assert_eq!(get(&attrs, SERVER_PORT), Some(AttrValue::Int(8080)));
    assert_eq!(get(&attrs, CLIENT_ADDRESS), Some(s("10.0.0.7")));
    assert_eq!(get(&attrs, NETWORK_PEER_ADDRESS), Some(s("10.0.0.7")));
    assert_eq!(get(&attrs, NETWORK_PEER_PORT), Some(AttrValue::Int(51000)));
    assert_eq!(
        get(&attrs, NETWORK_PROTOCOL_VERSION),
        Some(AttrValue::Static("1.1"))
    );
    assert_eq!(get(&attrs, USER_AGENT_ORIGINAL), Some(s("curl/8")));
    assert_eq!(get(&attrs, RPC_SYSTEM), None);
}

#[test]
fn server_target_falls_back_to_original_destination() {
    let conn = conn();
    let req = Request::builder().uri("/").body(()).unwrap().into_parts().0;
    let attrs = server_of(&req, Some(&conn), false);
    assert_eq!(get(&attrs, SERVER_ADDRESS), Some(s("10.0.0.9")));
    assert_eq!(get(&attrs, SERVER_PORT), Some(AttrValue::Int(8080)));
}

#[test]
fn client_attributes_and_url_full() {
    let conn = conn();
    let req = Request::builder()
        .uri("/a/b?q=1")
        .header("host", "[::1]:9000")
        .version(Version::HTTP_2)
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let attrs = client_of(&req, Some(&conn), false);
    assert_eq!(get(&attrs, URL_FULL), Some(s("http://[::1]:9000/a/b")));
    assert_eq!(get(&attrs, SERVER_ADDRESS), Some(s("::1")));
    assert_eq!(
        get(&attrs, NETWORK_PROTOCOL_VERSION),
        Some(AttrValue::Static("2"))
    );
    assert_eq!(get(&attrs, CLIENT_ADDRESS), None);

    let req = Request::builder()
        .uri("/x")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let attrs = client_of(&req, Some(&conn), false);
    assert_eq!(get(&attrs, URL_FULL), Some(s("http://10.0.0.9:8080/x")));
    let attrs = client_of(&req, None, false);
    assert_eq!(get(&attrs, URL_FULL), None);
    assert_eq!(get(&attrs, DIRECTION), None);
}

/// CLIENT attributes of `req` from a request text made for `seen`, the request as the
/// SERVER layer saw it.
fn client_after(seen: &Parts, req: &Parts, conn: Option<&ConnMeta>) -> Attributes {
    with_request_text(seen, conn, false, |_, authority, text| {
        let known = authority.and_then(Addressed::into_parsed);
        let headers = headers_of(&req.headers);
        resolved(
            client(req, &headers, conn, false, known.as_ref(), text),
            text,
        )
    })
}

fn parts(uri: &str, host: Option<&str>) -> Parts {
    let mut builder = Request::builder().uri(uri).header("user-agent", "curl/8");
    if let Some(host) = host {
        builder = builder.header("host", host);
    }
    builder.body(()).unwrap().into_parts().0
}

/// The CLIENT layer reuses what the SERVER layer read from the authority when the request
/// is forwarded as it arrived, and reads it again when it is not: both give the same
/// attributes as reading the forwarded request afresh.
#[test]
fn client_target_is_reused_only_for_an_unchanged_request() {
    let conn = conn();
    let requests = [
        parts("/a/b?q=1", Some("svc.ns:9000")),
        parts("/a", Some("svc.ns")),
        parts("/a", Some("[::1]:9000")),
        parts("/a", Some("Svc_Name:80")),
        parts("/a", None),
        parts("http://abs.example:81/p", Some("ignored:1")),
        parts("https://abs.example/p", None),
    ];
    let elsewhere = parts("/other", Some("elsewhere:1234"));
    for req in &requests {
        for conn in [Some(conn.as_ref()), None] {
            let reused = client_after(req, req, conn);
            let fresh = client_after(&elsewhere, req, conn);
            assert_eq!(reused, fresh, "{:?} {:?}", req.uri, req.headers);
            // And the other way round: a request readdressed after the SERVER layer
            // saw it is described as forwarded.
            let readdressed = client_after(req, &elsewhere, conn);
            assert_eq!(
                get(&readdressed, SERVER_ADDRESS),
                Some(s("elsewhere")),
                "{:?}",
                req.uri
            );
            assert_eq!(get(&readdressed, SERVER_PORT), Some(AttrValue::Int(1234)));
            if conn.is_some() || req.headers.contains_key("host") {
                assert!(get(&reused, URL_FULL).is_some(), "{:?}", req.uri);
            }
        }
    }
    let path_changed = client_after(&requests[0], &parts("/c", Some("svc.ns:9000")), None);
    assert_eq!(
        get(&path_changed, URL_FULL),
        Some(s("http://svc.ns:9000/c"))
    );
}

#[test]
fn never_records_credentials_query_or_userinfo() {
    let conn = conn();
    let req = secret_request();
    let server_attrs = server_of(&req, Some(&conn), false);
    let client_attrs = client_of(&req, Some(&conn), false);
    assert_no_secrets(&server_attrs);
    assert_no_secrets(&client_attrs);
    assert_eq!(
        get(&client_attrs, URL_FULL),
        Some(s("http://svc.ns:8080/orders/7"))
    );
    assert_eq!(get(&server_attrs, SERVER_ADDRESS), Some(s("svc.ns")));
}

#[test]
fn grpc_attributes() {
    let req = Request::builder()
        .method("POST")
        .uri("/helloworld.Greeter/SayHello")
        .header("content-type", "application/grpc+proto")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    assert!(is_grpc(&req.headers));
    let attrs = client_of(&req, None, true);
    assert_eq!(get(&attrs, RPC_SYSTEM), Some(AttrValue::Static("grpc")));
    assert_eq!(get(&attrs, RPC_SERVICE), Some(s("helloworld.Greeter")));
    assert_eq!(get(&attrs, RPC_METHOD), Some(s("SayHello")));
    assert_eq!(grpc_method("/onlyservice"), None);
    assert_eq!(grpc_method("/a/b/c"), None);
    assert_eq!(grpc_method("//m"), None);
}

#[test]
fn spans_share_one_text_per_request() {
    let conn = conn();
    let req = parts("/orders/7", Some("svc.ns:8080"));
    let headers = headers_of(&req.headers);
    let authority = target_authority(&req, None);
    assert!(matches!(authority, Some(Addressed::Plain("svc.ns:8080"))));
    let target = authority.as_ref().map(Addressed::target);
    let text = RequestText::new(
        SpanNaming::Template,
        &req,
        &headers,
        target,
        conn.orig_dst,
        false,
        Some("k=v"),
    );
    assert_eq!(text.trace_state().as_deref(), Some("k=v"));
    assert_eq!(text.name(), "GET /orders/{id}");
    assert_eq!(text.path(), "/orders/7");
    assert_eq!(text.host().unwrap(), "svc.ns");
    assert_eq!(text.user_agent().unwrap(), "curl/8");
    // The CLIENT layer reuses the request's strings.
    let known = authority.and_then(Addressed::into_parsed);
    assert!(known.is_none(), "a plain Host header is not parsed");
    // Any other Host header is parsed once, by the SERVER layer, and reused.
    let mut bracketed = req.clone();
    bracketed
        .headers
        .insert(HOST, "[::1]:8080".parse().unwrap());
    let parsed = target_authority(&bracketed, None).and_then(Addressed::into_parsed);
    assert_eq!(parsed.as_ref().map(Authority::as_str), Some("[::1]:8080"));
    assert!(matches!(
        target_authority(&bracketed, parsed.as_ref()),
        Some(Addressed::Borrowed(known)) if std::ptr::eq(known, parsed.as_ref().unwrap())
    ));
    let attrs = client(&req, &headers, Some(&conn), false, known.as_ref(), &text);
    assert_eq!(text.url_full().unwrap(), "http://svc.ns:8080/orders/7");
    for key in [SERVER_ADDRESS, USER_AGENT_ORIGINAL, URL_FULL] {
        let value = attrs.iter().find(|(k, _)| *k == key).map(|(_, v)| v);
        assert!(
            matches!(value, Some(AttrValue::Text { .. })),
            "{key}: {value:?}"
        );
    }
    let attrs = resolved(attrs, &text);
    assert_eq!(get(&attrs, SERVER_ADDRESS), Some(s("svc.ns")));
    assert_eq!(get(&attrs, USER_AGENT_ORIGINAL), Some(s("curl/8")));
    assert_eq!(
        get(&attrs, URL_FULL),
        Some(s("http://svc.ns:8080/orders/7"))
    );

    // A request changed between the layers is recorded as forwarded.
    let mut forwarded = req.clone();
    forwarded
        .headers
        .insert(HOST, "other.ns:9090".parse().unwrap());
    forwarded
        .headers
        .insert(USER_AGENT, "proxy/2".parse().unwrap());
    let headers = headers_of(&forwarded.headers);
    let attrs = resolved(
        client(
            &forwarded,
            &headers,
            Some(&conn),
            false,
            known.as_ref(),
            &text,
        ),
        &text,
    );
    assert_eq!(get(&attrs, SERVER_ADDRESS), Some(s("other.ns")));
    assert_eq!(get(&attrs, SERVER_PORT), Some(AttrValue::Int(9090)));
    assert_eq!(get(&attrs, USER_AGENT_ORIGINAL), Some(s("proxy/2")));
    assert_eq!(
        get(&attrs, URL_FULL),
        Some(s("http://other.ns:9090/orders/7"))
    );
}

#[test]
fn targets_split_like_the_http_crate() {
    for text in [
        "svc.ns",
        "svc.ns:8080",
        "[::1]:9000",
        "[::1]",
        "user:pw@svc:81",
        "svc:0",
        "svc:65535",
        "svc:99999",
        "svc:",
        "svc:08080",
        "10.0.0.1:443",
        "-.a-b.",
        "a..b:1",
        "Svc.NS:80",
        "svc.ns:80:81",
        "svc ns",
        "svc%41",
        "",
    ] {
        // A plain Host header is read in place exactly as the http crate would split it.
        let plain = plain_host(text.as_bytes());
        let Ok(authority) = Authority::try_from(text) else {
            assert_eq!(plain, None, "{text} is not an authority");
            continue;
        };
        if let Some(plain) = plain {
            assert_eq!(plain, text);
            let target = Target::of_plain(plain);
            assert_eq!(target.host, authority.host(), "{text}");
            assert_eq!(
                target.port.map(|(s, n)| (s.to_owned(), n)),
                authority
                    .port()
                    .map(|p| (p.as_str().to_owned(), p.as_u16())),
                "{text}"
            );
        }
        let target = Target::of(&authority);
        assert_eq!(target.host, authority.host(), "{text}");
        assert_eq!(
            target.port,
            authority
                .port()
                .map(|p| (p.as_str().to_owned(), p.as_u16()))
                .as_ref()
                .map(|(s, n)| (s.as_str(), *n)),
            "{text}"
        );
    }
}

#[test]
fn addresses_are_typed_until_exported() {
    let conn = conn();
    let req = Request::builder().uri("/").body(()).unwrap().into_parts().0;
    let attrs = server_of(&req, Some(&conn), false);
    let client_address = attrs
        .iter()
        .find(|(k, _)| *k == CLIENT_ADDRESS)
        .map(|(_, v)| v);
    assert_eq!(
        client_address,
        Some(&AttrValue::Ip("10.0.0.7".parse().unwrap()))
    );
}

#[test]
fn unknown_methods_are_bounded() {
    let req = Request::builder()
        .method("PURGE")
        .uri("/")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let attrs = server_of(&req, None, false);
    assert_eq!(
        get(&attrs, HTTP_REQUEST_METHOD),
        Some(AttrValue::Static("_OTHER"))
    );
    assert_eq!(get(&attrs, HTTP_REQUEST_METHOD_ORIGINAL), Some(s("PURGE")));
}

#[test]
fn grpc_timeout_reads_the_spec_units() {
    use std::time::Duration;
    let timeout = |value: &str| {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().unwrap());
        grpc_timeout(true, &headers)
    };
    assert_eq!(timeout("2H"), Some(Duration::from_secs(7200)));
    assert_eq!(timeout("3M"), Some(Duration::from_secs(180)));
    assert_eq!(timeout("10S"), Some(Duration::from_secs(10)));
    assert_eq!(timeout("250m"), Some(Duration::from_millis(250)));
    assert_eq!(
        timeout("99999999u"),
        Some(Duration::from_micros(99_999_999))
    );
    assert_eq!(timeout("7n"), Some(Duration::from_nanos(7)));
    // At most 8 digits, a known unit, nothing else.
    for bad in [
        "123456789S",
        "S",
        "10",
        "10s",
        "1.5S",
        " 10S",
        "-1S",
        "10 S",
    ] {
        assert_eq!(timeout(bad), None, "{bad:?}");
    }
    let mut headers = HeaderMap::new();
    headers.insert("grpc-timeout", "1S".parse().unwrap());
    assert_eq!(grpc_timeout(false, &headers), None, "not a gRPC request");
}

/// The `rpc.grpc.status_code` of a gRPC span that ended as `end`, `elapsed` after it started.
fn grpc_status_after(
    timeout: Option<std::time::Duration>,
    trailers: Option<&str>,
    end: super::super::record::End,
    elapsed: std::time::Duration,
) -> Option<AttrValue> {
    let mut response = ResponseAttributes::new(true, timeout, None);
    if let Some(status) = trailers {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", status.parse().unwrap());
        response.on_trailers(&headers);
    }
    let mut attrs = Attributes::new();
    response.finish(SpanKind::Server, end, elapsed, 0, &mut attrs);
    get(&attrs, "rpc.grpc.status_code")
}

#[test]
fn grpc_status_is_the_one_the_call_ended_with() {
    use super::super::record::End;
    use std::time::Duration;
    let second = Some(Duration::from_secs(1));
    let early = Duration::from_millis(100);
    let late = Duration::from_millis(1000);
    // grpc-status from trailers or a trailers-only response wins.
    assert_eq!(
        grpc_status_after(second, Some("5"), End::Cancelled, late),
        Some(AttrValue::Int(5))
    );
    assert_eq!(
        grpc_status_after(None, Some("0"), End::Complete, early),
        Some(AttrValue::Int(0))
    );
    // Cancelled before the deadline, or without one: CANCELLED.
    assert_eq!(
        grpc_status_after(None, None, End::Cancelled, late),
        Some(AttrValue::Int(1))
    );
    assert_eq!(
        grpc_status_after(None, None, End::ResetCancel, late),
        Some(AttrValue::Int(1))
    );
    assert_eq!(
        grpc_status_after(second, None, End::Cancelled, early),
        Some(AttrValue::Int(1))
    );
    // The grpc-timeout elapsed: DEADLINE_EXCEEDED, however the call ended.
    for end in [End::Cancelled, End::BodyError, End::Failed("timeout")] {
        assert_eq!(
            grpc_status_after(second, None, end, late),
            Some(AttrValue::Int(4))
        );
    }
    // A body error or a failure before the deadline says nothing about the gRPC status.
    assert_eq!(grpc_status_after(second, None, End::BodyError, early), None);
    assert_eq!(
        grpc_status_after(None, None, End::Failed("connect"), late),
        None
    );
    // Not gRPC: no gRPC status.
    let mut attrs = Attributes::new();
    ResponseAttributes::new(false, None, None).finish(
        SpanKind::Server,
        End::Cancelled,
        late,
        0,
        &mut attrs,
    );
    assert_eq!(get(&attrs, "rpc.grpc.status_code"), None);
}
