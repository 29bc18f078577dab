//! An upstream HTTP/1 connection on the codec (issue 17): one request at a time, its head
//! written from the request's parts ([`fields::write_request_head`]: received fields leave as
//! they came), its body streamed by [`BodySender`] while the response head is read (full
//! duplex: an upstream may answer before the request body ends), interim (1xx) heads relayed,
//! the response body read by [`RecvBody`] straight from the connection.
//!
//! A connection holds no buffer while idle, nor while it waits for the response: the response
//! head is read into a buffer lent by the [`HeadPool`] once its first bytes arrive, a copy of
//! only the head's bytes goes with the response (its `RawHead`) and the buffer goes back to the
//! pool; the response body hands the read side back with nothing buffered. A connection can
//! carry another request ([`InFlight::try_idle`]) only when its request body was sent whole,
//! its response body read to the end, and both sides allow keep-alive; otherwise it is closed.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use http::header::{HeaderMap, CONNECTION};
use http::{Request, Response, StatusCode, Version};
use http_body::Body;
use tokio::io::ReadBuf;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::body::{RecvBody, Returned};
use super::exchange::{self, BoxRead, BoxWrite, Informational, Upgraded};
use super::fields;
use super::framing::{response_body, BodyFraming};
use super::head::{self, parse_response, Limits, ResponseHead};
use super::pool::{HeadBuf, HeadPool, HeadStorage};
use super::send::{BodySender, SendError};
use crate::forward::body::ProxyBody;
use crate::forward::connect::connect;
use crate::forward::error::ForwardError;
use crate::forward::expect::Interim;
use crate::forward::request_body::ClientBodyError;
use crate::forward::BoxError;

/// An idle upstream HTTP/1 connection.
pub struct Connection {
    read: BoxRead,
    write: BoxWrite,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

impl Connection {
    /// Opens a connection to `addr` (see [`connect`]).
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Connection, ForwardError> {
        let (read, write) = connect(addr, timeout).await?.into_split();
        Ok(Connection::new(Box::pin(read), Box::pin(write)))
    }

    pub fn new(read: BoxRead, write: BoxWrite) -> Connection {
        Connection { read, write }
    }

    /// Whether the idle connection can still carry a request: a look at the read side that
    /// never waits. The upstream closing it, an error, or bytes nobody asked for all make it
    /// unusable.
    pub fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        self.read
            .as_mut()
            .poll_read(&mut cx, &mut probe)
            .is_pending()
    }

