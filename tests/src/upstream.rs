//! Upstream servers that record exactly what reached them.
//!
//! [`RawHttpUpstream`] works at the byte level (what a proxy must not change: header case,
//! order, framing); [`HttpUpstream`] is a hyper server (HTTP/1.1 and h2 prior knowledge) with
//! routes for streaming, trailers, slow and hanging responses.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// How long helpers wait for something that should happen before failing the test.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = BoxBody<Bytes, BoxError>;

/// One request as it arrived on the wire.
#[derive(Clone, Debug)]
pub struct RawRequest {
    /// Which accepted connection it came on (0-based).
    pub connection: usize,
    /// Request line and header block, through the blank line.
    pub head: Vec<u8>,
    /// The body exactly as framed on the wire (chunk sizes and trailers included).
    pub body: Vec<u8>,
}

impl RawRequest {
    pub fn head_str(&self) -> String {
        String::from_utf8_lossy(&self.head).into_owned()
    }
}

/// An HTTP/1.1 server that records raw request bytes and answers every request with the same
/// raw response bytes.
pub struct RawHttpUpstream {
    addr: SocketAddr,
    requests: tokio::sync::Mutex<mpsc::UnboundedReceiver<RawRequest>>,
    connections: Arc<AtomicUsize>,
}

impl RawHttpUpstream {
    /// Starts on 127.0.0.1 port 0. `response` must be a complete HTTP/1.1 response with a
    /// Content-Length (the connection stays open for more requests).
    pub async fn start(response: &'static [u8]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(listener, response)
    }

    /// Serves on an existing listener (e.g. one bound inside a network-namespace pod).
    pub fn serve(listener: TcpListener, response: &'static [u8]) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = mpsc::unbounded_channel();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let connection = counter.fetch_add(1, Ordering::SeqCst);
                let tx = tx.clone();
                tokio::spawn(serve_raw(stream, connection, tx, response));
            }
        });
        RawHttpUpstream {
            addr,
            requests: tokio::sync::Mutex::new(rx),
            connections,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The next request received (waits up to [`PATIENCE`]).
    pub async fn next_request(&self) -> RawRequest {
        let mut requests = self.requests.lock().await;
        tokio::time::timeout(PATIENCE, requests.recv())
            .await
            .expect("upstream received no request in time")
            .expect("upstream stopped")
    }
}

async fn serve_raw(
    mut stream: TcpStream,
    connection: usize,
    tx: mpsc::UnboundedSender<RawRequest>,
    response: &'static [u8],
) {
    let mut buf = BytesMut::new();
    loop {
        let Some(head_len) = read_until(&mut stream, &mut buf, head_length).await else {
            return;
        };
        let head = buf.split_to(head_len).to_vec();
        let framing = body_framing(&head);
        let body_len = match framing {
            Framing::Length(n) => {
                read_until(&mut stream, &mut buf, |b| (b.len() >= n).then_some(n)).await
            }
            Framing::Chunked => read_until(&mut stream, &mut buf, chunked_length).await,
        };
        let Some(body_len) = body_len else { return };
        let body = buf.split_to(body_len).to_vec();
        if tx
            .send(RawRequest {
                connection,
                head,
                body,
            })
            .is_err()
        {
            return;
        }
        if stream.write_all(response).await.is_err() {
            return;
        }
    }
}

/// Reads into `buf` until `complete` reports a length; `None` on EOF or error.
async fn read_until(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    complete: impl Fn(&[u8]) -> Option<usize>,
) -> Option<usize> {
    loop {
        if let Some(n) = complete(buf) {
            return Some(n);
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

fn head_length(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

enum Framing {
    Length(usize),
    Chunked,
}

fn body_framing(head: &[u8]) -> Framing {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut headers);
    if request.parse(head).is_err() {
        return Framing::Length(0);
    }
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding")
            && String::from_utf8_lossy(header.value)
                .to_ascii_lowercase()
                .contains("chunked")
        {
            return Framing::Chunked;
        }
    }
    let length = request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok());
    Framing::Length(length.unwrap_or(0))
}

/// The length of a complete chunked body (through the trailer section) at the start of `buf`.
pub fn chunked_length(buf: &[u8]) -> Option<usize> {
    let line_end = |from: usize| -> Option<usize> {
        buf.get(from..)?
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|i| from + i)
    };
    let mut pos = 0;
    loop {
        let end = line_end(pos)?;
        let line = std::str::from_utf8(&buf[pos..end]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        pos = end + 2;
        if size == 0 {
            loop {
                let end = line_end(pos)?;
                if end == pos {
                    return Some(pos + 2);
                }
                pos = end + 2;
            }
        }
        pos += size + 2;
        if pos > buf.len() {
            return None;
        }
    }
}

/// A request as [`HttpUpstream`] saw it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub connection: usize,
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
}

