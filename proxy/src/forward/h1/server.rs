//! One client connection served on the HTTP/1 codec: heads read and checked, requests handed
//! to the connection's service one at a time, responses written in order.
//!
//! The loop: read a head into a buffer lent by the [`HeadPool`] (taken on each read attempt and
//! given back while none of the head has arrived, so an idle connection holds none), parse it,
//! copy the head's bytes into the request's parts and give the buffer back; attach the body
//! ([`RecvBody`], which owns the read side until the body's end) or none; call the service,
//! relaying the 1xx heads it sends through the request's [`Informational`](super::exchange::Informational); write the final
//! head and its body; then read the next head from the bytes left past the body. While a
//! response is written nothing is read, so pipelined requests are answered in order (RFC 9112
//! §9.3.2). The connection persists per RFC 9112 §9.3 (the request's `Connection`, its version,
//! the response's `Connection`, a close-delimited response), and only if the request's body was
//! read to its end. A 101, or a 2xx to CONNECT, hands the connection (read side, the bytes read
//! past the head, write side) to the request's [`OnUpgrade`]. No `100 Continue` of its own: a 1xx
//! reaches the client only when the service relays one.
//!
//! Bounds on heads in time and size are enforced below this loop, by the connection's IO
//! ([`HeadGuard`](crate::forward::head::HeadGuard)); a head the codec refuses
//! ([`HeadError`]) is answered here, with its status and `meshtrace-proxy-error`, and closes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderValue, CONNECTION};
use http::{Request, Response, StatusCode};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use super::body::{RecvBody, Returned};
use super::error::HeadError;
use super::exchange::{pending, BoxRead, BoxWrite, Relayed, UpgradeSender, Upgraded};
use super::fields::{
    request_parts, response_framing, write_response_head, write_status_line, OutFraming,
    RequestFacts,
};
use super::framing::{request_body, BodyFraming};
use super::head::{parse_request_deferring_host, Field, Limits, Method, RequestHead, Version};
use super::pool::{HeadBuf, HeadPool, HeadStorage};
use super::send::BodySender;
use crate::forward::validate::RefusedHost;
use crate::forward::BoxError;
use crate::meta::ErrorType;
use crate::shutdown::Watch;

/// How long a closing connection's further bytes are read and discarded after the last
/// answer when the client may still be sending, so that closing with unread data (a TCP
/// reset) does not destroy the answer (RFC 9112 §9.6).
const LINGER: Duration = Duration::from_secs(2);

/// The connection between exchanges.
struct Conn {
    /// `None` while a request body holds it.
    read: Option<BoxRead>,
    write: BoxWrite,
    /// Bytes read past the last message (pipelined), owned here only between exchanges.
    buf: BytesMut,
    /// The client may have sent bytes that will not be read (a body left unread): closing
    /// lingers so that they do not turn the close into a reset.
    unread: bool,
    /// The client ended its stream after pipelining requests (a half-close): they are still
    /// answered.
    ended: bool,
    /// Where the exchanges' 1xx heads come from; made at the first HTTP/1.1 request.
    relayed: Option<Relayed>,
}

/// A parsed request head.
struct Parsed {
    parts: http::request::Parts,
    head: RequestHead,
}

/// How reading a head ended without one.
enum NoHead {
    /// End of stream, an error, or shutdown before the head's first byte.
    Closed,
    Refused(HeadError),
}

/// What the connection does after an exchange.
enum Next {
    KeepAlive,
    Close,
    Upgraded,
}

/// Serves one client connection until it closes, is upgraded, or shutdown winds it down
/// (an idle connection closes at once, a busy one after the response in flight). `B` is the
/// request body type the service takes: a [`RecvBody`] or, for a request without a body, its
/// default (empty). When `io` enforces the connection's head limits
/// ([`HeadGuard`](crate::forward::head::HeadGuard)), `limits.max_head_bytes` should sit above
/// the guard's (a backstop, as hyper's limit was), so that an oversized head gets the guard's
/// answer (`request_head_too_large`) on either path.
///
/// Not itself `async`: the returned future holds the connection's two sides, not `io` as well
/// (the connection's task is sized by this future; see `app`'s `future_sizes` test).
pub fn serve_h1<'a, I, S, B, RB>(
    io: I,
    service: S,
    watch: &'a Watch,
    limits: Limits,
    pool: &'a HeadPool,
) -> impl Future<Output = ()> + 'a
where
    I: AsyncRead + AsyncWrite + Send + 'static,
    S: hyper::service::Service<Request<B>, Response = Response<RB>> + 'a,
    S::Error: Into<BoxError>,
    B: From<RecvBody> + Default + 'a,
    RB: Body<Data = Bytes> + 'a,
    RB::Error: Into<BoxError>,
{
    let (read, write) = tokio::io::split(io);
    let conn = Conn {
        read: Some(Box::pin(read)),
        write: Box::pin(write),
        buf: BytesMut::new(),
        unread: false,
        ended: false,
        relayed: None,
    };
    serve(conn, service, watch, limits, pool)
}

