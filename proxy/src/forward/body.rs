//! The bodies the service stack carries, whichever codec read them: a request's body comes from
//! hyper (h2, or HTTP/1 on the hyper path) or from the HTTP/1 codec's server; a response's from
//! hyper's client, the codec's client, or the proxy itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::h1::RecvBody;
use super::BoxError;

/// A message body read by hyper or by the HTTP/1 codec, or none.
#[derive(Debug, Default)]
pub enum ProxyBody {
    Hyper(Incoming),
    H1(RecvBody),
    #[default]
    Empty,
}

impl From<Incoming> for ProxyBody {
    fn from(body: Incoming) -> Self {
        ProxyBody::Hyper(body)
    }
}

impl From<RecvBody> for ProxyBody {
    fn from(body: RecvBody) -> Self {
        ProxyBody::H1(body)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ProxyBody::H1(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ProxyBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Hyper(body) => body.is_end_stream(),
            ProxyBody::H1(body) => body.is_end_stream(),
            ProxyBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Hyper(body) => body.size_hint(),
            ProxyBody::H1(body) => body.size_hint(),
            ProxyBody::Empty => SizeHint::with_exact(0),
        }
    }
}
