//! The codec's upstream client against raw TCP upstreams that write fixed bytes, so every byte
//! sent and every framing read is checked exactly.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::channel::mpsc;
use futures::SinkExt;
use http::HeaderMap;
use http_body::Frame;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::forward::h1::head::parse_request;
use crate::forward::pool::{Affinity, Pool};
use crate::meta::ErrorType;

const SECOND: Duration = Duration::from_secs(1);

/// One exchange of a scripted upstream: read until the request ends with `until`, then answer.
struct Step {
    until: &'static [u8],
    reply: &'static [u8],
    /// Close the connection after the reply.
    close: bool,
}

fn step(until: &'static [u8], reply: &'static [u8]) -> Step {
    Step {
        until,
        reply,
        close: false,
    }
}

/// A raw upstream that plays its steps in order, over however many connections the client
/// opens, recording each request's bytes.
struct RawUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    received: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    /// One message per connection the upstream closed.
    closed: tokio::sync::mpsc::UnboundedReceiver<()>,
}

impl RawUpstream {
    async fn start(steps: Vec<Step>) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (tx, received) = tokio::sync::mpsc::unbounded_channel();
        let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel();
        let steps = Arc::new(Mutex::new(VecDeque::from(steps)));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let (steps, tx, closed_tx) = (steps.clone(), tx.clone(), closed_tx.clone());
                tokio::spawn(async move {
                    serve(stream, steps, tx).await;
                    let _ = closed_tx.send(());
                });
            }
        });
        RawUpstream {
            addr,
            accepted,
            received,
            closed,
        }
    }

    async fn next_request(&mut self) -> Vec<u8> {
        tokio::time::timeout(10 * SECOND, self.received.recv())
            .await
            .expect("a request within the test's patience")
            .expect("the upstream is running")
    }

    fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn serve(
    mut stream: TcpStream,
    steps: Arc<Mutex<VecDeque<Step>>>,
    received: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
) {
    let mut buf = Vec::new();
    loop {
        // The step is taken only once its request arrived: a connection the client dropped
        // does not use up the next connection's step.
        let Some(until) = steps.lock().unwrap().front().map(|step| step.until) else {
            return;
        };
        while !buf.ends_with(until) {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let Some(step) = steps.lock().unwrap().pop_front() else {
            return;
        };
        let _ = received.send(std::mem::take(&mut buf));
        if stream.write_all(step.reply).await.is_err() {
            return;
        }
        if step.close {
            return;
        }
    }
}

/// A request as the codec's server makes it: parts with their RawHead.
fn request<B>(raw: &'static [u8], body: B) -> Request<B> {
    let mut fields = Vec::new();
    let head = parse_request(raw, &Limits::default(), &mut fields)
        .unwrap()
        .unwrap();
    let parts = fields::request_parts(Bytes::from_static(raw), &head, &fields).unwrap();
    Request::from_parts(parts, body)
}

/// A pool for the response heads of one test.
fn heads() -> HeadPool {
    HeadPool::new(4, 4 * 1024, 16 * 1024)
}

fn empty() -> Empty<Bytes> {
    Empty::new()
}

async fn connection(upstream: &RawUpstream) -> Connection {
    Connection::connect(upstream.addr, 10 * SECOND)
        .await
        .unwrap()
}

/// The body's data and trailers, read to the end.
async fn read_body(body: ProxyBody) -> (Vec<u8>, Option<HeaderMap>) {
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (collected.to_bytes().to_vec(), trailers)
}

#[tokio::test]
async fn requests_leave_with_their_head_and_body_as_framed() {
    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    let mut upstream = RawUpstream::start(vec![
        step(b"hello", ok),
        step(b"\r\n0\r\nx-sum: 1\r\n\r\n", ok),
        step(b"\r\n\r\n", ok),
    ])
    .await;
    let limits = Limits::default();

    let head = b"POST /a HTTP/1.1\r\nHost: a\r\nX-Case: A\r\ncontent-length: 5\r\n\r\n";
    let body = Full::new(Bytes::from_static(b"hello"));
    let (_, in_flight) = connection(&upstream)
        .await
        .send(request(head, body), &limits, &heads())
        .await
        .unwrap();
    assert!(matches!(in_flight.0, State::Done(Some(_))));
    assert_eq!(
        upstream.next_request().await,
        [&head[..], b"hello"].concat()
    );

    let head = b"POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut trailers = HeaderMap::new();
    trailers.insert("x-sum", http::HeaderValue::from_static("1"));
    let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
        Ok(Frame::data(Bytes::from_static(b"abc"))),
        Ok(Frame::data(Bytes::from_static(b"defghijklmnopqrstu"))),
        Ok(Frame::trailers(trailers)),
    ];
    let body = StreamBody::new(futures::stream::iter(frames));
    connection(&upstream)
        .await
        .send(request(head, body), &limits, &heads())
        .await
        .unwrap();
    let sent = String::from_utf8(upstream.next_request().await).unwrap();
    assert_eq!(
        sent,
        format!(
            "{}3\r\nabc\r\n12\r\ndefghijklmnopqrstu\r\n0\r\nx-sum: 1\r\n\r\n",
            std::str::from_utf8(head).unwrap()
        )
    );

    let head = b"GET /c HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n";
    connection(&upstream)
        .await
        .send(request(head, empty()), &limits, &heads())
        .await
        .unwrap();
    assert_eq!(upstream.next_request().await, head);
}

