//! The outermost layer: counts every request by status class and its time to response headers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::Response;

use crate::metrics::DirectionMetrics;

/// Counts every request by status class and its time to response headers.
#[derive(Clone, Debug)]
pub struct RequestMetricsLayer {
    metrics: DirectionMetrics,
}

impl RequestMetricsLayer {
    pub fn new(metrics: DirectionMetrics) -> Self {
        RequestMetricsLayer { metrics }
    }
}

impl<S> tower::Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RequestMetrics<S> {
    inner: S,
    metrics: DirectionMetrics,
}

impl<S, Req, RB> tower::Service<Req> for RequestMetrics<S>
where
    S: tower::Service<Req, Response = Response<RB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RequestMetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        RequestMetricsFuture {
            inner: self.inner.call(request),
            metrics: Some(self.metrics.clone()),
            start: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct RequestMetricsFuture<F> {
        #[pin]
        inner: F,
        metrics: Option<DirectionMetrics>,
        start: Instant,
    }
}

impl<F, RB, E> Future for RequestMetricsFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let (Ok(response), Some(metrics)) = (&result, this.metrics.take()) {
            metrics.record_response(response.status(), this.start.elapsed());
        }
        Poll::Ready(result)
    }
}
