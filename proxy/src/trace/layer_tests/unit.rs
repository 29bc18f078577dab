//! The layers without sockets: what they do to requests and bodies directly.

use super::*;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Layer, Service, ServiceExt};

#[tokio::test]
async fn client_layer_without_context_forwards_as_is() {
    let (sink, queue) = SpanSink::bounded(8);
    let tracer = Tracer::new(&args(1.0), sink);
    let svc =
        tracer
            .client_layer()
            .layer(tower::service_fn(|req: Request<Empty<Bytes>>| async move {
                let mut rsp = Response::new(Empty::<Bytes>::new());
                *rsp.headers_mut() = req.headers().clone();
                Ok::<_, Infallible>(rsp)
            }));
    let req = Request::builder()
        .header("traceparent", "junk")
        .header("b3", "1")
        .body(Empty::new())
        .unwrap();
    let rsp = svc.oneshot(req).await.unwrap();
    assert_eq!(rsp.headers()["traceparent"], "junk");
    assert_eq!(rsp.headers()["b3"], "1");
    assert!(queue.rx.try_recv().is_err());
}

/// A body that yields one data frame and then trailers.
struct WithTrailers {
    step: u8,
}

impl http_body::Body for WithTrailers {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.step += 1;
        Poll::Ready(match self.step {
            1 => Some(Ok(Frame::data(Bytes::from_static(b"abc")))),
            2 => {
                let mut t = HeaderMap::new();
                t.insert("grpc-status", HeaderValue::from_static("0"));
                Some(Ok(Frame::trailers(t)))
            }
            _ => None,
        })
    }

    fn is_end_stream(&self) -> bool {
        self.step >= 2
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(3)
    }
}

#[tokio::test]
async fn bodies_pass_trailers_and_hints_through_and_record_grpc_ok() {
    let (sink, queue) = SpanSink::bounded(8);
    let tracer = Tracer::new(&args(1.0), sink);
    let inner = tracer.client_layer().layer(tower::service_fn(
        |_req: Request<TracedBody<Empty<Bytes>>>| async move {
            Ok::<_, Infallible>(Response::new(WithTrailers { step: 0 }))
        },
    ));
    let mut svc = tracer.server_layer().layer(inner);
    let req = Request::builder()
        .method("POST")
        .uri("/grpc.Svc/Ok")
        .header("content-type", "application/grpc")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let rsp = svc.ready().await.unwrap().call(req).await.unwrap();
    assert!(
        !rsp.headers().contains_key("traceresponse"),
        "no sample header"
    );
    let body = rsp.into_body();
    assert_eq!(http_body::Body::size_hint(&body).exact(), Some(3));
    assert!(!http_body::Body::is_end_stream(&body));
    let collected = body.collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    for _ in 0..2 {
        let span = queue.recv().await.unwrap();
        assert_eq!(int(&span, "rpc.grpc.status_code"), Some(0));
        assert_eq!(int(&span, "http.response.body.size"), Some(3));
        assert_eq!(span.status, SpanStatus::Unset);
    }
}

#[test]
fn traced_bodies_are_unpin_send_and_static() {
    fn check<T: Unpin + Send + 'static>() {}
    check::<TracedBody<Incoming>>();
    check::<TracedBody<TracedBody<Full<Bytes>>>>();
}

#[tokio::test]
async fn dropped_response_future_ends_spans_as_cancelled() {
    let (sink, queue) = SpanSink::bounded(8);
    let tracer = Tracer::new(&args(1.0), sink);
    let inner = tracer.client_layer().layer(tower::service_fn(
        |_req: Request<TracedBody<Empty<Bytes>>>| async move {
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        },
    ));
    let mut svc = tracer.server_layer().layer(inner);
    let req = Request::new(Empty::<Bytes>::new());
    let fut = svc.ready().await.unwrap().call(req);
    drop(fut);
    for _ in 0..2 {
        let span = queue.recv().await.unwrap();
        assert_eq!(text(&span, "error.type").as_deref(), Some("cancelled"));
        assert_eq!(int(&span, "http.response.status_code"), None);
    }
}
