//! Unit tests, one rule each, written from RFC 9112 / RFC 9110 (section in each name).

use super::chunked::{ChunkedDecoder, Decoded, EXTENSION_BUDGET, MAX_CHUNK_LINE};
use super::error::{ChunkError, HeadError};
use super::framing::{request_body, response_body, BodyFraming};
use super::head::{parse_request, parse_response, FieldKind, Limits, Method, Version};
use super::target::TargetForm;
use super::RequestHead;
use crate::meta::ErrorType;

fn request(head: &str) -> Result<Option<RequestHead>, HeadError> {
    parse_request(head.as_bytes(), &Limits::default(), &mut Vec::new())
}

fn accepted(head: &str) -> RequestHead {
    match request(head) {
        Ok(Some(parsed)) => parsed,
        other => panic!("{head:?} should be accepted, got {other:?}"),
    }
}

fn refused(head: &str, expected: HeadError) {
    assert_eq!(request(head), Err(expected), "{head:?}");
}

fn response(head: &str) -> Result<Option<super::ResponseHead>, HeadError> {
    parse_response(head.as_bytes(), &Limits::default(), &mut Vec::new())
}

// ---- message heads -------------------------------------------------------------------------

#[test]
fn rfc9112_3_origin_form_request_keeps_fields_in_order_case_and_repeats() {
    let raw = b"GET /where?q=now HTTP/1.1\r\nHost: www.example.org\r\nX-Multi: A\r\nx-MULTI: B\r\nX-Multi: A\r\n\r\nrest";
    let mut fields = Vec::new();
    let head = parse_request(raw, &Limits::default(), &mut fields)
        .unwrap()
        .unwrap();
    assert_eq!(
        head.end,
        raw.len() - 4,
        "the head ends after the blank line"
    );
    assert_eq!(head.target.get(raw), b"/where?q=now");
    assert_eq!(head.method_span.get(raw), b"GET");
    assert_eq!(head.target_form, TargetForm::Origin);
    assert_eq!(head.version, Version::Http11);
    let seen: Vec<(&[u8], &[u8])> = fields
        .iter()
        .map(|f| (f.name.get(raw), f.value.get(raw)))
        .collect();
    assert_eq!(
        seen,
        [
            (&b"Host"[..], &b"www.example.org"[..]),
            (b"X-Multi", b"A"),
            (b"x-MULTI", b"B"),
            (b"X-Multi", b"A")
        ]
    );
    assert_eq!(fields[0].kind, FieldKind::Host);
    assert_eq!(head.authority.unwrap().get(raw), b"www.example.org");
}

#[test]
fn rfc9112_2_2_partial_heads_ask_for_more() {
    let full = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    for cut in 0..full.len() {
        assert_eq!(request(&full[..cut]), Ok(None), "cut at {cut}");
    }
    accepted(full);
}