#[derive(Default)]
struct UpstreamState {
    connections: AtomicUsize,
    requests: Mutex<Vec<RecordedRequest>>,
    seen: tokio::sync::Notify,
}

/// A hyper upstream (HTTP/1.1 and h2 prior knowledge). Routes:
/// - `/echo`: streams the request body (and trailers) back; copies `content-type`,
///   `content-length` and `trailer`.
/// - `/bytes/N`: streams N generated bytes ([`pattern_byte`]) with a Content-Length.
/// - `/count`: reads the body and answers `"<length> <intact>"` (whether it is an intact
///   [`generated_body`]), with the request trailers, if any, in `x-received-trailers`.
/// - `/trailers`: a body followed by the trailer `x-checksum: 1234` (declared in `Trailer`).
/// - `/hang`: never answers.
/// - `/gate`: answers once [`HttpUpstream::open_gate`] has been called.
/// - anything else: `200 ok` with `x-upstream-connection: <n>`.
pub struct HttpUpstream {
    addr: SocketAddr,
    state: Arc<UpstreamState>,
    gate: watch::Sender<bool>,
}

impl HttpUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(listener)
    }

    /// Serves on an existing listener (e.g. one bound inside a network-namespace pod).
    pub fn serve(listener: TcpListener) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(UpstreamState::default());
        let (gate, gate_rx) = watch::channel(false);
        let server_state = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let connection = server_state.connections.fetch_add(1, Ordering::SeqCst);
                let state = server_state.clone();
                let gate = gate_rx.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        route(request, connection, state.clone(), gate.clone())
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        HttpUpstream { addr, state, gate }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().expect("lock").clone()
    }

    /// Waits until at least `n` requests have arrived (up to [`PATIENCE`]).
    pub async fn wait_for_requests(&self, n: usize) -> Vec<RecordedRequest> {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let seen = self.state.seen.notified();
                let requests = self.requests();
                if requests.len() >= n {
                    return requests;
                }
                seen.await;
            }
        })
        .await
        .expect("upstream did not receive the expected requests in time")
    }

    /// Lets every `/gate` request (waiting or future) answer.
    pub fn open_gate(&self) {
        self.gate.send_replace(true);
    }
}

/// Generated bodies repeat this block; chunks are cheap slices of it.
const PATTERN_LEN: usize = 64 * 1024;

fn pattern() -> &'static Bytes {
    static PATTERN: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    PATTERN.get_or_init(|| (0..PATTERN_LEN).map(|i| (i % 251) as u8).collect())
}

/// Whether `chunk`, found at `offset` of a generated body, holds the generated bytes.
pub fn matches_pattern(offset: u64, chunk: &[u8]) -> bool {
    let pattern = pattern();
    let mut pos = 0;
    while pos < chunk.len() {
        let start = ((offset + pos as u64) % PATTERN_LEN as u64) as usize;
        let n = (PATTERN_LEN - start).min(chunk.len() - pos);
        if chunk[pos..pos + n] != pattern[start..start + n] {
            return false;
        }
        pos += n;
    }
    true
}

/// A body of `len` generated bytes in 64 KiB chunks, produced lazily (bounded memory).
pub fn generated_body(len: u64) -> TestBody {
    let chunks = futures::stream::unfold(0u64, move |offset| async move {
        if offset >= len {
            return None;
        }
        let n = (PATTERN_LEN as u64).min(len - offset) as usize;
        let chunk = pattern().slice(..n);
        Some((Ok::<_, BoxError>(Frame::data(chunk)), offset + n as u64))
    });
    BodyExt::boxed(StreamBody::new(chunks))
}

fn full(body: impl Into<Bytes>) -> TestBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

