//! Body wrappers: count the bytes that actually flow and end a span at the body's real end
//! (last data frame, trailers, error or drop), not when the response head is sent.
//!
//! Unsampled requests use the pass-through form, which adds no work beyond a branch.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::context::Recording;
use super::correlate::InFlight;
use super::record::{End, SpanGuard};

pin_project! {
    /// A request or response body seen by a trace layer. `Unpin` when `B` is; trailers,
    /// `size_hint` and `is_end_stream` pass through unchanged.
    #[derive(Debug)]
    pub struct TracedBody<B> {
        #[pin]
        inner: B,
        tap: Tap,
        // An inbound request stays registered for correlation until its response body ends.
        in_flight: InFlight,
    }
}

#[derive(Debug)]
enum Tap {
    Pass,
    /// A sampled request body: count bytes into the shared recording.
    CountRequest(Arc<Recording>),
    /// A sampled response body: count bytes, end the span when the body ends.
    FinishSpan(SpanGuard),
}

impl<B> TracedBody<B> {
    /// A body that is not traced (unsampled requests, responses made elsewhere).
    pub fn passthrough(inner: B) -> TracedBody<B> {
        TracedBody {
            inner,
            tap: Tap::Pass,
            in_flight: InFlight::none(),
        }
    }

    pub(crate) fn counting_request(inner: B, recording: Option<Arc<Recording>>) -> TracedBody<B> {
        TracedBody {
            inner,
            tap: recording.map_or(Tap::Pass, Tap::CountRequest),
            in_flight: InFlight::none(),
        }
    }

    pub fn into_inner(self) -> B {
        self.inner
    }

    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B: Body> TracedBody<B> {
    /// A response body that ends `guard`'s span; an already-finished body ends it now.
    pub(crate) fn finishing_span(inner: B, guard: Option<SpanGuard>) -> TracedBody<B> {
        let tap = match guard {
            Some(mut guard) => {
                if inner.is_end_stream() {
                    guard.finish(End::Complete);
                    Tap::Pass
                } else {
                    Tap::FinishSpan(guard)
                }
            }
            None => Tap::Pass,
        };
        TracedBody {
            inner,
            tap,
            in_flight: InFlight::none(),
        }
    }

    /// This response body keeps `in_flight` registered until it ends (an already-finished
    /// body releases it now).
    pub(crate) fn holding(mut self, in_flight: InFlight) -> TracedBody<B> {
        if in_flight.is_tracked() && !self.inner.is_end_stream() {
            self.in_flight = in_flight;
        }
        self
    }
}

impl<B> Default for TracedBody<B>
where
    B: Default,
{
    fn default() -> Self {
        TracedBody::passthrough(B::default())
    }
}

/// Whether a body error is the peer's `RST_STREAM(CANCEL)` (hyper's error, or one boxed, with
/// an h2 error of reason `CANCEL` in its chain). Only called when a traced body fails.
fn is_cancel_reset<E: 'static>(error: &E) -> bool {
    use std::error::Error;
    let any = error as &dyn std::any::Any;
    let error: &(dyn Error + 'static) = if let Some(e) = any.downcast_ref::<hyper::Error>() {
        e
    } else if let Some(e) = any.downcast_ref::<Box<dyn Error + Send + Sync>>() {
        e.as_ref()
    } else if let Some(e) = any.downcast_ref::<h2::Error>() {
        e
    } else {
        return false;
    };
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::CANCEL);
        }
        next = e.source();
    }
    false
}

impl<B> Body for TracedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: 'static,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        if let (Tap::Pass, false) = (&this.tap, this.in_flight.is_tracked()) {
            return this.inner.poll_frame(cx);
        }
        if let Tap::FinishSpan(_) = this.tap {
            super::clock::start_body_poll();
        }
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match this.tap {
            Tap::Pass => {}
            Tap::CountRequest(recording) => {
                if let Some(data) = frame.as_ref().and_then(|f| f.as_ref().ok()?.data_ref()) {
                    recording
                        .request_body_bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Tap::FinishSpan(guard) => {
                match &frame {
                    Some(Ok(frame)) => {
                        if let Some(span) = guard.span_mut() {
                            if let Some(data) = frame.data_ref() {
                                span.add_response_bytes(data.len());
                            } else if let Some(trailers) = frame.trailers_ref() {
                                span.on_trailers(trailers);
                            }
                        }
                        if this.inner.is_end_stream() {
                            guard.finish_body();
                        }
                    }
                    Some(Err(error)) => guard.finish(if is_cancel_reset(error) {
                        End::ResetCancel
                    } else {
                        End::BodyError
                    }),
                    None => guard.finish_body(),
                }
                if guard.is_finished() {
                    *this.tap = Tap::Pass;
                }
            }
        }
        if this.in_flight.is_tracked()
            && (!matches!(frame, Some(Ok(_))) || this.inner.is_end_stream())
        {
            *this.in_flight = InFlight::none();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