/// The connection's loop. An `async` block rather than an `async fn`, which would keep its
/// arguments twice (as passed, and as moved into its body).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
fn serve<'a, S, B, RB>(
    mut conn: Conn,
    service: S,
    watch: &'a Watch,
    limits: Limits,
    pool: &'a HeadPool,
) -> impl Future<Output = ()> + 'a
where
    S: hyper::service::Service<Request<B>, Response = Response<RB>> + 'a,
    S::Error: Into<BoxError>,
    B: From<RecvBody> + Default + 'a,
    RB: Body<Data = Bytes> + 'a,
    RB::Error: Into<BoxError>,
{
    async move {
        let mut signaled = std::pin::pin!(watch.signaled());
        let mut refused = None;
        loop {
            let parsed = match read_head(&mut conn, signaled.as_mut(), &limits, pool).await {
                Ok(parsed) => parsed,
                Err(NoHead::Closed) => break,
                Err(NoHead::Refused(error)) => {
                    refused = Some(error);
                    break;
                }
            };
            let (request, mut exchange) = begin(&mut conn, parsed, &limits);
            // Each value lives in the narrowest scope, which is what lets the compiler lay the
            // phases of an exchange over each other in the connection's future: the call's future
            // only until the response head, the response's body in its place after.
            let head;
            let body = std::pin::pin!({
                let response = {
                    let call = std::pin::pin!(service.call(request));
                    let watching = Watching {
                        returned: &mut exchange.returned,
                        pool,
                        limit: limits.max_head_bytes,
                    };
                    respond(call, &mut conn, watching).await
                };
                let Ok(response) = response else {
                    break;
                };
                let (parts, body) = response.into_parts();
                head = response_head(&mut conn, parts, &body, &exchange, watch);
                body
            });
            match finish(&mut conn, head, body, exchange).await {
                Next::KeepAlive if !watch.is_signaled() => {}
                Next::KeepAlive | Next::Close => break,
                Next::Upgraded => return,
            }
        }
        if let Some(error) = refused {
            refuse(&mut conn, error).await;
        }
        close(conn).await;
    }
}

/// Reads and parses the next head: first from the bytes left past the last message, then from
/// the connection. Shutdown ends the wait while none of the head has arrived.
async fn read_head(
    conn: &mut Conn,
    mut signaled: Pin<&mut impl Future<Output = ()>>,
    limits: &Limits,
    pool: &HeadPool,
) -> Result<Parsed, NoHead> {
    let Some(read) = conn.read.as_mut() else {
        return Err(NoHead::Closed);
    };
    let mut lent: Option<HeadBuf> = None;
    if !conn.buf.is_empty() {
        // Pipelined: parsed where it is; only an unfinished head moves to a lent buffer.
        let mut head = pool.take();
        let storage: &mut HeadStorage = &mut head;
        let parsed = parse(&conn.buf, &mut storage.fields, limits).map_err(NoHead::Refused)?;
        if let Some(parsed) = parsed {
            conn.buf.advance(parsed.head.end);
            if conn.buf.is_empty() {
                conn.buf = BytesMut::new();
            }
            return Ok(parsed);
        }
        head.bytes.extend_from_slice(&conn.buf);
        conn.buf = BytesMut::new();
        lent = Some(head);
    }
    loop {
        let read = std::future::poll_fn(|cx| {
            if lent.is_none() && signaled.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(0));
            }
            pool.poll_read(cx, read, &mut lent)
        });
        let (Ok(1..), Some(head)) = (read.await, lent.as_mut()) else {
            return Err(NoHead::Closed);
        };
        let storage: &mut HeadStorage = head;
        let parsed = parse(&storage.bytes, &mut storage.fields, limits).map_err(NoHead::Refused)?;
        if let Some(parsed) = parsed {
            conn.buf = storage.rest_after(parsed.head.end);
            // The lent buffer goes back to the pool here.
            return Ok(parsed);
        }
    }
}