#[test]
fn rfc9112_2_2_empty_lines_before_the_request_line_are_skipped() {
    let head = accepted("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(head.start, 4);
    // They count towards the head limit: endless empty lines do not grow a buffer forever.
    let limits = Limits {
        max_head_bytes: 64,
        max_fields: 10,
    };
    let empty_lines = "\r\n".repeat(32);
    let parsed = parse_request(empty_lines.as_bytes(), &limits, &mut Vec::new());
    assert_eq!(parsed, Err(HeadError::HeadTooLarge));
}

#[test]
fn rfc9112_2_2_bare_lf_line_endings_are_refused() {
    refused("GET / HTTP/1.1\nHost: a\n\n", HeadError::LineEnding);
    refused("GET / HTTP/1.1\r\nHost: a\n\r\n", HeadError::LineEnding);
    refused("GET / HTTP/1.1\r\nHost: a\r\n\n", HeadError::LineEnding);
}

#[test]
fn rfc9112_2_2_bare_cr_is_refused() {
    assert!(request("GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n").is_err());
    assert!(request("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\r\n\r\n").is_err());
}

#[test]
fn rfc9110_5_5_nul_in_a_field_value_is_refused() {
    assert!(request("GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n").is_err());
}

#[test]
fn rfc9112_5_1_whitespace_between_field_name_and_colon_is_refused() {
    refused(
        "GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n",
        HeadError::FieldSyntax,
    );
    assert_eq!(
        response("HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\n"),
        Err(HeadError::FieldSyntax)
    );
}

#[test]
fn rfc9112_5_2_obs_fold_is_refused_in_requests_and_responses() {
    refused(
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
        HeadError::FieldSyntax,
    );
    assert_eq!(
        response("HTTP/1.1 200 OK\r\nX: a\r\n\tb\r\nContent-Length: 0\r\n\r\n"),
        Err(HeadError::FieldSyntax)
    );
}

#[test]
fn rfc9112_2_3_only_http_1_0_and_1_1() {
    refused("GET / HTTP/1.2\r\nHost: a\r\n\r\n", HeadError::Version);
    refused("GET / HTTP/2.0\r\nHost: a\r\n\r\n", HeadError::Version);
    assert_eq!(HeadError::Version.status(), 505);
    assert_eq!(accepted("GET / HTTP/1.0\r\n\r\n").version, Version::Http10);
}

#[test]
fn rfc9112_3_malformed_request_lines_are_refused() {
    refused("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", HeadError::StartLine);
    refused("G(T / HTTP/1.1\r\nHost: a\r\n\r\n", HeadError::StartLine);
    assert!(request("GET / x HTTP/1.1\r\nHost: a\r\n\r\n").is_err());
}

#[test]
fn head_limit_counts_head_bytes_and_answers_431() {
    let limits = Limits {
        max_head_bytes: 64,
        max_fields: 100,
    };
    let head = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "v".repeat(40));
    let parsed = parse_request(head.as_bytes(), &limits, &mut Vec::new());
    assert_eq!(parsed, Err(HeadError::HeadTooLarge));
    // An unfinished head is refused as soon as it reaches the limit, without waiting for its end.
    let unfinished = format!("GET / HTTP/1.1\r\nX: {}", "v".repeat(64));
    let parsed = parse_request(unfinished.as_bytes(), &limits, &mut Vec::new());
    assert_eq!(parsed, Err(HeadError::HeadTooLarge));
    assert_eq!(HeadError::HeadTooLarge.status(), 431);
    assert_eq!(
        HeadError::HeadTooLarge.error_type(),
        "request_head_too_large"
    );
    let exact = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let fits = Limits {
        max_head_bytes: exact.len(),
        max_fields: 100,
    };
    assert!(parse_request(exact.as_bytes(), &fits, &mut Vec::new())
        .unwrap()
        .is_some());
}

#[test]
fn a_hundred_tracestate_lines_fit_the_default_field_limit() {
    let mut head = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..100 {
        head.push_str(&format!("tracestate: k{i}=v\r\n"));
    }
    head.push_str("\r\n");
    let mut fields = Vec::new();
    parse_request(head.as_bytes(), &Limits::default(), &mut fields)
        .unwrap()
        .unwrap();
    assert_eq!(
        fields.iter().filter(|f| f.kind == FieldKind::Trace).count(),
        100
    );
}

#[test]
fn field_count_limit_answers_431() {
    let limits = Limits {
        max_head_bytes: 64 * 1024,
        max_fields: 3,
    };
    let head = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    let parsed = parse_request(head.as_bytes(), &limits, &mut Vec::new());
    assert_eq!(parsed, Err(HeadError::TooManyFields));
    assert_eq!(HeadError::TooManyFields.status(), 431);
}

// ---- request-target and Host --------------------------------------------------------------

#[test]
fn rfc9112_3_2_1_origin_form() {
    assert_eq!(
        accepted("GET /a/b?c HTTP/1.1\r\nHost: a\r\n\r\n").target_form,
        TargetForm::Origin
    );
}

#[test]
fn rfc9112_3_2_2_absolute_form_routes_by_the_target_authority() {
    let raw = "GET http://www.example.org/pub/WWW/TheProject.html HTTP/1.1\r\nHost: www.example.org\r\n\r\n";
    let head = accepted(raw);
    assert_eq!(head.target_form, TargetForm::Absolute);
    assert_eq!(
        head.authority.unwrap().get(raw.as_bytes()),
        b"www.example.org"
    );
}

#[test]
fn rfc9112_3_2_absolute_form_host_must_match_the_authority() {
    refused(
        "GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n",
        HeadError::HostMismatch,
    );
    refused(
        "GET http://a.example:8080/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
        HeadError::HostMismatch,
    );
    // Same origin: case-insensitive host, the scheme's default port for an absent one.
    accepted("GET http://A.example/ HTTP/1.1\r\nHost: a.EXAMPLE:80\r\n\r\n");
    accepted("GET https://a.example:443/x HTTP/1.1\r\nHost: a.example\r\n\r\n");
}