#[tokio::test]
async fn a_head_buffer_is_lent_only_while_the_response_head_arrives() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (got_request, request_arrived) = tokio::sync::oneshot::channel();
    let (answer, answer_now) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let mut read = Vec::new();
        while !read.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            read.extend_from_slice(&buf[..n]);
        }
        let _ = got_request.send(());
        let _ = answer_now.await;
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
            .await
            .unwrap();
        let _ = stream.read(&mut buf).await;
    });
    let heads = HeadPool::new(1, 4 * 1024, 16 * 1024);
    drop(heads.take());
    assert_eq!(heads.idle(), 1, "one free buffer to start with");

    let conn = Connection::connect(addr, 10 * SECOND).await.unwrap();
    let pool = heads.clone();
    let sent = tokio::spawn(async move {
        let limits = Limits::default();
        let (response, _) = conn.send(request(GET, empty()), &limits, &pool).await?;
        Ok::<_, ForwardError>(response)
    });
    request_arrived.await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        heads.idle(),
        1,
        "no buffer is held while the upstream has not answered"
    );

    answer.send(()).unwrap();
    let response = sent.await.unwrap().unwrap();
    assert_eq!(
        heads.idle(),
        1,
        "the buffer went back once the head was parsed"
    );
    let (data, _) = read_body(response.into_body()).await;
    assert_eq!(
        data, b"hello",
        "the body bytes read with the head were kept"
    );
}

