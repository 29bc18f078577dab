//! The client's request body as the upstream client sends it. Its errors (an invalid chunked
//! body, a client gone mid-body) are marked as the client's, so that a broken request is
//! answered 400 and recorded as the client's failure rather than blamed on the upstream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::h1::body::BodyError;
use super::BoxError;

pin_project_lite::pin_project! {
    /// A request body whose errors are [`ClientBodyError`]s.
    #[derive(Debug)]
    pub struct ClientBody<B> {
        #[pin]
        inner: B,
    }
}

impl<B> ClientBody<B> {
    pub fn new(inner: B) -> Self {
        ClientBody { inner }
    }
}

/// Reading the client's request body failed; the upstream client reports it as the cause of
/// its own error, where [`super::ForwardError::upstream`] finds it.
#[derive(Debug, thiserror::Error)]
#[error("reading the client's request body failed: {0}")]
pub struct ClientBodyError(#[source] pub BoxError);

impl ClientBodyError {
    /// Whether the client stopped sending (closed or reset its connection) rather than sent a
    /// body that breaks its framing.
    pub fn is_incomplete(&self) -> bool {
        let hyper = self
            .0
            .downcast_ref::<hyper::Error>()
            .is_some_and(|error| error.is_incomplete_message() || error.is_canceled());
        let codec = self
            .0
            .downcast_ref::<BodyError>()
            .is_some_and(|error| matches!(error, BodyError::Incomplete | BodyError::Io(_)));
        hyper || codec
    }
}

impl<B> Body for ClientBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        self.project()
            .inner
            .poll_frame(cx)
            .map_err(|error| ClientBodyError(error.into()))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