    /// Sends `request` and reads the response head (relaying interim heads to the request's
    /// [`Informational`] and [`Interim`] extensions). The response's body reads from this
    /// connection; the [`InFlight`] gives the connection back once the exchange is over.
    /// A 101 (or a 2xx to CONNECT) hands the connection to the response's
    /// [`exchange::OnUpgrade`] instead. The response head is read into a buffer of `heads`.
    pub fn send<'a, B>(
        self,
        request: Request<B>,
        limits: &'a Limits,
        heads: &'a HeadPool,
    ) -> impl Future<Output = Result<(Response<ProxyBody>, InFlight), ForwardError>> + 'a
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let mut out = Outgoing::new(request);
        async move {
            let (response, after) = self.exchange(&mut out, limits, heads).await?;
            Ok((response, out.in_flight(after)))
        }
    }

    /// [`Connection::send`] of a request already made [`Outgoing`]; the request stays with the
    /// caller (one copy of it in the caller's future, not two), which turns the returned
    /// [`After`] into the connection's [`InFlight`] with [`Outgoing::in_flight`].
    pub async fn exchange<B>(
        mut self,
        out: &mut Outgoing<B>,
        limits: &Limits,
        heads: &HeadPool,
    ) -> Result<(Response<ProxyBody>, After), ForwardError>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let mut lent = None;
        let (head, sent) = self
            .exchange_head(&mut out.sender, limits, &out.interim, heads, &mut lent)
            .await?;
        let Some(lent) = lent else {
            // A parsed head was read into a lent buffer.
            return Err(ForwardError::Upstream(
                "response head without its buffer".into(),
            ));
        };
        self.response(head, lent, sent, out.exchange, limits)
    }

    /// Sends the request while reading the response, until the final response head arrived
    /// (in `lent`): that head, and whether the request was sent whole by then.
    async fn exchange_head<B>(
        &mut self,
        sender: &mut BodySender<B>,
        limits: &Limits,
        interim: &InterimTo,
        heads: &HeadPool,
        lent: &mut Option<HeadBuf>,
    ) -> Result<(ResponseHead, bool), ForwardError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let mut sent = false;
        let mut write_failed = false;
        poll_fn(|cx| {
            if !sent && !write_failed {
                match sender.poll_send(cx, self.write.as_mut()) {
                    Poll::Ready(Ok(())) => sent = true,
                    // The upstream may have answered and closed: its response still counts.
                    Poll::Ready(Err(SendError::Io(error))) => {
                        tracing::debug!(%error, "writing the request upstream failed");
                        write_failed = true;
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(send_failed(error))),
                    Poll::Pending => {}
                }
            }
            loop {
                let head = ready!(poll_head(cx, &mut self.read, heads, lent, limits))?;
                if !(100..200).contains(&head.status) || head.status == 101 {
                    return Poll::Ready(Ok((head, sent)));
                }
                if let Some(buf) = lent.as_mut() {
                    interim.relay(&buf.bytes, &head);
                    buf.bytes.drain(..head.end);
                }
            }
        })
        .await
    }

    /// The response for a final head, read into `lent` (which goes back to its pool here: the
    /// response keeps a copy of the head's bytes only, the body the bytes read past it); with
    /// what becomes of the connection.
    fn response(
        self,
        head: ResponseHead,
        lent: HeadBuf,
        sent: bool,
        exchange: Exchange,
        limits: &Limits,
    ) -> Result<(Response<ProxyBody>, After), ForwardError> {
        let Connection { read, write } = self;
        let storage: &HeadStorage = &lent;
        let head_bytes = Bytes::copy_from_slice(&storage.bytes[..head.end]);
        let mut parts = fields::response_parts(head_bytes, &head, &storage.fields)
            .map_err(|error| ForwardError::Upstream(error.into()))?;
        let buf = storage.rest_after(head.end);
        drop(lent);
        let switched = head.status == 101
            || (exchange.method == head::Method::Connect && (200..300).contains(&head.status));
        if switched {
            // The connection speaks another protocol now; a request body not sent yet is
            // abandoned (an upgrade or CONNECT request has none).
            let (handoff, on_upgrade) = exchange::pending();
            parts.extensions.insert(on_upgrade);
            let upgraded = Upgraded {
                read,
                write,
                prefix: buf.freeze(),
            };
            let _ = handoff.send(upgraded);
            let response = Response::from_parts(parts, ProxyBody::Empty);
            return Ok((response, After(Next::Ready(State::Done(None)))));
        }
        let framing = response_body(exchange.method, &head);
        let keep_alive = exchange.keep_alive
            && head.connection.keep_alive
            && framing != BodyFraming::CloseDelimited;
        if framing == BodyFraming::None {
            // Complete already. A request body still being sent is abandoned: the upstream
            // answered without it.
            let reusable = sent && keep_alive && buf.is_empty();
            let conn = reusable.then_some(Connection { read, write });
            let response = Response::from_parts(parts, ProxyBody::Empty);
            return Ok((response, After(Next::Ready(State::Done(conn)))));
        }
        let (done, returned) = oneshot::channel();
        let body = RecvBody::new(framing, read, buf, done).max_trailer_bytes(limits.max_head_bytes);
        let after = if sent {
            Next::Ready(State::Reading {
                returned,
                write,
                keep_alive,
            })
        } else {
            Next::SendRest {
                returned,
                write,
                keep_alive,
            }
        };
        Ok((
            Response::from_parts(parts, ProxyBody::H1(body)),
            After(after),
        ))
    }
}

/// What the request says about the exchange.
#[derive(Clone, Copy)]
struct Exchange {
    method: head::Method,
    /// The request lets the connection persist (RFC 9112 §9.3).
    keep_alive: bool,
}

/// Where interim responses go.
struct InterimTo {
    /// The client (a request that came through the codec's server).
    client: Option<Informational>,
    /// The `Expect: 100-continue` gate on the request body.
    gate: Option<Interim>,
}

impl InterimTo {
    /// Relays the interim `head` at the start of `buf`.
    fn relay(&self, buf: &[u8], head: &ResponseHead) {
        if let (Some(gate), Ok(status)) = (&self.gate, StatusCode::from_u16(head.status)) {
            gate.received(status);
        }
        if let Some(client) = &self.client {
            client.send(Bytes::copy_from_slice(&buf[head.start..head.end]));
        }
    }
}

