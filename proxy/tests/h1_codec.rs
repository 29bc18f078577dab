//! Differential test of the HTTP/1 codec (issue 17) against hyper's HTTP/1 server as the
//! reference: a corpus of valid and invalid request streams (RFC 9112 examples, request
//! smuggling variants, edge cases) goes to a real hyper server on loopback that echoes each
//! request's body, and through `frame_requests`. The codec must accept nothing hyper refuses,
//! and for what it accepts, cut the same message boundaries with the same body content. Each
//! case also states the codec's own verdict, so the codec's strictness is pinned as well.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use meshtrace_proxy::forward::h1::head::{parse_response, Limits, Method};
use meshtrace_proxy::forward::h1::stream::{chunked_content, frame_requests, StreamEnd};
use meshtrace_proxy::forward::h1::{response_body, BodyFraming};
use meshtrace_proxy::meta::ErrorType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The codec's verdict on a stream: how many requests it framed, and how the stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// All requests framed, nothing left over.
    Clean(usize),
    /// This many framed, then a `Connection: close` (or HTTP/1.0) request ended the stream.
    Closed(usize),
    /// This many framed, then input ended inside a message.
    Incomplete(usize),
    /// This many framed, then a refusal with this `meshtrace-proxy-error` type.
    Refused(usize, &'static str),
}

fn verdict(raw: &[u8]) -> (Vec<Vec<u8>>, Verdict) {
    let (requests, end) = frame_requests(raw, &Limits::default());
    let n = requests.len();
    let verdict = match end {
        StreamEnd::Clean => Verdict::Clean(n),
        StreamEnd::Closed => Verdict::Closed(n),
        StreamEnd::Incomplete => Verdict::Incomplete(n),
        StreamEnd::Head(error) => Verdict::Refused(n, error.error_type()),
        StreamEnd::Body(error) => Verdict::Refused(n, error.error_type()),
    };
    (requests.into_iter().map(|r| r.content).collect(), verdict)
}

/// What hyper's server answered, in order: (status, body) per final response.
async fn hyper_answers(raw: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let echo = hyper::service::service_fn(|request: Request<Incoming>| async move {
            let body = request.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>(Response::new(Full::<Bytes>::new(body)))
        });
        // Limits are not framing: hyper gets the codec's field-count limit (its default is 100).
        let _ = hyper::server::conn::http1::Builder::new()
            .half_close(true)
            .max_headers(1_000)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), echo)
            .await;
    });
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(raw).await.unwrap();
    client.shutdown().await.unwrap();
    let mut answer = Vec::new();
    // A safety net against a hung server, not a timing assertion.
    let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "hyper neither answered nor closed");
    server.abort();
    parse_answers(&answer)
}

/// hyper's responses (always Content-Length framed here), without interim 1xx responses.
fn parse_answers(mut bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut answers = Vec::new();
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut fields);
        let Ok(httparse::Status::Complete(head)) = response.parse(bytes) else {
            return answers;
        };
        let status = response.code.unwrap_or(0);
        let length = response
            .headers
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case("content-length"))
            .and_then(|f| std::str::from_utf8(f.value).ok()?.parse::<usize>().ok())
            .unwrap_or(0);
        let Some(body) = bytes.get(head..head + length) else {
            return answers;
        };
        if status >= 200 {
            answers.push((status, body.to_vec()));
        }
        bytes = &bytes[head + length..];
    }
}