/// A complete head at the start of `bytes`: its parts, which keep a copy of only the head's
/// bytes (not the buffer it was read into).
fn parse(
    bytes: &[u8],
    fields: &mut Vec<Field>,
    limits: &Limits,
) -> Result<Option<Parsed>, HeadError> {
    let Some(head) = parse_request_deferring_host(bytes, limits, fields)? else {
        return Ok(None);
    };
    let copy = Bytes::copy_from_slice(&bytes[..head.end]);
    let mut parts = request_parts(copy, &head, fields)?;
    if let Some(error) = head.host_error.as_ref().and_then(HeadError::host_error) {
        // Answered, counted and traced by the stack, as on the hyper path.
        parts.extensions.insert(RefusedHost(error));
    }
    Ok(Some(Parsed { parts, head }))
}

/// What an exchange keeps of its request while the service answers it: little, since the
/// connection's future holds it.
struct Exchange {
    head: bool,
    connect: bool,
    version: Version,
    /// The request's `Connection` (and version) let the connection persist.
    keep_alive: bool,
    /// Where the read side comes back from the request's body.
    returned: Option<oneshot::Receiver<Returned>>,
    upgrade: Option<UpgradeSender>,
}

/// Turns a parsed head into the request for the service (its body attached, the 1xx relay and
/// the upgrade hand-off in its extensions).
fn begin<B: From<RecvBody> + Default>(
    conn: &mut Conn,
    parsed: Parsed,
    limits: &Limits,
) -> (Request<B>, Exchange) {
    let Parsed { mut parts, head } = parsed;
    let (body, returned) = request_body_of(conn, request_body(&head), limits);
    // No 1xx to an HTTP/1.0 client (RFC 9110 §15.2).
    if head.version == Version::Http11 {
        let relayed = conn.relayed.get_or_insert_with(Relayed::default);
        parts.extensions.insert(relayed.begin());
    }
    let connect = head.method == Method::Connect;
    let upgrade = (connect || head.connection.upgrade).then(|| {
        let (sender, on_upgrade) = pending();
        parts.extensions.insert(on_upgrade);
        sender
    });
    let exchange = Exchange {
        head: head.method == Method::Head,
        connect,
        version: head.version,
        keep_alive: head.connection.keep_alive,
        returned,
        upgrade,
    };
    (Request::from_parts(parts, body), exchange)
}

/// The response head to write, after the 1xx heads still queued.
struct ResponseHead {
    out: BytesMut,
    /// A 101, or a 2xx to CONNECT: the connection is handed over after the head.
    switch: bool,
    framing: OutFraming,
    keep_alive: bool,
}

/// Serializes the final head, and decides whether the connection persists (RFC 9112 §9.3).
fn response_head<RB: Body>(
    conn: &mut Conn,
    mut parts: http::response::Parts,
    body: &RB,
    exchange: &Exchange,
    watch: &Watch,
) -> ResponseHead {
    // Interim heads the service relayed as it answered leave before the final one.
    let mut out = BytesMut::new();
    if let Some(relayed) = conn.relayed.as_mut() {
        while let Some(head) = relayed.try_recv() {
            out.extend_from_slice(&head);
        }
        relayed.end();
    }
    let status = parts.status;
    if status == StatusCode::SWITCHING_PROTOCOLS || (exchange.connect && status.is_success()) {
        write_response_head(&parts, OutFraming::None, &mut out);
        let (framing, keep_alive) = (OutFraming::None, false);
        return ResponseHead {
            out,
            switch: true,
            framing,
            keep_alive,
        };
    }
    let facts = RequestFacts {
        head: exchange.head,
        connect: exchange.connect,
        http10: exchange.version == Version::Http10,
    };
    let framing = response_framing(&parts, &body.size_hint(), facts);
    let keep_alive = exchange.keep_alive
        && framing != OutFraming::Close
        && !connection_close(&parts.headers)
        && !watch.is_signaled();
    mark_persistence(&mut parts.headers, exchange.version, keep_alive);
    write_response_head(&parts, framing, &mut out);
    ResponseHead {
        out,
        switch: false,
        framing,
        keep_alive,
    }
}

/// Writes the response, or hands the connection over.
async fn finish<RB>(
    conn: &mut Conn,
    head: ResponseHead,
    body: Pin<&mut RB>,
    exchange: Exchange,
) -> Next
where
    RB: Body<Data = Bytes>,
    RB::Error: Into<BoxError>,
{
    if head.switch {
        return hand_over(conn, head.out, exchange.returned, exchange.upgrade).await;
    }
    // The head leaves with the body's first frame when that is ready at once.
    let mut sender = BodySender::new(head.out.freeze(), body, head.framing);
    let sent = std::future::poll_fn(|cx| sender.poll_send(cx, conn.write.as_mut())).await;
    let reusable = take_back(conn, exchange.returned);
    if sent.is_err() || !head.keep_alive || !reusable {
        return Next::Close;
    }
    Next::KeepAlive
}

