//! TEMPORARY stand-ins for the lead's `h1::fields` / `h1::exchange` and helper C's
//! `h1::send`, with the signatures of the shared plan, until their branches land. Deleted on
//! merge; nothing outside `h1::server` uses them.
#![allow(dead_code)]

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http_body::{Body, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::forward::h1::body::BoxRead;
use crate::forward::h1::error::HeadError;
use crate::forward::h1::head::{Field, Method, RequestHead, Version};

pub type BoxWrite = Pin<Box<dyn AsyncWrite + Send>>;

pub struct Upgraded {
    pub read: BoxRead,
    pub write: BoxWrite,
    pub prefix: Bytes,
}

pub struct UpgradeSender(oneshot::Sender<Upgraded>);

impl UpgradeSender {
    pub fn send(self, upgraded: Upgraded) {
        let _ = self.0.send(upgraded);
    }
}

#[derive(Clone)]
pub struct OnUpgrade(pub Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

pub fn pending() -> (UpgradeSender, OnUpgrade) {
    let (tx, rx) = oneshot::channel();
    (UpgradeSender(tx), OnUpgrade(Arc::new(Mutex::new(Some(rx)))))
}

#[derive(Clone)]
pub struct Informational(pub mpsc::UnboundedSender<Bytes>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutFraming {
    None,
    Length(u64),
    Chunked,
    Close,
}

#[derive(Clone, Copy, Debug)]
pub struct RequestFacts {
    pub method: Method,
    pub version: Version,
}

pub fn request_parts(
    bytes: Bytes,
    head: &RequestHead,
    fields: &[Field],
) -> Result<http::request::Parts, HeadError> {
    let method =
        http::Method::from_bytes(head.method_span.get(&bytes)).map_err(|_| HeadError::StartLine)?;
    let uri = http::Uri::try_from(head.target.get(&bytes)).map_err(|_| HeadError::Target)?;
    let version = match head.version {
        Version::Http10 => http::Version::HTTP_10,
        Version::Http11 => http::Version::HTTP_11,
    };
    let mut builder = http::Request::builder()
        .method(method)
        .uri(uri)
        .version(version);
    for field in fields {
        builder = builder.header(field.name.get(&bytes), field.value.get(&bytes));
    }
    let request = builder.body(()).map_err(|_| HeadError::FieldSyntax)?;
    Ok(request.into_parts().0)
}

pub fn response_framing(
    parts: &http::response::Parts,
    hint: &SizeHint,
    request: RequestFacts,
) -> OutFraming {
    let status = parts.status.as_u16();
    if request.method == Method::Head
        || (100..200).contains(&status)
        || status == 204
        || status == 304
    {
        return OutFraming::None;
    }
    if let Some(length) = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
    {
        return OutFraming::Length(length);
    }
    match hint.exact() {
        Some(0) => OutFraming::Length(0),
        Some(n) => OutFraming::Length(n),
        None if request.version == Version::Http11 => OutFraming::Chunked,
        None => OutFraming::Close,
    }
}

pub fn write_response_head(parts: &http::response::Parts, framing: OutFraming, out: &mut BytesMut) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        OutFraming::Length(n) => {
            out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
        }
        OutFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        OutFraming::None => {
            if let Some(length) = parts.headers.get(CONTENT_LENGTH) {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(length.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        OutFraming::Close => {}
    }
    out.extend_from_slice(b"\r\n");
}

pub fn is_close(value: &HeaderValue) -> bool {
    value
        .as_bytes()
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
}

pub fn connection_close(headers: &http::HeaderMap) -> bool {
    headers.get_all(CONNECTION).iter().any(is_close)
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("body: {0}")]
    Body(crate::forward::BoxError),
    #[error("io: {0}")]
    Io(#[from] io::Error),
}

pub async fn send_body<B>(
    write: &mut BoxWrite,
    body: B,
    framing: OutFraming,
) -> Result<(), SendError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<crate::forward::BoxError>,
{
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| SendError::Body(e.into()))?;
        if let Some(data) = frame.data_ref() {
            if framing == OutFraming::Chunked && !data.is_empty() {
                write
                    .write_all(format!("{:x}\r\n", data.len()).as_bytes())
                    .await?;
                write.write_all(data).await?;
                write.write_all(b"\r\n").await?;
            } else if framing != OutFraming::None {
                write.write_all(data).await?;
            }
        }
    }
    if framing == OutFraming::Chunked {
        write.write_all(b"0\r\n\r\n").await?;
    }
    write.flush().await?;
    Ok(())
}
