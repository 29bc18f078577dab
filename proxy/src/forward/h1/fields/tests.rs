//! Heads through parts and back: unchanged fields leave byte for byte, in order.

use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, CONTENT_LENGTH};
use http::StatusCode;
use http_body::SizeHint;

use super::*;
use crate::forward::h1::head::{parse_request, parse_response, Limits};
use crate::forward::hop_by_hop::strip_hop_by_hop;

fn request(raw: &'static [u8]) -> http::request::Parts {
    let mut fields = Vec::new();
    let head = parse_request(raw, &Limits::default(), &mut fields)
        .expect("valid head")
        .expect("complete head");
    request_parts(Bytes::from_static(raw), &head, &fields).expect("parts")
}

fn response(raw: &'static [u8]) -> http::response::Parts {
    let mut fields = Vec::new();
    let head = parse_response(raw, &Limits::default(), &mut fields)
        .expect("valid head")
        .expect("complete head");
    response_parts(Bytes::from_static(raw), &head, &fields).expect("parts")
}

fn written_request(parts: &http::request::Parts, framing: OutFraming) -> String {
    let mut out = BytesMut::new();
    write_request_head(parts, framing, &mut out);
    String::from_utf8(out.to_vec()).expect("ascii head")
}

fn written_response(parts: &http::response::Parts, framing: OutFraming) -> String {
    let mut out = BytesMut::new();
    write_response_head(parts, framing, &mut out);
    String::from_utf8(out.to_vec()).expect("ascii head")
}

#[test]
fn unchanged_request_leaves_byte_for_byte() {
    let raw = b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-Multi: a\r\nx-other:  two  spaces \r\nX-MULTI: b\r\nx-multi: A\r\n\r\n";
    let parts = request(raw);
    assert_eq!(parts.method, http::Method::GET);
    assert_eq!(parts.uri, "/a?b=c");
    let values: Vec<_> = parts.headers.get_all("x-multi").iter().collect();
    assert_eq!(values, ["a", "b", "A"]);
    assert_eq!(
        written_request(&parts, OutFraming::None),
        std::str::from_utf8(raw).expect("ascii")
    );
}

#[test]
fn response_set_cookie_order_and_case_survive() {
    let raw = b"HTTP/1.1 200 Fine Thanks\r\nSet-Cookie: a=1\r\nX-Multi: x\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n";
    let parts = response(raw);
    let framing = response_framing(&parts, &SizeHint::with_exact(0), RequestFacts::default());
    assert_eq!(framing, OutFraming::Length(0));
    assert_eq!(
        written_response(&parts, framing),
        std::str::from_utf8(raw).expect("ascii")
    );
}