/// The request's body, and where its read side comes back; without a body the read side stays.
fn request_body_of<B: From<RecvBody> + Default>(
    conn: &mut Conn,
    framing: BodyFraming,
    limits: &Limits,
) -> (B, Option<oneshot::Receiver<Returned>>) {
    let read = match (framing, conn.read.take()) {
        (BodyFraming::None, read) | (_, read @ None) => {
            conn.read = read;
            return (B::default(), None);
        }
        (_, Some(read)) => read,
    };
    let (done, returned) = oneshot::channel();
    let buf = std::mem::take(&mut conn.buf);
    let body = RecvBody::new(framing, read, buf, done).max_trailer_bytes(limits.max_head_bytes);
    (B::from(body), Some(returned))
}

/// Takes the read side back from the request's body if it came back: whether it stands at the
/// next message (the body was read to its end). Otherwise (the body is still held, failed, or
/// was dropped early) the next request's start is unknown and the connection must close.
fn take_back(conn: &mut Conn, returned: Option<oneshot::Receiver<Returned>>) -> bool {
    let Some(mut returned) = returned else {
        // No body, or its read side came back while the response was awaited.
        return conn.read.is_some() && !conn.unread;
    };
    let Ok(Returned {
        read,
        buf,
        complete,
    }) = returned.try_recv()
    else {
        return false;
    };
    conn.read = Some(read);
    conn.buf = buf;
    conn.unread |= !complete;
    complete
}

/// Awaits the service's response, writing the 1xx heads it relays before it (those still
/// queued when it comes leave with it, see [`finish`]). A client that goes away meanwhile (end
/// of stream with no request pipelined, as hyper's server without half-close) cancels the
/// call: `Err`, and the connection closes.
async fn respond<F, R, E>(
    mut call: Pin<&mut F>,
    conn: &mut Conn,
    mut client: Watching<'_>,
) -> Result<Response<R>, ()>
where
    F: Future<Output = Result<Response<R>, E>>,
    E: Into<BoxError>,
{
    let mut watching = true;
    let write = &mut conn.write;
    let mut relayed = conn.relayed.as_mut();
    let response = loop {
        let relaying = relayed.is_some();
        // Only the head leaves the `select!`: nothing else is held while it is written.
        let head = tokio::select! {
            biased;
            head = next_head(&mut relayed), if relaying => head,
            response = call.as_mut() => break response,
            gone = client.gone(
                &mut conn.read,
                &mut conn.buf,
                &mut conn.unread,
                &mut conn.ended,
            ), if watching => match gone {
                true => return Err(()),
                false => {
                    watching = false;
                    continue;
                }
            },
        };
        match head {
            Some(head) => write_informational(write, &head).await?,
            None => relayed = None,
        }
    };
    response.map_err(|error| {
        tracing::debug!(error = %error.into(), "the service failed a request; closing");
    })
}

async fn next_head(relayed: &mut Option<&mut Relayed>) -> Option<Bytes> {
    match relayed {
        Some(relayed) => relayed.recv().await,
        None => None,
    }
}

/// Watches the client while a response is awaited: reads ahead (into a lent buffer, kept only
/// if something arrived) to see the end of its stream.
struct Watching<'a> {
    /// Where the read side comes back from the request's body.
    returned: &'a mut Option<oneshot::Receiver<Returned>>,
    pool: &'a HeadPool,
    /// The most bytes read ahead (pipelined requests, early tunnel bytes).
    limit: usize,
}

impl Watching<'_> {
    /// `true` once the client went away; `false` when it can no longer be watched (its body
    /// was not read to its end, it ended its stream after pipelining requests, or enough is
    /// read ahead). Cancel-safe: what a read returns is in `buf` before the next await.
    async fn gone(
        &mut self,
        read: &mut Option<BoxRead>,
        buf: &mut BytesMut,
        unread: &mut bool,
        ended: &mut bool,
    ) -> bool {
        if *ended {
            return false;
        }
        if read.is_none() {
            let Some(returned) = self.returned.as_mut() else {
                return false;
            };
            let back = returned.await;
            *self.returned = None;
            let Ok(back) = back else {
                return false;
            };
            (*read, *buf) = (Some(back.read), back.buf);
            *unread |= !back.complete;
            if !back.complete {
                return false;
            }
        }
        let Some(read) = read.as_mut() else {
            return false;
        };
        while buf.len() < self.limit {
            let pipelined = !buf.is_empty();
            let ahead = std::future::poll_fn(|cx| poll_ahead(cx, read, self.pool, buf)).await;
            match ahead {
                Ok(0) => {
                    *ended = true;
                    return !pipelined;
                }
                Err(_) => return true,
                Ok(_) => {}
            }
        }
        false
    }
}