#[test]
fn rfc9110_4_2_4_userinfo_in_the_target_is_refused() {
    refused(
        "GET http://user:pw@a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
        HeadError::Userinfo,
    );
    refused(
        "CONNECT user@a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n",
        HeadError::Userinfo,
    );
}

#[test]
fn rfc9112_3_2_3_authority_form_only_for_connect_with_a_port() {
    let head =
        accepted("CONNECT server.example.com:80 HTTP/1.1\r\nHost: server.example.com:80\r\n\r\n");
    assert_eq!(head.target_form, TargetForm::Authority);
    refused(
        "CONNECT server.example.com HTTP/1.1\r\nHost: server.example.com\r\n\r\n",
        HeadError::Target,
    );
    refused(
        "CONNECT /path HTTP/1.1\r\nHost: a\r\n\r\n",
        HeadError::Target,
    );
    refused(
        "GET server.example.com:80 HTTP/1.1\r\nHost: a\r\n\r\n",
        HeadError::Target,
    );
}

#[test]
fn rfc9112_3_2_4_asterisk_form_only_for_options() {
    assert_eq!(
        accepted("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").target_form,
        TargetForm::Asterisk
    );
    refused("GET * HTTP/1.1\r\nHost: a\r\n\r\n", HeadError::Target);
}

#[test]
fn rfc9112_3_2_a_fragment_or_another_scheme_is_not_a_request_target() {
    refused("GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", HeadError::Target);
    refused(
        "GET ftp://a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
        HeadError::Target,
    );
    refused(
        "GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n",
        HeadError::Target,
    );
}

#[test]
fn rfc9112_3_2_http11_needs_exactly_one_host() {
    refused("GET / HTTP/1.1\r\n\r\n", HeadError::HostMissing);
    refused(
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        HeadError::HostRepeated,
    );
    refused(
        "GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n",
        HeadError::HostRepeated,
    );
    assert_eq!(HeadError::HostMissing.status(), 400);
}

#[test]
fn rfc9112_3_2_an_invalid_host_value_is_refused() {
    refused(
        "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        HeadError::HostInvalid,
    );
    refused(
        "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
        HeadError::HostInvalid,
    );
    refused(
        "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
        HeadError::HostInvalid,
    );
    refused(
        "GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n",
        HeadError::HostInvalid,
    );
    accepted("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n");
    // RFC 9112 §3.2: with no authority to send, the Host value is empty.
    accepted("GET / HTTP/1.1\r\nHost:\r\n\r\n");
}

// ---- Content-Length and Transfer-Encoding -------------------------------------------------

#[test]
fn rfc9112_6_3_content_length_and_transfer_encoding_together_are_refused() {
    refused(
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n",
        HeadError::ContentLengthWithTransferEncoding,
    );
    refused(
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n",
        HeadError::ContentLengthWithTransferEncoding,
    );
    assert_eq!(
        response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
        Err(HeadError::ContentLengthWithTransferEncoding)
    );
}

#[test]
fn rfc9110_8_6_content_length_lists_and_repeats_are_refused_even_when_equal() {
    refused(
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
        HeadError::ContentLengthRepeated,
    );
    refused(
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
        HeadError::ContentLengthRepeated,
    );
    refused(
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        HeadError::ContentLengthRepeated,
    );
}

#[test]
fn rfc9110_8_6_content_length_is_1_digit_or_more_and_nothing_else() {
    for bad in ["+5", "-5", "5 5", "0x5", "", "5a", "18446744073709551616"] {
        let head = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {bad}\r\n\r\n");
        refused(&head, HeadError::ContentLengthInvalid);
    }
    let head = accepted("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:  007 \r\n\r\n");
    assert_eq!(head.body.content_length, Some(7));
    let max =
        accepted("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\n");
    assert_eq!(request_body(&max), BodyFraming::Length(u64::MAX));
}