/// A request ready to leave on an upstream connection: its head written (the request's parts,
/// with their `RawHead`, are gone), its body to stream.
pub struct Outgoing<B> {
    sender: BodySender<B>,
    interim: InterimTo,
    exchange: Exchange,
}

impl<B> Outgoing<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    pub fn new(request: Request<B>) -> Outgoing<B> {
        let (mut parts, body) = request.into_parts();
        let framing = fields::request_framing(&parts, &body.size_hint());
        let mut head = BytesMut::with_capacity(head_size(&parts));
        fields::write_request_head(&parts, framing, &mut head);
        let interim = InterimTo {
            client: parts.extensions.remove::<Informational>(),
            gate: parts.extensions.remove::<Interim>(),
        };
        let exchange = Exchange {
            method: codec_method(&parts.method),
            keep_alive: parts.version == Version::HTTP_11 && !asks_close(&parts.headers),
        };
        Outgoing {
            sender: BodySender::new(head.freeze(), body, framing),
            interim,
            exchange,
        }
    }

    /// The connection after its exchange's response head: what [`Connection::exchange`] said,
    /// with the rest of the request body sent by a task of its own when it was not sent yet.
    pub fn in_flight(self, after: After) -> InFlight {
        InFlight(match after.0 {
            Next::Ready(state) => state,
            Next::SendRest {
                returned,
                write,
                keep_alive,
            } => State::Sending(send_rest(self.sender, write, returned, keep_alive)),
        })
    }
}

/// What becomes of the connection after the response head (see [`Outgoing::in_flight`]).
pub struct After(Next);

enum Next {
    Ready(State),
    /// The request body is still being sent: a task finishes it.
    SendRest {
        returned: oneshot::Receiver<Returned>,
        write: BoxWrite,
        keep_alive: bool,
    },
}

/// A connection while its exchange is in flight (the response body is read, or the request body
/// still sent); it becomes an idle [`Connection`] again once both ended, when both sides allow.
#[derive(Debug)]
pub struct InFlight(State);

enum State {
    /// Over: the connection, if it can carry another request.
    Done(Option<Connection>),
    /// The request was sent; the response body is being read.
    Reading {
        returned: oneshot::Receiver<Returned>,
        write: BoxWrite,
        keep_alive: bool,
    },
    /// A task sends the rest of the request body.
    Sending(JoinHandle<Option<Connection>>),
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Done(Some(_)) => "Idle",
            State::Done(None) => "Closed",
            State::Reading { .. } => "Reading",
            State::Sending(_) => "Sending",
        })
    }
}

impl InFlight {
    /// Without waiting: `Ready(Some)` the connection is idle and reusable, `Ready(None)` it is
    /// closed, `Pending` its exchange is still going on.
    pub fn try_idle(&mut self) -> Poll<Option<Connection>> {
        match &mut self.0 {
            State::Done(conn) => Poll::Ready(conn.take()),
            State::Reading { returned, .. } => match returned.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => Poll::Pending,
                result => {
                    let state = std::mem::replace(&mut self.0, State::Done(None));
                    let State::Reading {
                        write, keep_alive, ..
                    } = state
                    else {
                        return Poll::Ready(None);
                    };
                    Poll::Ready(result.ok().and_then(|r| reusable(r, write, keep_alive)))
                }
            },
            State::Sending(task) if task.is_finished() => {
                let conn = task.now_or_never().and_then(Result::ok).flatten();
                self.0 = State::Done(None);
                Poll::Ready(conn)
            }
            State::Sending(_) => Poll::Pending,
        }
    }

    /// Waits for the exchange to end: the connection, if it can carry another request.
    pub async fn idle(self) -> Option<Connection> {
        match self.0 {
            State::Done(conn) => conn,
            State::Reading {
                returned,
                write,
                keep_alive,
            } => reusable(returned.await.ok()?, write, keep_alive),
            State::Sending(task) => task.await.ok().flatten(),
        }
    }
}

/// The connection after its response body ended, if it can carry another request: the body
/// was read to its end with nothing past it, and both sides allow keep-alive.
fn reusable(returned: Returned, write: BoxWrite, keep_alive: bool) -> Option<Connection> {
    (returned.complete && keep_alive && returned.buf.is_empty()).then(|| Connection {
        read: returned.read,
        write,
    })
}

