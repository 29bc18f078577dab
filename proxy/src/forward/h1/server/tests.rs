//! `serve_h1` over real loopback sockets, with a raw client writing and reading the bytes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use prometheus_client::metrics::counter::Counter;

use super::serve_h1;
use crate::admission::Admission;
use crate::client_io::ClientIo;
use crate::forward::connection_service::ConnectionService;
use crate::forward::h1::body::RecvBody;
use crate::forward::h1::exchange::{Informational, OnUpgrade, Upgraded};
use crate::forward::h1::fields::response_parts;
use crate::forward::h1::head::{parse_response, Limits};
use crate::forward::h1::pool::HeadPool;
use crate::forward::head::{Exchanges, HeadGuard, HeadLimits};
use crate::forward::validate::RefusedHost;
use crate::meta::{ConnMeta, Direction};
use crate::metrics::DirectionMetrics;
use crate::shutdown::{self, Trigger};

/// Guards against a hang only; no test depends on how fast anything is.
const HANG: Duration = Duration::from_secs(20);

type TestRequest = Request<Option<RecvBody>>;

struct Server {
    addr: SocketAddr,
    pool: HeadPool,
    trigger: Trigger,
    calls: Arc<AtomicUsize>,
}

/// Serves every accepted connection with `serve_h1` and `handler`.
async fn serve<H, F>(handler: H) -> Server
where
    H: Fn(TestRequest) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pool = HeadPool::new(4, 1024, 64 * 1024);
    let (trigger, watch, _drained) = shutdown::channel();
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = Arc::new(handler);
    let (server_pool, server_calls) = (pool.clone(), calls.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = Handler(handler.clone(), server_calls.clone());
            let (watch, pool) = (watch.clone(), server_pool.clone());
            tokio::spawn(async move {
                serve_h1(stream, &service, &watch, Limits::default(), &pool).await;
            });
        }
    });
    Server {
        addr,
        pool,
        trigger,
        calls,
    }
}

/// The test's handler as the server's service (hyper's `service_fn` wants a `Body` request).
struct Handler<H>(Arc<H>, Arc<AtomicUsize>);

impl<H, F> hyper::service::Service<TestRequest> for Handler<H>
where
    H: Fn(TestRequest) -> F,
    F: std::future::Future<Output = Response<Full<Bytes>>>,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future =
        futures::future::Map<F, fn(Response<Full<Bytes>>) -> Result<Self::Response, Infallible>>;

    fn call(&self, request: TestRequest) -> Self::Future {
        self.1.fetch_add(1, Ordering::SeqCst);
        futures::FutureExt::map((self.0)(request), Ok)
    }
}

/// Answers with the request's method, target and trailers in fields, and its body as the body.
async fn echo(request: TestRequest) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let (data, trailers) = match body {
        None => (Bytes::new(), String::new()),
        Some(body) => match body.collect().await {
            Ok(collected) => {
                let trailers = collected.trailers().map(format_fields).unwrap_or_default();
                (collected.to_bytes(), trailers)
            }
            Err(error) => {
                return Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .header("x-error", error.to_string())
                    .body(Full::default())
                    .unwrap();
            }
        },
    };
    Response::builder()
        .header("x-request", format!("{} {}", parts.method, parts.uri))
        .header("x-trailers", trailers)
        .body(Full::new(data))
        .unwrap()
}

fn format_fields(fields: &http::HeaderMap) -> String {
    let fields: Vec<String> = fields
        .iter()
        .map(|(name, value)| format!("{name}={}", value.to_str().unwrap_or("?")))
        .collect();
    fields.join(";")
}

async fn connect(server: &Server) -> TcpStream {
    TcpStream::connect(server.addr).await.unwrap()
}

/// Everything the server sends until it closes.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut all = Vec::new();
    tokio::time::timeout(HANG, stream.read_to_end(&mut all))
        .await
        .expect("the server closes")
        .expect("read");
    String::from_utf8_lossy(&all).into_owned()
}