#[test]
fn removed_fields_go_and_the_rest_keep_their_places() {
    let raw = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: 5\r\nAccept: */*\r\n\r\n";
    let mut parts = request(raw);
    strip_hop_by_hop(&mut parts.headers, false);
    assert_eq!(
        written_request(&parts, OutFraming::None),
        "GET / HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"
    );
}

#[test]
fn changed_field_takes_its_first_place_and_added_fields_follow() {
    let raw =
        b"GET / HTTP/1.1\r\nHost: x\r\nTraceparent: 00-old\r\nB: 1\r\ntraceparent: 00-old2\r\n\r\n";
    let mut parts = request(raw);
    parts
        .headers
        .insert("traceparent", HeaderValue::from_static("00-new"));
    parts.headers.insert("b3", HeaderValue::from_static("1-2"));
    assert_eq!(
        written_request(&parts, OutFraming::None),
        "GET / HTTP/1.1\r\nHost: x\r\nTraceparent: 00-new\r\nB: 1\r\nb3: 1-2\r\n\r\n"
    );
}

#[test]
fn chunked_body_keeps_its_transfer_encoding_line_in_place() {
    let raw = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\nX-A: 1\r\n\r\n";
    let mut parts = request(raw);
    strip_hop_by_hop(&mut parts.headers, false);
    let framing = request_framing(&parts, &SizeHint::default());
    assert_eq!(framing, OutFraming::Chunked);
    assert_eq!(
        written_request(&parts, framing),
        std::str::from_utf8(raw).expect("ascii")
    );
}

#[test]
fn changed_target_is_written_from_the_parts() {
    let raw = b"GET http://x/p?q HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut parts = request(raw);
    assert_eq!(
        written_request(&parts, OutFraming::None),
        std::str::from_utf8(raw).expect("ascii")
    );
    parts.uri = http::Uri::from_static("/p?q");
    assert_eq!(
        written_request(&parts, OutFraming::None),
        "GET /p?q HTTP/1.1\r\nHost: x\r\n\r\n"
    );
}

#[test]
fn own_response_gets_a_status_line_and_a_length() {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = StatusCode::BAD_GATEWAY;
    parts
        .headers
        .insert("meshtrace-proxy-error", HeaderValue::from_static("connect"));
    let framing = response_framing(&parts, &SizeHint::with_exact(7), RequestFacts::default());
    assert_eq!(framing, OutFraming::Length(7));
    assert_eq!(
        written_response(&parts, framing),
        "HTTP/1.1 502 Bad Gateway\r\nmeshtrace-proxy-error: connect\r\ncontent-length: 7\r\n\r\n"
    );
}

#[test]
fn response_framing_follows_rfc_9112_section_6_3() {
    let close_delimited = response(b"HTTP/1.1 200 OK\r\nX: y\r\n\r\n");
    let unknown = SizeHint::default();
    let facts = RequestFacts::default();
    assert_eq!(
        response_framing(&close_delimited, &unknown, facts),
        OutFraming::Close
    );
    let chunked = response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(
        response_framing(&chunked, &unknown, facts),
        OutFraming::Chunked
    );
    let http10 = RequestFacts {
        http10: true,
        ..facts
    };
    assert_eq!(
        response_framing(&chunked, &unknown, http10),
        OutFraming::Close
    );
    let head = RequestFacts {
        head: true,
        ..facts
    };
    let with_length = response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n");
    assert_eq!(
        response_framing(&with_length, &unknown, head),
        OutFraming::None
    );
    assert_eq!(
        written_response(&with_length, OutFraming::None),
        "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
        "a response to HEAD keeps its Content-Length"
    );
    for status in [
        b"204 No Content".as_slice(),
        b"304 Not Modified",
        b"101 Switching",
    ] {
        let mut raw = b"HTTP/1.1 ".to_vec();
        raw.extend_from_slice(status);
        raw.extend_from_slice(b"\r\n\r\n");
        let raw: &'static [u8] = Box::leak(raw.into_boxed_slice());
        assert_eq!(
            response_framing(&response(raw), &unknown, facts),
            OutFraming::None
        );
    }
    let connect = RequestFacts {
        connect: true,
        ..facts
    };
    assert_eq!(
        response_framing(&close_delimited, &unknown, connect),
        OutFraming::None
    );
}

#[test]
fn request_framing_uses_the_length_else_chunks_a_body() {
    let get = request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        request_framing(&get, &SizeHint::with_exact(0)),
        OutFraming::None
    );
    let post = request(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n");
    assert_eq!(
        request_framing(&post, &SizeHint::with_exact(3)),
        OutFraming::Length(3)
    );
    let mut streamed = request(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        request_framing(&streamed, &SizeHint::default()),
        OutFraming::Chunked
    );
    streamed
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    assert_eq!(
        request_framing(&streamed, &SizeHint::default()),
        OutFraming::None
    );
}

#[test]
fn head_without_raw_is_written_from_the_header_map() {
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.uri = http::Uri::from_static("/x");
    parts.headers.insert("host", HeaderValue::from_static("h"));
    parts.headers.append("a", HeaderValue::from_static("1"));
    assert_eq!(
        written_request(&parts, OutFraming::Chunked),
        "GET /x HTTP/1.1\r\nhost: h\r\na: 1\r\ntransfer-encoding: chunked\r\n\r\n"
    );
}

/// The general way of writing fields, for comparison with the one-pass way.
fn general(parts: &http::request::Parts, framing: OutFraming) -> String {
    let raw = parts.extensions.get::<RawHead>().expect("raw head");
    let mut out = BytesMut::new();
    let te = write_received(raw, &parts.headers, framing, &mut out);
    write_added(Some(raw), &parts.headers, &mut out);
    if framing == OutFraming::Chunked && !te {
        write_line(b"transfer-encoding", b"chunked", &mut out);
    }
    String::from_utf8(out.to_vec()).expect("ascii")
}

fn one_pass(parts: &http::request::Parts, framing: OutFraming) -> Option<String> {
    let raw = parts.extensions.get::<RawHead>().expect("raw head");
    let mut out = BytesMut::new();
    let te = write_in_order(raw, &parts.headers, framing, &mut out)?;
    if framing == OutFraming::Chunked && !te {
        write_line(b"transfer-encoding", b"chunked", &mut out);
    }
    Some(String::from_utf8(out.to_vec()).expect("ascii"))
}

#[test]
fn one_pass_writes_what_the_general_way_writes() {
    const RAW: &[u8] = b"POST / HTTP/1.1\r\nHost: x\r\nA: 1\r\nConnection: keep-alive, X-Hop\r\nB: 2\r\nX-Hop: h\r\nA: 3\r\nTraceparent: t\r\nTransfer-Encoding: chunked\r\n\r\n";
    let changes: [fn(&mut HeaderMap); 6] = [
        |_| {},
        |headers| strip_hop_by_hop(headers, false),
        |headers| {
            headers.insert("traceparent", HeaderValue::from_static("new"));
        },
        |headers| {
            headers.insert("a", HeaderValue::from_static("only"));
            headers.append("b3", HeaderValue::from_static("x"));
        },
        |headers| {
            headers.append("a", HeaderValue::from_static("4"));
            headers.remove("host");
        },
        |headers| {
            strip_hop_by_hop(headers, false);
            headers.insert("x-request-id", HeaderValue::from_static("r"));
            headers.insert("traceparent", HeaderValue::from_static("new"));
        },
    ];
    for (case, change) in changes.iter().enumerate() {
        for framing in [OutFraming::None, OutFraming::Chunked] {
            let mut parts = request(RAW);
            change(&mut parts.headers);
            let fast = one_pass(&parts, framing).unwrap_or_else(|| panic!("case {case}"));
            assert_eq!(fast, general(&parts, framing), "case {case}");
        }
    }
}

#[test]
fn moved_fields_take_the_general_way() {
    let mut parts = request(b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\n\r\n");
    let a = parts.headers.remove("a").expect("a");
    parts.headers.insert("a", a);
    assert_eq!(one_pass(&parts, OutFraming::None), None);
    assert_eq!(
        written_request(&parts, OutFraming::None),
        "GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\n\r\n",
        "a value kept leaves in its received place"
    );
}

#[test]
fn heads_with_many_fields_are_written_the_general_way() {
    let mut raw = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for n in 0..100 {
        raw.extend_from_slice(format!("X-{n}: {n}\r\nRepeated: {n}\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    let raw: &'static [u8] = Box::leak(raw.into_boxed_slice());
    let parts = request(raw);
    assert_eq!(one_pass(&parts, OutFraming::None), None);
    assert_eq!(
        written_request(&parts, OutFraming::None).as_bytes(),
        raw,
        "unchanged, byte for byte"
    );
}