fn corpus() -> Vec<(&'static str, Vec<u8>, Verdict)> {
    use Verdict::*;
    let chunk_ext_100k = format!("1;a={}\r\nx\r\n0\r\n\r\n", "v".repeat(100 * 1024));
    let mut tracestate_100 = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..100 {
        tracestate_100.push_str(&format!("tracestate: k{i}=v\r\n"));
    }
    tracestate_100.push_str("\r\n");
    let cases: Vec<(&'static str, String, Verdict)> = vec![
        // RFC 9112 / RFC 9110 examples and ordinary traffic.
        ("rfc9110 §6.1 example GET", "GET /hello.txt HTTP/1.1\r\nUser-Agent: curl/7.64.1\r\nHost: www.example.com\r\nAccept-Language: en, mi\r\n\r\n".into(), Clean(1)),
        ("rfc9112 §3.2.2 absolute-form", "GET http://www.example.org/pub/WWW/TheProject.html HTTP/1.1\r\nHost: www.example.org\r\n\r\n".into(), Clean(1)),
        ("rfc9112 §3.2.4 asterisk-form", "OPTIONS * HTTP/1.1\r\nHost: www.example.org:8001\r\n\r\n".into(), Clean(1)),
        ("content-length body", "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello".into(), Clean(1)),
        ("content-length with leading zeros", "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 005\r\n\r\nhello".into(), Clean(1)),
        ("content-length 0", "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n".into(), Clean(1)),
        ("rfc9112 §7.1 chunked with extension and trailer", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5;ext=\"v\"\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\n\r\n".into(), Clean(1)),
        ("chunk size with leading zeros and uppercase", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n000A\r\n0123456789\r\n0\r\n\r\n".into(), Clean(1)),
        ("transfer-encoding CHUNKED", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n1\r\nx\r\n0\r\n\r\n".into(), Clean(1)),
        ("transfer-encoding gzip, chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n".into(), Clean(1)),
        ("transfer-encoding with extra OWS", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  chunked \r\n\r\n1\r\nx\r\n0\r\n\r\n".into(), Clean(1)),
        ("pipelined GET, CL, chunked", "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcPOST /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n".into(), Clean(3)),
        ("leading empty lines", "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n".into(), Clean(1)),
        ("HTTP/1.0 keep-alive pipelined", "GET /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".into(), Clean(2)),
        ("HTTP/1.0 closes after the first", "GET /1 HTTP/1.0\r\n\r\nGET /2 HTTP/1.0\r\n\r\n".into(), Closed(1)),
        ("connection close ends the stream", "GET /1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n".into(), Closed(1)),
        ("expect 100-continue", "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok".into(), Clean(1)),
        ("repeated fields keep order", "GET / HTTP/1.1\r\nHost: a\r\nX-Multi: A\r\nx-multi: B\r\nX-MULTI: A\r\n\r\n".into(), Clean(1)),
        ("100 tracestate lines", tracestate_100, Clean(1)),
        ("empty host", "GET / HTTP/1.1\r\nHost:\r\n\r\n".into(), Clean(1)),
        ("obs-text in a value", "GET / HTTP/1.1\r\nHost: a\r\nX: caf\u{e9}\r\n\r\n".into(), Clean(1)),
        ("body cut short", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc".into(), Incomplete(0)),
        ("chunked without final CRLF", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n".into(), Incomplete(0)),
        ("head cut short", "GET / HTTP/1.1\r\nHost: a\r\n".into(), Incomplete(0)),
        // CL.TE / TE.CL
        ("CL.TE", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG".into(), Refused(0, "content_length_with_transfer_encoding")),
        ("TE.CL", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n".into(), Refused(0, "content_length_with_transfer_encoding")),
        ("CL.TE after a good request", "GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(), Refused(1, "content_length_with_transfer_encoding")),
        // TE.TE obfuscations
        ("TE xchunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n".into(), Refused(0, "invalid_transfer_encoding")),
        ("TE chunked, identity", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n".into(), Refused(0, "invalid_transfer_encoding")),
        ("TE identity, chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n".into(), Refused(0, "unknown_transfer_coding")),
        ("TE two lines chunked then x", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n".into(), Refused(0, "invalid_transfer_encoding")),
        ("TE chunked twice", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n".into(), Refused(0, "invalid_transfer_encoding")),
        ("TE quoted", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n0\r\n\r\n".into(), Refused(0, "invalid_transfer_encoding")),
        ("TE with space before colon", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n".into(), Refused(0, "invalid_field")),
        ("TE by obs-fold", "POST / HTTP/1.1\r\nHost: a\r\nX: y\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(), Refused(0, "invalid_field")),
        ("TE folded value", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n".into(), Refused(0, "invalid_field")),
        ("TE with vertical tab", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n".into(), Refused(0, "invalid_field")),
        ("TE spelled Transfer_Encoding", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer_Encoding: chunked\r\n\r\n0\r\n\r\n".into(), Refused(0, "framing_field_alias")),
        ("TE in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(), Refused(0, "transfer_encoding_http10")),
        // Content-Length variants
        ("CL duplicate equal", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc".into(), Refused(0, "repeated_content_length")),
        ("CL duplicate differing", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".into(), Refused(0, "repeated_content_length")),
        ("CL comma list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc".into(), Refused(0, "repeated_content_length")),
        ("CL with plus sign", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc".into(), Refused(0, "invalid_content_length")),
        ("CL negative", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n".into(), Refused(0, "invalid_content_length")),
        ("CL with inner space", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\nabcdefghijkl".into(), Refused(0, "invalid_content_length")),
        ("CL hex", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc".into(), Refused(0, "invalid_content_length")),
        ("CL overflowing u64", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n".into(), Refused(0, "invalid_content_length")),
        // line endings and bytes
        ("LF-only line endings", "GET / HTTP/1.1\nHost: a\n\n".into(), Refused(0, "invalid_line_ending")),
        ("LF-only blank line", "GET / HTTP/1.1\r\nHost: a\r\n\n".into(), Refused(0, "invalid_line_ending")),
        ("bare CR in a value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n".into(), Refused(0, "invalid_field")),
        ("NUL in a value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n".into(), Refused(0, "invalid_field")),
        ("space in a field name", "GET / HTTP/1.1\r\nHost: a\r\nX Y: z\r\n\r\n".into(), Refused(0, "invalid_field")),
        // request line, target, Host
        ("HTTP/1.2", "GET / HTTP/1.2\r\nHost: a\r\n\r\n".into(), Refused(0, "unsupported_version")),
        ("two spaces in the request line", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n".into(), Refused(0, "invalid_start_line")),
        ("fragment in target", "GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n".into(), Refused(0, "invalid_target")),
        ("no host", "GET / HTTP/1.1\r\n\r\n".into(), Refused(0, "missing_host")),
        ("two hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".into(), Refused(0, "duplicate_host")),
        ("host mismatch", "GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n".into(), Refused(0, "host_mismatch")),
        ("userinfo", "GET http://u:p@a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n".into(), Refused(0, "userinfo")),
        // chunked bodies
        ("chunk size overflow", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nx\r\n0\r\n\r\n".into(), Refused(0, "chunk_size_overflow")),
        ("chunk size 0x", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x1\r\nx\r\n0\r\n\r\n".into(), Refused(0, "invalid_chunk_size")),
        ("chunk size negative", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nx\r\n0\r\n\r\n".into(), Refused(0, "invalid_chunk_size")),
        ("chunk size trailing space", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1 \r\nx\r\n0\r\n\r\n".into(), Refused(0, "invalid_chunk_extension")),
        ("chunk size LF only", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\nx\r\n0\r\n\r\n".into(), Refused(0, "invalid_chunk_line_ending")),
        ("bare LF in chunk extension", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1;a\nb\r\nx\r\n0\r\n\r\n".into(), Refused(0, "invalid_chunk_line_ending")),
        ("100 KB chunk extension", format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{chunk_ext_100k}"), Refused(0, "chunk_line_too_long")),
        ("chunk data longer than its size", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxy\r\n0\r\n\r\n".into(), Refused(0, "invalid_chunk_line_ending")),
        ("chunk data without CRLF", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx0\r\n\r\n".into(), Refused(0, "invalid_chunk_line_ending")),
        ("trailer with obs-fold", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nA: b\r\n c\r\n\r\n".into(), Refused(0, "invalid_trailer")),
    ];
    cases
        .into_iter()
        .map(|(name, raw, verdict)| (name, raw.into_bytes(), verdict))
        .collect()
}

#[tokio::test]
async fn codec_accepts_nothing_hyper_refuses_and_frames_what_it_accepts_as_hyper_does() {
    let mut disagreements = Vec::new();
    for (name, raw, expected) in corpus() {
        let (ours, verdict) = verdict(&raw);
        if verdict != expected {
            disagreements.push(format!(
                "{name}: codec verdict {verdict:?}, the case expects {expected:?}"
            ));
        }
        let hyper = hyper_answers(&raw).await;
        for (i, content) in ours.iter().enumerate() {
            match hyper.get(i) {
                Some((200, body)) if body == content => {}
                other => disagreements.push(format!(
                    "{name}: codec framed request {i} with body {:?}, hyper answered {other:?}",
                    String::from_utf8_lossy(content)
                )),
            }
        }
        if let Verdict::Refused(n, why) = verdict {
            if hyper.get(n).is_some_and(|(status, _)| *status == 200) {
                eprintln!("codec stricter than hyper: {name} ({why})");
            }
        }
        let complete = matches!(verdict, Verdict::Clean(_) | Verdict::Closed(_));
        if complete && hyper.len() != ours.len() {
            disagreements.push(format!(
                "{name}: codec framed {} requests, hyper answered {}",
                ours.len(),
                hyper.len()
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}

// ---- responses: the codec against hyper's HTTP/1 client ------------------------------------

/// The codec's reading of one response to a `method` request: (status, content) when it framed
/// a complete response, else the refusal's error type (or `incomplete`).
fn codec_response(method: Method, raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let mut fields = Vec::new();
    let head = match parse_response(raw, &Limits::default(), &mut fields) {
        Ok(Some(head)) => head,
        Ok(None) => return Err("incomplete".into()),
        Err(error) => return Err(error.error_type().into()),
    };
    let rest = &raw[head.end..];
    let content = match response_body(method, &head) {
        BodyFraming::None => Vec::new(),
        BodyFraming::CloseDelimited => rest.to_vec(),
        BodyFraming::Length(n) => rest.get(..n as usize).ok_or("incomplete")?.to_vec(),
        BodyFraming::Chunked => match chunked_content(rest, &Limits::default()) {
            Ok(Some((content, _))) => content,
            Ok(None) => return Err("incomplete".into()),
            Err(error) => return Err(error.error_type().into()),
        },
    };
    Ok((head.status, content))
}

/// What hyper's client made of `raw` as the response to a `method` request.
async fn hyper_client_reads(method: Method, raw: &[u8]) -> Option<(u16, Vec<u8>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let raw = raw.to_vec();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        let _ = stream.write_all(&raw).await;
        let _ = stream.shutdown().await;
    });
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Empty<Bytes>,
    >(hyper_util::rt::TokioIo::new(stream))
    .await
    .unwrap();
    tokio::spawn(connection);
    let method = if method == Method::Head {
        "HEAD"
    } else {
        "GET"
    };
    let request = Request::builder()
        .method(method)
        .uri("/")
        .header("host", "a")
        .body(Default::default())
        .unwrap();
    let read = async {
        let response = sender.send_request(request).await.ok()?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, body.to_vec()))
    };
    // A safety net against a hung client, not a timing assertion.
    let answer = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("hyper client hung");
    server.abort();
    answer
}

/// (name, the request method, the response bytes, the codec's expected reading).
type ResponseCase = (
    &'static str,
    Method,
    &'static str,
    Result<(u16, &'static str), &'static str>,
);

fn response_corpus() -> Vec<ResponseCase> {
    use Method::{Head, Other};
    vec![
        ("content-length", Other, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", Ok((200, "hello"))),
        ("repeated Set-Cookie", Other, "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-Multi: x\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n", Ok((200, ""))),
        ("chunked with trailer", Other, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\n\r\n", Ok((200, "Wikipedia"))),
        ("close-delimited", Other, "HTTP/1.1 200 OK\r\n\r\nuntil close", Ok((200, "until close"))),
        ("HTTP/1.0 close-delimited", Other, "HTTP/1.0 200 OK\r\n\r\nold", Ok((200, "old"))),
        ("no reason phrase", Other, "HTTP/1.1 404 \r\nContent-Length: 1\r\n\r\nx", Ok((404, "x"))),
        ("204 has no body", Other, "HTTP/1.1 204 No Content\r\n\r\n", Ok((204, ""))),
        ("304 ignores Content-Length", Other, "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", Ok((304, ""))),
        ("HEAD ignores Content-Length", Head, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", Ok((200, ""))),
        ("CL.TE", Other, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", Err("content_length_with_transfer_encoding")),
        ("TE not ending in chunked", Other, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nbody", Err("invalid_transfer_encoding")),
        ("TE xchunked", Other, "HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", Err("invalid_transfer_encoding")),
        ("TE in HTTP/1.0", Other, "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", Err("transfer_encoding_http10")),
        ("CL spelled Content_Length", Other, "HTTP/1.1 200 OK\r\nContent_Length: 1\r\n\r\nx", Err("framing_field_alias")),
        ("CL differing", Other, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy", Err("repeated_content_length")),
        ("CL invalid", Other, "HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\nx", Err("invalid_content_length")),
        ("LF-only", Other, "HTTP/1.1 200 OK\nContent-Length: 1\n\nx", Err("invalid_line_ending")),
        ("obs-fold", Other, "HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 1\r\n\r\nx", Err("invalid_field")),
        ("space before colon", Other, "HTTP/1.1 200 OK\r\nContent-Length : 1\r\n\r\nx", Err("invalid_field")),
        ("chunk size overflow", Other, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nx\r\n0\r\n\r\n", Err("chunk_size_overflow")),
        ("bare LF in chunked body", Other, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\nx\r\n0\r\n\r\n", Err("invalid_chunk_line_ending")),
        ("truncated content-length body", Other, "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort", Err("incomplete")),
    ]
}

#[tokio::test]
async fn codec_reads_no_response_hyper_refuses_and_frames_what_it_accepts_as_hyper_does() {
    let mut disagreements = Vec::new();
    for (name, method, raw, expected) in response_corpus() {
        let ours = codec_response(method, raw.as_bytes());
        let expected = expected
            .map(|(s, b)| (s, b.as_bytes().to_vec()))
            .map_err(String::from);
        if ours != expected {
            disagreements.push(format!(
                "{name}: codec read {ours:?}, the case expects {expected:?}"
            ));
        }
        let hyper = hyper_client_reads(method, raw.as_bytes()).await;
        if let (Err(why), Some(_)) = (&ours, &hyper) {
            eprintln!("codec stricter than hyper's client: {name} ({why})");
        }
        if let Ok(accepted) = &ours {
            if hyper.as_ref() != Some(accepted) {
                disagreements.push(format!(
                    "{name}: codec read {accepted:?}, hyper's client {hyper:?}"
                ));
            }
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}