/// One response with a Content-Length (or none): its head and body.
async fn read_response(stream: &mut TcpStream) -> (String, String) {
    let (head, body, rest) = read_response_and_more(stream).await;
    assert!(
        rest.is_empty(),
        "unexpected bytes after the response: {rest}"
    );
    (head, body)
}

/// One response, and the bytes read past it.
async fn read_response_and_more(stream: &mut TcpStream) -> (String, String, String) {
    let mut all = Vec::new();
    let mut chunk = [0; 4096];
    loop {
        if let Some(end) = all.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&all[..end + 4]).into_owned();
            let length = content_length(&head);
            if all.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&all[end + 4..end + 4 + length]);
                let rest = String::from_utf8_lossy(&all[end + 4 + length..]);
                return (head, body.into_owned(), rest.into_owned());
            }
        }
        let n = tokio::time::timeout(HANG, stream.read(&mut chunk))
            .await
            .expect("a response")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&all));
        all.extend_from_slice(&chunk[..n]);
    }
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// The `x-request` value of each response in `text`, in order.
fn answered(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|line| line.strip_prefix("x-request: "))
        .collect()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let server = serve(echo).await;
    let mut client = connect(&server).await;
    client
        .write_all(
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
              POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
              POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
              GET /d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let text = read_to_close(&mut client).await;
    assert_eq!(answered(&text), ["GET /a", "POST /b", "POST /c", "GET /d"]);
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 4, "{text}");
    assert!(text.contains("\r\n\r\nhello"), "{text}");
    assert!(text.contains("\r\n\r\nabc"), "{text}");
}

#[tokio::test]
async fn http11_persists_until_connection_close() {
    let server = serve(echo).await;
    let mut client = connect(&server).await;
    for path in ["/1", "/2"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        client.write_all(request.as_bytes()).await.unwrap();
        let (head, _) = read_response(&mut client).await;
        assert!(head.contains(&format!("x-request: GET {path}")), "{head}");
        assert!(!head.to_ascii_lowercase().contains("connection: close"));
    }
    client
        .write_all(b"GET /3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let text = read_to_close(&mut client).await;
    assert_eq!(answered(&text), ["GET /3"]);
    assert!(text.contains("connection: close\r\n"), "{text}");
}

#[tokio::test]
async fn http10_closes_unless_keep_alive() {
    let server = serve(echo).await;
    let mut client = connect(&server).await;
    client
        .write_all(b"GET /k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut client).await;
    assert!(head.contains("connection: keep-alive\r\n"), "{head}");
    client.write_all(b"GET /c HTTP/1.0\r\n\r\n").await.unwrap();
    let text = read_to_close(&mut client).await;
    assert_eq!(answered(&text), ["GET /c"], "{text}");
}

#[tokio::test]
async fn chunked_request_trailers_reach_the_service() {
    let server = serve(echo).await;
    let mut client = connect(&server).await;
    client
        .write_all(
            b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
              4\r\nwiki\r\n5\r\npedia\r\n0\r\nX-Checksum: 1234\r\n\r\n",
        )
        .await
        .unwrap();
    let text = read_to_close(&mut client).await;
    assert!(text.contains("x-trailers: x-checksum=1234\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nwikipedia"), "{text}");
}

#[tokio::test]
async fn refused_heads_get_their_status_and_error_name_and_close() {
    let cases: [(&[u8], &str, &str); 3] = [
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "400 Bad Request",
            "content_length_with_transfer_encoding",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nX: a\nb\r\n\r\n",
            "400 Bad Request",
            "invalid_field",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: br, chunked\r\n\r\n",
            "501 Not Implemented",
            "unknown_transfer_coding",
        ),
    ];
    let server = serve(echo).await;
    for (request, status, name) in cases {
        let mut client = connect(&server).await;
        client.write_all(request).await.unwrap();
        let text = read_to_close(&mut client).await;
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status}\r\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("meshtrace-proxy-error: {name}\r\n")),
            "{text}"
        );
    }
    assert_eq!(
        server.calls.load(Ordering::SeqCst),
        0,
        "nothing was forwarded"
    );
}

