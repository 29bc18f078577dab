//! The demo's load: a steady few requests per second into the mesh, some forced into sampling
//! with `l5d-sample: 1`, counted by outcome.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use tokio::sync::watch;

/// Per-request deadline (backend-api-2's slow path is at most 300 ms).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct TrafficStats {
    pub sent: AtomicU64,
    pub forced_sampled: AtomicU64,
    pub ok: AtomicU64,
    pub http_errors: AtomicU64,
    pub transport_errors: AtomicU64,
}

impl TrafficStats {
    pub fn summary(&self) -> String {
        format!(
            "{} requests ({} with l5d-sample): {} ok, {} HTTP errors, {} failed to connect/timed out",
            self.sent.load(Ordering::Relaxed),
            self.forced_sampled.load(Ordering::Relaxed),
            self.ok.load(Ordering::Relaxed),
            self.http_errors.load(Ordering::Relaxed),
            self.transport_errors.load(Ordering::Relaxed),
        )
    }
}

/// Sends `GET entry_url` `rate` times per second until `stop` turns true.
pub async fn drive(
    entry_url: String,
    rate: f64,
    l5d_sample_percent: u32,
    stats: Arc<TrafficStats>,
    mut stop: watch::Receiver<bool>,
) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let period = Duration::from_secs_f64(1.0 / rate.clamp(0.01, 1000.0));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let forced = rand::rng().random_ratio(l5d_sample_percent.min(100), 100);
        let mut request = Request::get(entry_url.as_str());
        if forced {
            request = request.header("l5d-sample", "1");
        }
        let Ok(request) = request.body(Empty::new()) else {
            stats.transport_errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        stats.sent.fetch_add(1, Ordering::Relaxed);
        if forced {
            stats.forced_sampled.fetch_add(1, Ordering::Relaxed);
        }
        let client = client.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let exchange = async {
                let response = client.request(request).await.ok()?;
                let status = response.status();
                response.into_body().collect().await.ok()?;
                Some(status)
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
                Ok(Some(status)) if status.is_success() => &stats.ok,
                Ok(Some(_)) => &stats.http_errors,
                _ => &stats.transport_errors,
            }
            .fetch_add(1, Ordering::Relaxed);
        });
    }
}