#[test]
fn rfc9112_6_3_item_4_transfer_encoding_must_end_in_chunked() {
    for bad in [
        "xchunked",
        "chunked, identity",
        "identity",
        "chunked;x=1",
        "chunked,",
        ",",
        "chunked , chunked",
        "gzip",
    ] {
        let head = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {bad}\r\n\r\n");
        refused(&head, HeadError::TransferEncodingInvalid);
    }
    // All Transfer-Encoding lines form one list (RFC 9110 §5.3).
    refused(
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
        HeadError::TransferEncodingInvalid,
    );
    let head = accepted("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: CHUNKED\r\n\r\n");
    assert_eq!(request_body(&head), BodyFraming::Chunked);
}

#[test]
fn rfc9110_5_1_framing_fields_spelled_with_underscores_are_refused() {
    refused(
        "POST / HTTP/1.1\r\nHost: a\r\nContent_Length: 5\r\n\r\n",
        HeadError::FramingFieldAlias,
    );
    refused(
        "POST / HTTP/1.1\r\nHost: a\r\nTRANSFER_encoding: chunked\r\n\r\n",
        HeadError::FramingFieldAlias,
    );
    assert_eq!(
        response("HTTP/1.1 200 OK\r\nContent_Length: 0\r\n\r\n"),
        Err(HeadError::FramingFieldAlias)
    );
    accepted("GET / HTTP/1.1\r\nHost: a\r\nX_Other_Field: 1\r\n\r\n");
}

#[test]
fn rfc9112_6_1_an_unknown_transfer_coding_is_501() {
    refused(
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: br, chunked\r\n\r\n",
        HeadError::TransferCodingUnknown,
    );
    assert_eq!(HeadError::TransferCodingUnknown.status(), 501);
}