/// A head faulty only in where it goes (Host, userinfo) reaches the service, marked, so the
/// stack's `Validate` answers, counts and traces it as on the hyper path.
#[tokio::test]
async fn host_faults_reach_the_service_marked_for_refusal() {
    let server = serve(|request: TestRequest| async move {
        let refused = request.extensions().get::<RefusedHost>().copied();
        let name = refused.map_or("none", |RefusedHost(error)| error.error_type());
        Response::builder()
            .header("x-refused", name)
            .body(Full::default())
            .unwrap()
    })
    .await;
    for (request, name) in [
        (&b"GET / HTTP/1.1\r\n\r\n"[..], "missing_host"),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "duplicate_host",
        ),
        (b"GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n", "userinfo"),
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "none"),
    ] {
        let mut client = connect(&server).await;
        client.write_all(request).await.unwrap();
        let (head, _) = read_response(&mut client).await;
        assert!(head.contains(&format!("x-refused: {name}\r\n")), "{head}");
    }
}

#[tokio::test]
async fn no_100_continue_unless_the_service_relays_one() {
    // The service answers without reading the body: no 100 first, and the connection closes
    // after the answer because the body's end was never read.
    let server = serve(|_request: TestRequest| async {
        Response::new(Full::new(Bytes::from_static(b"early")))
    })
    .await;
    let mut client = connect(&server).await;
    client
        .write_all(
            b"PUT /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        )
        .await
        .unwrap();
    let text = read_to_close(&mut client).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(!text.contains("100 Continue"), "{text}");
    assert!(text.ends_with("\r\n\r\nearly"), "{text}");

    // The service relays the upstream's 100 before reading the body.
    let server = serve(|mut request: TestRequest| async move {
        let informational = request.extensions_mut().remove::<Informational>();
        let informational = informational.expect("the server sets Informational");
        informational.send(Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n"));
        echo(request).await
    })
    .await;
    let mut client = connect(&server).await;
    client
        .write_all(
            b"PUT /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        )
        .await
        .unwrap();
    let mut continued = vec![0; b"HTTP/1.1 100 Continue\r\n\r\n".len()];
    tokio::time::timeout(HANG, client.read_exact(&mut continued))
        .await
        .expect("the relayed 100")
        .unwrap();
    assert_eq!(continued, b"HTTP/1.1 100 Continue\r\n\r\n");
    client.write_all(b"hello").await.unwrap();
    let (head, body) = read_response(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body, "hello");
}

#[tokio::test]
async fn an_answer_before_the_body_closes_lingering_not_resetting() {
    // The service answers without reading the body (as a 413 would); the connection closes
    // after the answer, lingering: the body bytes the client still sends must not turn the
    // close into a reset (RFC 9112 §9.6).
    let body_sent = Arc::new(Notify::new());
    let answer = body_sent.clone();
    let server = serve(move |_request: TestRequest| {
        let answer = answer.clone();
        async move {
            answer.notified().await;
            Response::new(Full::new(Bytes::from_static(b"refused")))
        }
    })
    .await;
    let mut client = connect(&server).await;
    client
        .write_all(b"PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4194304\r\n\r\n")
        .await
        .unwrap();
    client.write_all(&vec![b'x'; 64 * 1024]).await.unwrap();
    body_sent.notify_one();
    let (head, body) = read_response(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body, "refused");
    // A client that sends its whole body before it reads (most do) is still read from
    // (and its bytes discarded) rather than reset.
    let rest = client.write_all(&vec![b'x'; 256 * 1024]).await;
    assert!(rest.is_ok(), "the rest of the body was refused: {rest:?}");
    client.shutdown().await.unwrap();
    assert_eq!(read_to_close(&mut client).await, "");
}

/// Sends on its channel when dropped: the service's future was cancelled or finished.
struct DropSignal(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_request() {
    let (dropped_tx, dropped) = tokio::sync::oneshot::channel();
    let dropped_tx = Arc::new(std::sync::Mutex::new(Some(dropped_tx)));
    let started = Arc::new(Notify::new());
    let handler_started = started.clone();
    let server = serve(move |_request: TestRequest| {
        let signal = DropSignal(dropped_tx.lock().unwrap().take());
        let started = handler_started.clone();
        async move {
            let _signal = signal;
            started.notify_one();
            std::future::pending::<Response<Full<Bytes>>>().await
        }
    })
    .await;
    let client = connect(&server).await;
    let mut client = client;
    client
        .write_all(b"GET /never HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    started.notified().await;
    drop(client);
    tokio::time::timeout(HANG, dropped)
        .await
        .expect("the service's future is dropped")
        .unwrap();
}

#[tokio::test]
async fn a_client_that_half_closes_after_pipelining_gets_its_answers() {
    // The service takes a while, so that the end of the client's stream is read meanwhile.
    let server = serve(|request| async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        echo(request).await
    })
    .await;
    let mut client = connect(&server).await;
    client
        .write_all(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    client.shutdown().await.unwrap();
    let text = read_to_close(&mut client).await;
    assert_eq!(answered(&text), ["GET /1", "GET /2"], "{text}");
}

#[tokio::test]
async fn no_1xx_reaches_an_http10_client() {
    let server = serve(|mut request: TestRequest| async move {
        if let Some(informational) = request.extensions_mut().remove::<Informational>() {
            informational.send(Bytes::from_static(b"HTTP/1.1 103 Early Hints\r\n\r\n"));
        }
        echo(request).await
    })
    .await;
    let mut client = connect(&server).await;
    client
        .write_all(b"GET /old HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let text = read_to_close(&mut client).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");

    let mut client = connect(&server).await;
    client
        .write_all(b"GET /new HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let text = read_to_close(&mut client).await;
    assert!(
        text.starts_with("HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 200 OK\r\n"),
        "{text}"
    );
}

/// Takes the connection once the server hands it over.
async fn upgraded(request: &mut TestRequest) -> Upgraded {
    let on_upgrade: OnUpgrade = request
        .extensions_mut()
        .remove()
        .expect("OnUpgrade on an upgrade request");
    on_upgrade
        .upgraded()
        .await
        .expect("the connection is handed over")
}

/// Switches to a protocol that echoes the prefix, then every byte read, back.
async fn switch(mut request: TestRequest, status: StatusCode) -> Response<Full<Bytes>> {
    let on_upgrade = request.extensions().get::<OnUpgrade>().cloned();
    assert!(on_upgrade.is_some(), "OnUpgrade on an upgrade request");
    tokio::spawn(async move {
        let mut tunnel = upgraded(&mut request).await;
        tunnel.write.write_all(&tunnel.prefix).await.unwrap();
        let mut buf = [0; 256];
        while let Ok(n @ 1..) = tunnel.read.read(&mut buf).await {
            tunnel.write.write_all(&buf[..n]).await.unwrap();
        }
        let _ = tunnel.write.shutdown().await;
    });
    let mut response = Response::new(Full::default());
    *response.status_mut() = status;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        let headers = response.headers_mut();
        headers.insert("connection", "upgrade".parse().unwrap());
        headers.insert("upgrade", "echo".parse().unwrap());
    }
    response
}

#[tokio::test]
async fn upgrade_hands_over_the_connection_with_the_bytes_already_read() {
    let server = serve(|request| switch(request, StatusCode::SWITCHING_PROTOCOLS)).await;
    let mut client = connect(&server).await;
    client
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nearly bytes;")
        .await
        .unwrap();
    let (head, _, echoed) = read_response_and_more(&mut client).await;
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    client.write_all(b"later bytes").await.unwrap();
    client.shutdown().await.unwrap();
    let echoed = echoed + &read_to_close(&mut client).await;
    assert_eq!(echoed, "early bytes;later bytes");
}

#[tokio::test]
async fn connect_2xx_hands_over_the_connection() {
    let server = serve(|request| switch(request, StatusCode::OK)).await;
    let mut client = connect(&server).await;
    client
        .write_all(b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\nping")
        .await
        .unwrap();
    let (head, _, echoed) = read_response_and_more(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    client.shutdown().await.unwrap();
    let echoed = echoed + &read_to_close(&mut client).await;
    assert_eq!(echoed, "ping");
}

#[tokio::test]
async fn shutdown_closes_an_idle_connection_at_once() {
    let server = serve(echo).await;
    let mut client = connect(&server).await;
    client
        .write_all(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_response(&mut client).await;
    server.trigger.trigger();
    assert_eq!(read_to_close(&mut client).await, "");
}

#[tokio::test]
async fn shutdown_closes_after_the_response_in_flight() {
    let release = Arc::new(Notify::new());
    let started = Arc::new(Notify::new());
    let (handler_release, handler_started) = (release.clone(), started.clone());
    let server = serve(move |request| {
        let (release, started) = (handler_release.clone(), handler_started.clone());
        async move {
            started.notify_one();
            release.notified().await;
            echo(request).await
        }
    })
    .await;
    let mut client = connect(&server).await;
    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    started.notified().await;
    server.trigger.trigger();
    release.notify_one();
    let text = read_to_close(&mut client).await;
    assert_eq!(answered(&text), ["GET /slow"], "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
}

#[tokio::test]
async fn the_head_buffer_goes_back_once_parsed_and_none_is_held_while_idle() {
    let pool_seen = Arc::new(std::sync::Mutex::new(None::<HeadPool>));
    let idle_in_service = Arc::new(AtomicUsize::new(usize::MAX));
    let (seen, idle) = (pool_seen.clone(), idle_in_service.clone());
    let server = serve(move |request| {
        let pool = seen.lock().unwrap().clone();
        idle.store(pool.map_or(usize::MAX, |p| p.idle()), Ordering::SeqCst);
        echo(request)
    })
    .await;
    *pool_seen.lock().unwrap() = Some(server.pool.clone());
    let mut client = connect(&server).await;
    client
        .write_all(b"POST /1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        .await
        .unwrap();
    read_response(&mut client).await;
    assert_eq!(
        idle_in_service.load(Ordering::SeqCst),
        1,
        "the head's buffer is back in the pool while the service runs"
    );
    // Between requests the connection holds none (it takes one only for each read attempt).
    let deadline = tokio::time::Instant::now() + HANG;
    while server.pool.idle() != 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.pool.idle(), 1);
}

#[tokio::test]
async fn a_received_response_head_leaves_with_its_field_order_case_and_spacing() {
    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-Multi:  one\r\n\
        set-cookie: b=2\r\nContent-Length: 2\r\n\r\n";
    let server = serve(|_request| async {
        let mut fields = Vec::new();
        let head = parse_response(HEAD, &Limits::default(), &mut fields)
            .expect("a valid head")
            .expect("a complete head");
        let parts = response_parts(Bytes::from_static(HEAD), &head, &fields).expect("parts");
        Response::from_parts(parts, Full::new(Bytes::from_static(b"ok")))
    })
    .await;
    let mut client = connect(&server).await;
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut client).await;
    assert_eq!(head.as_bytes(), HEAD);
    assert_eq!(body, "ok");
}

/// Serves like the proxy will: the connection read through `ClientIo` with its `HeadGuard`,
/// requests handed to a `ConnectionService` (which begins and ends the guard's exchanges).
async fn serve_guarded<H, F>(limits: HeadLimits, handler: H) -> Server
where
    H: Fn(TestRequest) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pool = HeadPool::new(4, 1024, 64 * 1024);
    let (trigger, watch, _drained) = shutdown::channel();
    let calls = Arc::new(AtomicUsize::new(0));
    let (server_pool, server_calls) = (pool.clone(), calls.clone());
    // The codec's head limit is a backstop above the guard's, as hyper's was.
    let codec_limits = Limits {
        max_head_bytes: limits.max_bytes * 2,
        ..Limits::default()
    };
    tokio::spawn(async move {
        let mut admission =
            Admission::new(64, Direction::Inbound, DirectionMetrics::unregistered());
        loop {
            let Ok((stream, client_addr)) = listener.accept().await else {
                return;
            };
            let exchanges = Arc::new(Exchanges::new(limits.idle_timeout.is_some()));
            let io = ClientIo::new(stream, Counter::default(), Counter::default())
                .guard_heads(HeadGuard::new(limits, exchanges.clone()));
            let (handler, calls) = (handler.clone(), server_calls.clone());
            let stack = tower::service_fn(move |request: TestRequest| {
                calls.fetch_add(1, Ordering::SeqCst);
                futures::FutureExt::map(handler(request), Ok::<_, Infallible>)
            });
            let meta = Arc::new(ConnMeta {
                direction: Direction::Inbound,
                client_addr,
                local_addr: addr,
                orig_dst: None,
            });
            let service = ConnectionService::new(stack, meta, admission.admit(), Some(exchanges));
            let (watch, pool) = (watch.clone(), server_pool.clone());
            tokio::spawn(async move {
                serve_h1(io, &service, &watch, codec_limits, &pool).await;
            });
        }
    });
    Server {
        addr,
        pool,
        trigger,
        calls,
    }
}

fn guard_limits(read_timeout: Duration, idle_timeout: Option<Duration>) -> HeadLimits {
    HeadLimits {
        read_timeout: Some(read_timeout),
        idle_timeout,
        max_bytes: 1024,
    }
}

#[tokio::test]
async fn exchanges_are_not_idle_time_but_the_idle_time_after_them_is() {
    let idle = Duration::from_millis(300);
    let server = serve_guarded(guard_limits(HANG, Some(idle)), move |request| async move {
        // The service takes longer than the idle timeout: the exchange is not idle time.
        tokio::time::sleep(idle * 3).await;
        echo(request).await
    })
    .await;
    let mut client = connect(&server).await;
    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut client).await;
    assert!(head.contains("x-request: GET /slow"), "{head}");
    // Then nothing: the idle timeout closes the connection without a response.
    assert_eq!(read_to_close(&mut client).await, "");
}

#[tokio::test]
async fn a_slow_body_is_not_a_slow_head() {
    let head_timeout = Duration::from_millis(300);
    let server = serve_guarded(guard_limits(head_timeout, None), echo).await;
    let mut client = connect(&server).await;
    client
        .write_all(b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nfirst")
        .await
        .unwrap();
    tokio::time::sleep(head_timeout * 3).await;
    client.write_all(b"-last").await.unwrap();
    let (head, body) = read_response(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body, "first-last");
}

#[tokio::test]
async fn the_head_guard_answers_slow_and_large_heads_and_the_loop_closes() {
    let head_timeout = Duration::from_millis(300);
    let server = serve_guarded(guard_limits(head_timeout, None), echo).await;
    let mut client = connect(&server).await;
    client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    let text = read_to_close(&mut client).await;
    assert!(
        text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{text}"
    );
    assert!(text.contains("meshtrace-proxy-error: request_head_timeout"));

    let mut client = connect(&server).await;
    let large = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Large: {}\r\n\r\n",
        "a".repeat(2000)
    );
    client.write_all(large.as_bytes()).await.unwrap();
    let text = read_to_close(&mut client).await;
    assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
    assert!(text.contains("meshtrace-proxy-error: request_head_too_large"));
    assert_eq!(server.calls.load(Ordering::SeqCst), 0);
}