async fn route(
    request: Request<Incoming>,
    connection: usize,
    state: Arc<UpstreamState>,
    mut gate: watch::Receiver<bool>,
) -> Result<Response<TestBody>, Infallible> {
    {
        let mut requests = state.requests.lock().expect("lock");
        requests.push(RecordedRequest {
            connection,
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
        });
    }
    state.seen.notify_waiters();

    let path = request.uri().path().to_string();
    let response = match path.as_str() {
        "/echo" => {
            let mut response = Response::builder();
            for name in [
                http::header::CONTENT_TYPE,
                http::header::CONTENT_LENGTH,
                http::header::TRAILER,
            ] {
                if let Some(value) = request.headers().get(&name) {
                    response = response.header(name, value);
                }
            }
            let body = request.into_body().map_err(BoxError::from).boxed();
            response.body(body).expect("response")
        }
        "/count" => {
            let Ok((length, intact, trailers)) = drain_body(request.into_body()).await else {
                return Ok(status(StatusCode::BAD_REQUEST));
            };
            let mut response = Response::new(full(format!("{length} {intact}")));
            if let Some(trailers) = trailers {
                let text: Vec<String> = trailers
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.to_str().unwrap_or("?")))
                    .collect();
                if let Ok(value) = HeaderValue::from_str(&text.join(";")) {
                    response.headers_mut().insert("x-received-trailers", value);
                }
            }
            response
        }
        "/trailers" => {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-checksum", HeaderValue::from_static("1234"));
            let frames = futures::stream::iter([
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"body before trailers"))),
                Ok(Frame::trailers(trailers)),
            ]);
            Response::builder()
                .header(http::header::TRAILER, "x-checksum")
                .body(StreamBody::new(frames).boxed())
                .expect("response")
        }
        "/hang" => futures::future::pending().await,
        "/gate" => {
            let _ = gate.wait_for(|open| *open).await;
            Response::new(full("gate opened"))
        }
        _ if path.starts_with("/bytes/") => {
            let Ok(len) = path["/bytes/".len()..].parse::<u64>() else {
                return Ok(status(StatusCode::BAD_REQUEST));
            };
            Response::builder()
                .header(http::header::CONTENT_LENGTH, len)
                .body(generated_body(len))
                .expect("response")
        }
        _ => Response::builder()
            .header("x-upstream-connection", connection)
            .body(full("ok"))
            .expect("response"),
    };
    Ok(response)
}

fn status(status: StatusCode) -> Response<TestBody> {
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response
}

/// Reads a body to the end without keeping it: its length, whether it is a generated body
/// ([`generated_body`]) intact, and its trailers.
pub async fn drain_body<B>(body: B) -> Result<(u64, bool, Option<HeaderMap>), B::Error>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let mut body = body;
    let (mut length, mut intact, mut trailers) = (0u64, true, None);
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(data) => {
                intact &= matches_pattern(length, &data);
                length += data.len() as u64;
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Ok((length, intact, trailers))
}

/// A stream of requests' worth of frames, for callers that want to stream a body they make.
pub fn body_from_chunks(chunks: Vec<Bytes>, trailers: Option<HeaderMap>) -> TestBody {
    let frames = chunks
        .into_iter()
        .map(|chunk| Ok::<_, BoxError>(Frame::data(chunk)))
        .chain(trailers.map(|t| Ok(Frame::trailers(t))));
    StreamBody::new(futures::stream::iter(frames)).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn generated_bodies_verify() {
        let len = 3 * PATTERN_LEN as u64 + 17;
        let (length, intact, _) = drain_body(generated_body(len)).await.unwrap();
        assert_eq!((length, intact), (len, true));
        let tampered =
            body_from_chunks(vec![pattern().slice(..10), Bytes::from_static(b"x")], None);
        let (_, intact, _) = drain_body(tampered).await.unwrap();
        assert!(!intact);
    }

    #[test]
    fn chunked_framing() {
        assert_eq!(chunked_length(b"0\r\n\r\n"), Some(5));
        assert_eq!(chunked_length(b"3\r\nabc\r\n0\r\n\r\nGET"), Some(13));
        assert_eq!(chunked_length(b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"), Some(21));
        assert_eq!(chunked_length(b"3\r\nabc\r\n0\r\nX-T: 1\r\n"), None);
        assert_eq!(chunked_length(b"3\r\nab"), None);
    }
}