/// Sends a GET (or `method`) and reads the whole response.
async fn exchange(
    reply: &'static [u8],
    raw_request: &'static [u8],
) -> (http::response::Parts, Vec<u8>, Option<HeaderMap>, InFlight) {
    let upstream = RawUpstream::start(vec![Step {
        until: b"\r\n\r\n",
        reply,
        close: true,
    }])
    .await;
    let (response, mut in_flight) = connection(&upstream)
        .await
        .send(request(raw_request, empty()), &Limits::default(), &heads())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let (data, trailers) = read_body(body).await;
    let _ = in_flight.try_idle();
    (parts, data, trailers, in_flight)
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

#[tokio::test]
async fn response_framings_are_read_as_announced() {
    let (parts, data, _, _) =
        exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", GET).await;
    assert_eq!(parts.status, 200);
    assert_eq!(data, b"hello");

    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 42\r\n\r\n";
    let (_, data, trailers, _) = exchange(chunked, GET).await;
    assert_eq!(data, b"hello world");
    assert_eq!(trailers.unwrap()["x-sum"], "42");

    // Close-delimited: everything until the upstream closes.
    let (_, data, _, _) = exchange(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", GET).await;
    assert_eq!(data, b"until the end");

    // HEAD, 204 and 304 have no body whatever their fields say; the bytes after the head are
    // not taken as one.
    let head_request = b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n";
    let (parts, data, _, _) = exchange(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        head_request,
    )
    .await;
    assert_eq!(parts.headers["content-length"], "5");
    assert!(data.is_empty());
    let (parts, data, _, _) = exchange(b"HTTP/1.1 204 No Content\r\n\r\n", GET).await;
    assert_eq!(parts.status, 204);
    assert!(data.is_empty());
    let (parts, data, _, _) = exchange(
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
        GET,
    )
    .await;
    assert_eq!(parts.status, 304);
    assert!(data.is_empty());
}

#[tokio::test]
async fn response_fields_keep_their_order_case_and_repeats() {
    let reply = b"HTTP/1.1 200 Fine Thanks\r\nSet-Cookie: a=1\r\nX-Multi: x\r\nSet-Cookie: b=2\r\nx-LOWER: v\r\nContent-Length: 2\r\n\r\nok";
    let (parts, data, _, _) = exchange(reply, GET).await;
    assert_eq!(data, b"ok");
    let cookies: Vec<_> = parts.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    let mut written = BytesMut::new();
    fields::write_response_head(&parts, fields::OutFraming::Length(2), &mut written);
    assert_eq!(&written[..], &reply[..reply.len() - 2]);
}

#[tokio::test]
async fn a_response_head_over_the_limit_is_a_502() {
    let upstream = RawUpstream::start(vec![step(
        b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: 0123456789012345678901234567890123456789\r\nContent-Length: 0\r\n\r\n",
    )])
    .await;
    let limits = Limits {
        max_head_bytes: 64,
        ..Limits::default()
    };
    let error = connection(&upstream)
        .await
        .send(request(GET, empty()), &limits, &heads())
        .await
        .unwrap_err();
    assert!(matches!(error, ForwardError::Upstream(_)), "{error:?}");
    assert_eq!(error.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(error.error_type(), "upstream_error");
}

#[tokio::test]
async fn a_connection_is_reused_only_after_its_response_body_was_read() {
    let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    let mut upstream = RawUpstream::start(vec![
        step(b"\r\n\r\n", reply),
        step(b"\r\n\r\n", reply),
        step(
            b"\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
        ),
    ])
    .await;
    let limits = Limits::default();
    let (response, mut in_flight) = connection(&upstream)
        .await
        .send(request(GET, empty()), &limits, &heads())
        .await
        .unwrap();
    assert!(
        in_flight.try_idle().is_pending(),
        "the body is not read yet"
    );
    let (data, _) = read_body(response.into_body()).await;
    assert_eq!(data, b"hello");
    let Poll::Ready(Some(conn)) = in_flight.try_idle() else {
        panic!("the connection is idle once the body was read");
    };

    let (response, mut in_flight) = conn
        .send(request(GET, empty()), &limits, &heads())
        .await
        .unwrap();
    read_body(response.into_body()).await;
    let conn = match in_flight.try_idle() {
        Poll::Ready(Some(conn)) => conn,
        other => panic!(
            "reusable again: {other:?}",
            other = other.map(|c| c.is_some())
        ),
    };
    assert_eq!(upstream.connections(), 1);
    upstream.next_request().await;
    upstream.next_request().await;

    // A body dropped before its end leaves the connection unusable.
    let (response, mut in_flight) = conn
        .send(request(GET, empty()), &limits, &heads())
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "hello");
    drop(body);
    assert!(matches!(in_flight.try_idle(), Poll::Ready(None)));
}

#[tokio::test]
async fn connection_close_and_http10_responses_are_not_reused() {
    for reply in [
        &b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"[..],
        b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    ] {
        let upstream = RawUpstream::start(vec![step(b"\r\n\r\n", reply)]).await;
        let (_, mut in_flight) = connection(&upstream)
            .await
            .send(request(GET, empty()), &Limits::default(), &heads())
            .await
            .unwrap();
        assert!(matches!(in_flight.try_idle(), Poll::Ready(None)));
    }
}

/// The upstream answers as soon as it has the head, before the request body was sent; the
/// client reads that response while the body still streams.
#[tokio::test]
async fn an_upstream_may_answer_before_the_request_body_ends() {
    let mut upstream = RawUpstream::start(vec![
        step(
            b"\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nearly\r\n",
        ),
        step(b"0\r\n\r\n", b"0\r\n\r\n"),
    ])
    .await;
    let (mut tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    let head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    let (response, mut in_flight) = connection(&upstream)
        .await
        .send(
            request(head, StreamBody::new(rx)),
            &Limits::default(),
            &heads(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(in_flight.try_idle().is_pending());
    let mut body = response.into_body();
    let early = body.frame().await.unwrap().unwrap();
    assert_eq!(early.into_data().unwrap(), "early");
    assert_eq!(upstream.next_request().await, head);

    tx.send(Ok(Frame::data(Bytes::from_static(b"late"))))
        .await
        .unwrap();
    drop(tx);
    assert!(
        body.frame().await.is_none(),
        "the response ends after the request"
    );
    assert_eq!(upstream.next_request().await, b"4\r\nlate\r\n0\r\n\r\n");
    let conn = in_flight.idle().await;
    assert!(conn.is_some(), "both ended whole: reusable");
}

/// A response that ends while the request body is still pending abandons the rest of the
/// request body: the connection closes instead of waiting for it.
#[tokio::test]
async fn a_response_that_ends_first_abandons_the_request_body() {
    let upstream = RawUpstream::start(vec![step(
        b"\r\n\r\n",
        b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 4\r\n\r\nbig!",
    )])
    .await;
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    let head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n";
    let (response, in_flight) = connection(&upstream)
        .await
        .send(
            request(head, StreamBody::new(rx)),
            &Limits::default(),
            &heads(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let (data, _) = read_body(response.into_body()).await;
    assert_eq!(data, b"big!");
    let idle = tokio::time::timeout(10 * SECOND, in_flight.idle()).await;
    assert!(matches!(idle, Ok(None)), "closed, not waiting for the body");
    assert!(tx.is_closed(), "the request body was dropped");
}

#[tokio::test]
async fn interim_responses_are_relayed_before_the_final_one() {
    let continue_ = b"HTTP/1.1 100 Continue\r\n\r\n";
    let hints = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n";
    let reply = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let upstream = RawUpstream::start(vec![step(b"\r\n\r\n", reply)]).await;
    let (informational, mut relayed) = Informational::channel();
    let mut request = request(GET, empty());
    request.extensions_mut().insert(informational);
    let (response, _) = connection(&upstream)
        .await
        .send(request, &Limits::default(), &heads())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(relayed.recv().await.unwrap(), &continue_[..]);
    assert_eq!(relayed.recv().await.unwrap(), &hints[..]);
    let (data, _) = read_body(response.into_body()).await;
    assert_eq!(data, b"ok");
}

#[tokio::test]
async fn switching_protocols_hands_the_connection_over() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = vec![0u8; 1024];
        let mut len = 0;
        while !head[..len].ends_with(b"\r\n\r\n") {
            len += stream.read(&mut head[len..]).await.unwrap();
        }
        stream
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\nfirst")
            .await
            .unwrap();
        let mut ping = [0u8; 4];
        stream.read_exact(&mut ping).await.unwrap();
        stream.write_all(&ping).await.unwrap();
    });
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\n";
    let conn = Connection::connect(addr, 10 * SECOND).await.unwrap();
    let (mut response, mut in_flight) = conn
        .send(request(raw, empty()), &Limits::default(), &heads())
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    assert!(matches!(in_flight.try_idle(), Poll::Ready(None)));
    let mut upgraded = exchange::on_response(&mut response).await.unwrap();
    let mut first = [0u8; 5];
    upgraded.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"first");
    upgraded.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    upgraded.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
    server.await.unwrap();
}

#[tokio::test]
async fn an_upstream_that_closes_without_answering_is_a_reset() {
    let upstream = RawUpstream::start(vec![Step {
        until: b"\r\n\r\n",
        reply: b"",
        close: true,
    }])
    .await;
    let error = connection(&upstream)
        .await
        .send(request(GET, empty()), &Limits::default(), &heads())
        .await
        .unwrap_err();
    assert_eq!(error.error_type(), "reset");
}

fn pool() -> Arc<Pool<Full<Bytes>>> {
    Pool::new(10 * SECOND, 90 * SECOND, 64 * 1024)
}

fn get() -> Request<Full<Bytes>> {
    request(GET, Full::new(Bytes::new()))
}

#[tokio::test]
async fn the_pool_reuses_a_connection_whose_exchange_ended() {
    let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let upstream =
        RawUpstream::start(vec![step(b"\r\n\r\n", reply), step(b"\r\n\r\n", reply)]).await;
    let pool = pool();
    let affinity = Affinity::new(&pool);
    let addrs = [upstream.addr];
    for _ in 0..2 {
        let (_, response) = pool.send_http1(&affinity, &addrs, get()).await.unwrap();
        let (data, _) = read_body(response.into_body()).await;
        assert_eq!(data, b"ok");
    }
    assert_eq!(upstream.connections(), 1);

    // When the client connection goes, its upstream connection waits in the pool.
    drop(affinity);
    assert_eq!(pool.idle_http1(), 1);
}

#[tokio::test]
async fn the_pool_does_not_reuse_a_connection_whose_body_was_dropped() {
    let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello";
    let upstream = RawUpstream::start(vec![
        step(b"\r\n\r\n", reply),
        step(b"\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ])
    .await;
    let pool = pool();
    let affinity = Affinity::new(&pool);
    let addrs = [upstream.addr];
    let (_, response) = pool.send_http1(&affinity, &addrs, get()).await.unwrap();
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    let (_, response) = pool.send_http1(&affinity, &addrs, get()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.connections(), 2);
    drop(affinity);
    assert_eq!(
        pool.idle_http1(),
        1,
        "the second one, whose exchange ended, is idle"
    );
}

#[tokio::test]
async fn the_pool_drops_idle_connections_the_upstream_closed() {
    let mut upstream = RawUpstream::start(vec![
        Step {
            until: b"\r\n\r\n",
            reply: b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            close: true,
        },
        step(b"\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ])
    .await;
    let pool = pool();
    let affinity = Affinity::new(&pool);
    let addrs = [upstream.addr];
    pool.send_http1(&affinity, &addrs, get()).await.unwrap();
    // The upstream closed its side after a response that allowed keep-alive (as servers do
    // at their idle timeout); the connection must not be used again.
    upstream.closed.recv().await.unwrap();
    let (_, response) = pool.send_http1(&affinity, &addrs, get()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.connections(), 2);
}