/// Sends the rest of a request body after the response head arrived, on a task of its own (the
/// response body is read by whoever holds the response). If the response ends first, the rest
/// of the request body is abandoned and the connection closed.
fn send_rest<B>(
    mut sender: BodySender<B>,
    mut write: BoxWrite,
    mut returned: oneshot::Receiver<Returned>,
    keep_alive: bool,
) -> JoinHandle<Option<Connection>>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    tokio::spawn(async move {
        let sent = poll_fn(|cx| match sender.poll_send(cx, write.as_mut()) {
            Poll::Ready(result) => {
                if let Err(error) = &result {
                    tracing::debug!(%error, "sending the rest of the request upstream failed");
                }
                Poll::Ready(result.is_ok())
            }
            Poll::Pending if Pin::new(&mut returned).poll(cx).is_ready() => Poll::Ready(false),
            Poll::Pending => Poll::Pending,
        })
        .await;
        drop(sender);
        if !sent {
            return None;
        }
        reusable(returned.await.ok()?, write, keep_alive)
    })
}

/// Reads until a complete response head is buffered in `lent` (a buffer of `heads`, taken when
/// the head's first bytes arrive), which keeps what follows it.
fn poll_head(
    cx: &mut Context<'_>,
    read: &mut BoxRead,
    heads: &HeadPool,
    lent: &mut Option<HeadBuf>,
    limits: &Limits,
) -> Poll<Result<ResponseHead, ForwardError>> {
    loop {
        if let Some(buf) = lent.as_mut().filter(|buf| !buf.bytes.is_empty()) {
            let storage: &mut HeadStorage = buf;
            match parse_response(&storage.bytes, limits, &mut storage.fields) {
                Ok(Some(head)) => return Poll::Ready(Ok(head)),
                Ok(None) => {}
                // A head the codec refuses is the upstream's error: a 502, as with hyper.
                Err(error) => return Poll::Ready(Err(ForwardError::Upstream(error.into()))),
            }
        }
        let n = ready!(heads.poll_read(cx, read, lent)).map_err(io_failed)?;
        if n == 0 {
            let error: BoxError = if lent.as_ref().is_none_or(|buf| buf.bytes.is_empty()) {
                "the upstream closed the connection without a response".into()
            } else {
                "the upstream closed the connection within the response head".into()
            };
            return Poll::Ready(Err(ForwardError::Reset(error)));
        }
    }
}

/// The forwarding error for a request body that could not be sent.
fn send_failed(error: SendError) -> ForwardError {
    match error {
        SendError::Io(error) => io_failed(error),
        SendError::Body(source) => match source.downcast_ref::<ClientBodyError>() {
            Some(client) => ForwardError::ClientBody {
                incomplete: client.is_incomplete(),
                source,
            },
            None => ForwardError::Upstream(source),
        },
        // The body disagrees with its own Content-Length: the client's body broke its framing.
        SendError::TooShort { .. } => ForwardError::ClientBody {
            incomplete: true,
            source: error.into(),
        },
        SendError::TooLong(_) => ForwardError::ClientBody {
            incomplete: false,
            source: error.into(),
        },
    }
}

/// An I/O error on the upstream connection: a reset (the upstream went away) or other failure.
fn io_failed(error: io::Error) -> ForwardError {
    match error.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionAborted => ForwardError::Reset(error.into()),
        _ => ForwardError::Upstream(error.into()),
    }
}

fn codec_method(method: &http::Method) -> head::Method {
    match *method {
        http::Method::HEAD => head::Method::Head,
        http::Method::CONNECT => head::Method::Connect,
        http::Method::OPTIONS => head::Method::Options,
        _ => head::Method::Other,
    }
}

/// `Connection: close` (the hop-by-hop fields were removed before; this is what the stack
/// added).
fn asks_close(headers: &HeaderMap) -> bool {
    headers.get_all(CONNECTION).iter().any(|value| {
        value
            .as_bytes()
            .split(|b| *b == b',')
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

/// Room for the request head: its fields and target, plus the start line's rest.
fn head_size(parts: &http::request::Parts) -> usize {
    let fields: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let target = parts.uri.host().map_or(0, str::len)
        + parts
            .uri
            .path_and_query()
            .map_or(1, |target| target.as_str().len());
    fields + target + 64
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