#[test]
fn rfc9112_6_1_transfer_encoding_in_http_1_0_is_faulty_framing() {
    refused(
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        HeadError::TransferEncodingHttp10,
    );
    assert_eq!(
        response("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Err(HeadError::TransferEncodingHttp10)
    );
}

#[test]
fn rfc9112_6_1_a_response_transfer_encoding_not_ending_in_chunked_is_refused() {
    assert_eq!(
        response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
        Err(HeadError::TransferEncodingInvalid)
    );
}

// ---- keep-alive, upgrade, expect -----------------------------------------------------------

#[test]
fn rfc9112_9_3_persistence_by_version_and_connection() {
    assert!(
        accepted("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .connection
            .keep_alive
    );
    assert!(
        !accepted("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .connection
            .keep_alive
    );
    assert!(
        !accepted("GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, CLOSE\r\n\r\n")
            .connection
            .keep_alive
    );
    assert!(!accepted("GET / HTTP/1.0\r\n\r\n").connection.keep_alive);
    assert!(
        accepted("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .connection
            .keep_alive
    );
    let res = response("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(!res.connection.keep_alive);
}

#[test]
fn rfc9110_7_8_upgrade_needs_connection_upgrade_and_http_1_1() {
    let ws = "GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    assert!(accepted(ws).connection.upgrade);
    assert!(
        !accepted("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n")
            .connection
            .upgrade
    );
    assert!(
        !accepted("GET / HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
            .connection
            .upgrade
    );
}

#[test]
fn rfc9110_10_1_1_expect_100_continue() {
    assert!(
        accepted("PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n")
            .expect_continue
    );
    assert!(!accepted("PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n").expect_continue);
}

// ---- body framing (RFC 9112 §6.3) ----------------------------------------------------------

fn response_framing(method: Method, head: &str) -> BodyFraming {
    response_body(method, &response(head).unwrap().unwrap())
}

#[test]
fn rfc9112_6_3_item_1_no_body_for_head_1xx_204_304() {
    let cl = "Content-Length: 10\r\n\r\n";
    assert_eq!(
        response_framing(Method::Head, &format!("HTTP/1.1 200 OK\r\n{cl}")),
        BodyFraming::None
    );
    for status in [
        "100 Continue",
        "103 Early Hints",
        "204 No Content",
        "304 Not Modified",
    ] {
        let head = format!("HTTP/1.1 {status}\r\n{cl}");
        assert_eq!(
            response_framing(Method::Other, &head),
            BodyFraming::None,
            "{status}"
        );
    }
}

#[test]
fn rfc9112_6_3_item_2_a_2xx_to_connect_has_no_body() {
    assert_eq!(
        response_framing(Method::Connect, "HTTP/1.1 200 OK\r\n\r\n"),
        BodyFraming::None
    );
    assert_eq!(
        response_framing(
            Method::Connect,
            "HTTP/1.1 407 Proxy Auth\r\nContent-Length: 2\r\n\r\n"
        ),
        BodyFraming::Length(2)
    );
}

#[test]
fn rfc9112_6_3_items_4_and_5_chunked_then_content_length() {
    assert_eq!(
        response_framing(
            Method::Other,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        ),
        BodyFraming::Chunked
    );
    assert_eq!(
        response_framing(
            Method::Other,
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        ),
        BodyFraming::None
    );
    let post = accepted("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n");
    assert_eq!(request_body(&post), BodyFraming::Length(3));
}

#[test]
fn rfc9112_6_3_items_6_and_7_request_without_length_is_empty_response_is_close_delimited() {
    assert_eq!(
        request_body(&accepted("POST / HTTP/1.1\r\nHost: a\r\n\r\n")),
        BodyFraming::None
    );
    assert_eq!(
        response_framing(Method::Other, "HTTP/1.1 200 OK\r\n\r\n"),
        BodyFraming::CloseDelimited
    );
}

// ---- chunked bodies (RFC 9112 §7.1) --------------------------------------------------------

fn chunked(body: &[u8]) -> Result<(usize, bool), ChunkError> {
    ChunkedDecoder::new(1024).feed(body)
}

/// Every split of `body` into two reads gives the same verdict as one read.
fn chunked_split_anywhere(body: &[u8]) -> Result<(usize, bool), ChunkError> {
    let whole = chunked(body);
    for cut in 0..=body.len() {
        let mut decoder = ChunkedDecoder::new(1024);
        let split = decoder.feed(&body[..cut]).and_then(|(first, done)| {
            if done {
                return Ok((first, true));
            }
            decoder
                .feed(&body[cut..])
                .map(|(second, done)| (first + second, done))
        });
        assert_eq!(split, whole, "split at {cut}");
    }
    whole
}

#[test]
fn rfc9112_7_1_chunks_pass_through_and_end_at_the_last_chunk() {
    let body =
        b"4\r\nWiki\r\n5;name=val;quoted=\"a\\\"b\"\r\npedia\r\n0\r\nExpires: never\r\n\r\nNEXT";
    assert_eq!(chunked_split_anywhere(body), Ok((body.len() - 4, true)));
    let mut decoder = ChunkedDecoder::new(1024);
    let mut data = Vec::new();
    let mut at = 0;
    loop {
        match decoder.step(&body[at..]).unwrap() {
            Decoded::Data(n) => {
                data.extend_from_slice(&body[at..at + n]);
                at += n;
            }
            Decoded::Framing(n) => at += n,
            Decoded::End(n) => break assert_eq!(at + n, body.len() - 4),
        }
    }
    assert_eq!(data, b"Wikipedia");
}

#[test]
fn rfc9112_7_1_chunk_size_is_hex_without_overflow() {
    assert_eq!(chunked(b"A\r\n0123456789\r\n0\r\n\r\n"), Ok((20, true)));
    assert_eq!(
        chunked(b"ffffffffffffffffff\r\n"),
        Err(ChunkError::SizeOverflow)
    );
    assert_eq!(chunked(b"x\r\n"), Err(ChunkError::Size));
    assert_eq!(chunked(b"\r\n"), Err(ChunkError::Size));
    assert_eq!(chunked(b"-1\r\n"), Err(ChunkError::Size));
    assert_eq!(chunked(b"0x5\r\n"), Err(ChunkError::Size));
    assert!(
        chunked(b"0000000000000000000000001\r\nx\r\n0\r\n\r\n")
            .unwrap()
            .1
    );
}

#[test]
fn rfc9112_7_1_1_extension_grammar() {
    for good in [
        &b"1;a\r\n"[..],
        b"1 ;a\r\n",
        b"1; a = b\r\n",
        b"1;a=\"q d\"\r\n",
        b"1;a;b=c\r\n",
    ] {
        assert_eq!(
            chunked(good),
            Ok((good.len(), false)),
            "{:?}",
            String::from_utf8_lossy(good)
        );
    }
    for bad in [
        &b"1;\r\n"[..],
        b"1;a=\r\n",
        b"1;=b\r\n",
        b"1;a b\r\n",
        b"1;a=\"open\r\n",
        b"1 \r\n",
        b"1;a \r\n",
        b"1;a=b c\r\n",
    ] {
        assert_eq!(
            chunked(bad),
            Err(ChunkError::Extension),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn rfc9112_7_1_lines_end_in_crlf_only() {
    assert_eq!(chunked(b"1\nx\r\n"), Err(ChunkError::LineEnding));
    assert_eq!(chunked(b"1;a\nx\r\n"), Err(ChunkError::LineEnding));
    assert_eq!(chunked(b"1\r\nx\n0\r\n\r\n"), Err(ChunkError::LineEnding));
    assert_eq!(chunked(b"1\r\nxx\r\n"), Err(ChunkError::LineEnding));
    assert_eq!(chunked(b"0\r\n\n"), Err(ChunkError::LineEnding));
    assert_eq!(chunked(b"0\r\nA: b\n\r\n"), Err(ChunkError::LineEnding));
}

#[test]
fn chunk_lines_are_bounded_and_extensions_budgeted() {
    let long = format!("1;a={}\r\n", "v".repeat(MAX_CHUNK_LINE));
    assert_eq!(chunked(long.as_bytes()), Err(ChunkError::LineTooLong));
    assert_eq!(ChunkError::LineTooLong.status(), 400);
    let line = format!("1;a={}\r\nx\r\n", "v".repeat(1000));
    let many = line.repeat(EXTENSION_BUDGET / 1000 + 1);
    assert_eq!(
        chunked(many.as_bytes()),
        Err(ChunkError::ExtensionsTooLarge)
    );
}

#[test]
fn rfc9112_7_1_2_trailers_are_kept_bounded_and_well_formed() {
    let body = b"0\r\nA: 1\r\nb-c:\r\n\r\n";
    assert_eq!(chunked_split_anywhere(body), Ok((body.len(), true)));
    assert_eq!(chunked(b"0\r\nA : 1\r\n\r\n"), Err(ChunkError::Trailer));
    assert_eq!(
        chunked(b"0\r\nA: 1\r\n folded\r\n\r\n"),
        Err(ChunkError::Trailer)
    );
    assert_eq!(chunked(b"0\r\nA: \x001\r\n\r\n"), Err(ChunkError::Trailer));
    let big = format!("0\r\nA: {}\r\n\r\n", "v".repeat(1024));
    assert_eq!(chunked(big.as_bytes()), Err(ChunkError::TrailersTooLarge));
}

#[test]
fn fuzz_bodies_hold_on_samples() {
    for sample in [
        &b"5\r\nhello\r\n0\r\n\r\n"[..],
        b"ffffffffffffffffff",
        b"1;a=\"\\\x01\"\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        super::fuzz_chunked(sample);
        super::fuzz_request_head(sample);
        super::fuzz_response_head(sample);
    }
}

#[test]
fn every_refusal_has_its_own_stable_error_type() {
    let heads = [
        HeadError::HeadTooLarge,
        HeadError::TooManyFields,
        HeadError::StartLine,
        HeadError::Version,
        HeadError::FieldSyntax,
        HeadError::LineEnding,
        HeadError::Target,
        HeadError::Userinfo,
        HeadError::HostMissing,
        HeadError::HostRepeated,
        HeadError::HostInvalid,
        HeadError::HostMismatch,
        HeadError::ContentLengthInvalid,
        HeadError::ContentLengthRepeated,
        HeadError::ContentLengthWithTransferEncoding,
        HeadError::TransferEncodingInvalid,
        HeadError::TransferEncodingHttp10,
        HeadError::TransferCodingUnknown,
        HeadError::FramingFieldAlias,
    ];
    let bodies = [
        ChunkError::Size,
        ChunkError::SizeOverflow,
        ChunkError::Extension,
        ChunkError::LineTooLong,
        ChunkError::ExtensionsTooLarge,
        ChunkError::LineEnding,
        ChunkError::Trailer,
        ChunkError::TrailersTooLarge,
    ];
    let mut names: Vec<&str> = heads.iter().map(|e| e.error_type()).collect();
    names.extend(bodies.iter().map(|e| e.error_type()));
    for name in &names {
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit()),
            "{name}"
        );
    }
    let count = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), count, "error types are distinct");
    for error in heads {
        assert!(
            [400, 431, 501, 505].contains(&error.status().as_u16()),
            "{error:?}"
        );
    }
}