/// Reads what the client sent ahead into `buf`, through a buffer lent for the attempt.
fn poll_ahead(
    cx: &mut Context<'_>,
    read: &mut BoxRead,
    pool: &HeadPool,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let mut lent = None;
    let result = pool.poll_read(cx, read, &mut lent);
    if let (Poll::Ready(Ok(1..)), Some(lent)) = (&result, &lent) {
        buf.extend_from_slice(&lent.bytes);
    }
    result
}

async fn write_informational(write: &mut BoxWrite, head: &[u8]) -> Result<(), ()> {
    write.write_all(head).await.map_err(drop)?;
    write.flush().await.map_err(drop)
}

/// Writes a 101 (or a 2xx to CONNECT), `head`, and hands the connection to the request's
/// upgrade.
async fn hand_over(
    conn: &mut Conn,
    head: BytesMut,
    returned: Option<oneshot::Receiver<Returned>>,
    upgrade: Option<UpgradeSender>,
) -> Next {
    let (Some(upgrade), true) = (upgrade, take_back(conn, returned)) else {
        // A switch the request did not ask for, or a body whose end is unknown.
        return Next::Close;
    };
    let Some(read) = conn.read.take() else {
        return Next::Close;
    };
    if conn.write.write_all(&head).await.is_err() || conn.write.flush().await.is_err() {
        return Next::Close;
    }
    let write = std::mem::replace(&mut conn.write, Box::pin(tokio::io::sink()));
    let upgraded = Upgraded {
        read,
        write,
        prefix: std::mem::take(&mut conn.buf).freeze(),
    };
    match upgrade.send(upgraded) {
        Ok(()) => Next::Upgraded,
        // Nobody waits for the connection any more: close it.
        Err(Upgraded { write, .. }) => {
            conn.write = write;
            Next::Close
        }
    }
}

/// Tells the client whether the connection persists where its version would not assume it:
/// `close` to an HTTP/1.1 client, `keep-alive` to an HTTP/1.0 one (RFC 9112 §9.3, §C.2.2).
fn mark_persistence(headers: &mut http::HeaderMap, version: Version, keep_alive: bool) {
    match (version, keep_alive) {
        (Version::Http11, false) if !connection_close(headers) => {
            headers.append(CONNECTION, HeaderValue::from_static("close"));
        }
        (Version::Http10, true) if !headers.contains_key(CONNECTION) => {
            headers.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        }
        _ => {}
    }
}

/// Whether `Connection` holds `close`.
fn connection_close(headers: &http::HeaderMap) -> bool {
    headers.get_all(CONNECTION).iter().any(|value| {
        value
            .as_bytes()
            .split(|b| *b == b',')
            .any(|option| option.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

/// Answers a refused head with its status and `meshtrace-proxy-error`; the caller closes.
async fn refuse(conn: &mut Conn, error: HeadError) {
    let mut answer = BytesMut::new();
    write_status_line(error.status(), &mut answer);
    answer.extend_from_slice(b"\r\nmeshtrace-proxy-error: ");
    answer.extend_from_slice(error.error_type().as_bytes());
    answer.extend_from_slice(b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    tracing::debug!(%error, "refusing a request head");
    // The rest of what the client sends is never read.
    conn.unread = conn.write.write_all(&answer).await.is_ok();
}

/// Closes the connection: the write side first, so the client sees the end of the last
/// response; then, if the client may still be sending, its bytes are read and discarded for a
/// while, because closing a socket with unread bytes sends a reset that can destroy the
/// response before the client read it (RFC 9112 §9.6).
async fn close(mut conn: Conn) {
    if conn.write.shutdown().await.is_err() {
        return;
    }
    let Some(read) = conn.read.as_mut() else {
        return;
    };
    if conn.unread || !conn.buf.is_empty() {
        let mut discard = vec![0; 1024];
        let _ = tokio::time::timeout(LINGER, async {
            while matches!(read.read(&mut discard).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

#[cfg(test)]
mod tests;
