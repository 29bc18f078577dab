//! Per-request tracing cost: header extraction and injection per format, the sampling
//! decision, span naming, and a whole request through the SERVER and CLIENT layers, sampled
//! (span recording included) and unsampled, and sampled with the exporter's encoding.
//!
//! The inner service answers immediately and futures are polled with a no-op waker, so the
//! numbers are the layers' own work, not a runtime's.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use http_body::Body;
use http_body_util::Full;
use std::sync::Arc;

use meshtrace_proxy::export::{self, wire::BatchEncoder};
use meshtrace_proxy::meta::{ConnMeta, Direction};
use meshtrace_proxy::span::{recycle_attributes, SpanQueue, SpanRecord, SpanSink};
use meshtrace_proxy::trace::naming::{span_name, SpanNaming};
use meshtrace_proxy::trace::propagation::{self, B3Forms, Outgoing};
use meshtrace_proxy::trace::{sampling, TraceArgs, TracedBody, Tracer};
use tower::{Layer, Service};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, HeaderValue::from_str(value).unwrap());
    }
    map
}

fn w3c_headers(flags: &str) -> HeaderMap {
    headers(&[
        ("traceparent", format!("00-{TRACE}-{SPAN}-{flags}")),
        (
            "tracestate",
            "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7".into(),
        ),
        ("user-agent", "bench/1".into()),
        ("accept", "*/*".into()),
    ])
}

fn bench_extract(c: &mut Criterion) {
    let mut group = c.benchmark_group("extract");
    let cases = [
        ("none", headers(&[("user-agent", "bench/1".into())])),
        ("w3c", w3c_headers("01")),
        ("b3_single", headers(&[("b3", format!("{TRACE}-{SPAN}-1"))])),
        (
            "b3_multi",
            headers(&[
                ("x-b3-traceid", TRACE.into()),
                ("x-b3-spanid", SPAN.into()),
                ("x-b3-sampled", "1".into()),
            ]),
        ),
    ];
    for (name, map) in &cases {
        group.bench_function(*name, |b| b.iter(|| propagation::extract(black_box(map))));
    }
    group.finish();
}

fn bench_inject(c: &mut Criterion) {
    let mut group = c.benchmark_group("inject");
    let trace_id = [0x4b; 16];
    let span_id = [0x01; 8];
    let parent = [0x02; 8];
    let state = HeaderValue::from_static("congo=t61rcWkgMzE");
    let forms = [
        ("tracecontext", false, B3Forms::NONE),
        (
            "tracecontext_b3multi",
            false,
            B3Forms {
                single: false,
                multi: true,
            },
        ),
        (
            "all_formats",
            true,
            B3Forms {
                single: true,
                multi: true,
            },
        ),
    ];
    let base = w3c_headers("01");
    for (name, with_state, b3) in forms {
        let out = Outgoing {
            trace_id: &trace_id,
            span_id: &span_id,
            parent_span_id: &parent,
            flags: 0x03,
            debug: false,
            trace_state: with_state.then_some(&state),
            trace_id_64: false,
            tracecontext: true,
            b3,
        };
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || base.clone(),
                |map| propagation::inject(map, black_box(&out)),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn bench_sampling(c: &mut Criterion) {
    let mut group = c.benchmark_group("sampling");
    let id = [0x5a; 16];
    group.bench_function("ratio", |b| {
        b.iter(|| sampling::decide(None, false, None, black_box(&id), 0.01))
    });
    group.bench_function("sample_header", |b| {
        b.iter(|| {
            let rate = sampling::parse_rate(black_box(b"0.5"));
            sampling::decide(rate, false, Some(true), black_box(&id), 0.01)
        })
    });
    group.finish();
}

fn bench_naming(c: &mut Criterion) {
    let mut group = c.benchmark_group("naming");
    let path = "/api/v1/users/12345/orders/550e8400-e29b-41d4-a716-446655440000/items";
    for naming in [SpanNaming::Template, SpanNaming::Method, SpanNaming::Path] {
        group.bench_function(format!("{naming:?}").to_lowercase(), |b| {
            b.iter(|| span_name(naming, &Method::GET, black_box(path)))
        });
    }
    group.finish();
}

/// Polls a future that must complete without waiting.
fn now<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the bench stack never waits"),
    }
}

/// Reads a body that is always ready to its end.
fn drain<B: Body>(body: B) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut body = pin!(body);
    while let Poll::Ready(Some(frame)) = body.as_mut().poll_frame(&mut cx) {
        black_box(frame.ok());
    }
}

/// A request as the data path hands it to the SERVER layer: connection facts in its extensions,
/// a `Host` header, a user agent and (sampled or not) a W3C parent.
fn request(sampled: bool) -> Request<Full<Bytes>> {
    let mut req = Request::builder()
        .method(Method::GET)
        .uri("/api/v1/users/12345")
        .body(Full::new(Bytes::from_static(b"ping")))
        .unwrap();
    *req.headers_mut() = w3c_headers(if sampled { "01" } else { "00" });
    req.headers_mut()
        .insert("host", HeaderValue::from_static("users.shop.svc:8080"));
    req.extensions_mut().insert(Arc::new(ConnMeta {
        direction: Direction::Inbound,
        client_addr: "10.1.2.3:51000".parse().unwrap(),
        local_addr: "10.1.4.5:4143".parse().unwrap(),
        orig_dst: Some("10.1.4.5:8080".parse().unwrap()),
    }));
    req
}

/// Spans per export request in the `sampled_and_encoded` case (the exporter's default).
const BATCH: usize = 512;

fn bench_request(c: &mut Criterion) {
    let mut group = c.benchmark_group("request");
    // (name, rate, export enabled, encode like the exporter)
    let cases = [
        ("unsampled", 0.0, true, false),
        ("sampled", 1.0, true, false),
        ("sampled_export_disabled", 1.0, false, false),
        // Everything tracing costs per request: both spans recorded, queued, encoded to OTLP
        // protobuf in batches of 512, and freed.
        ("sampled_and_encoded", 1.0, true, true),
    ];
    let resource = meshtrace_proxy::config::ExportArgs::default()
        .resource()
        .to_proto();
    for (name, rate, export, encode) in cases {
        let mut encoder = BatchEncoder::new(&resource, &export::encode::scope());
        let mut batch: Vec<SpanRecord> = Vec::with_capacity(BATCH);
        let (sink, queue): (SpanSink, SpanQueue) = if export {
            SpanSink::bounded(1 << 16)
        } else {
            let (_, queue) = SpanSink::bounded(1);
            (SpanSink::disabled(), queue)
        };
        let args = TraceArgs {
            sample_rate: rate,
            ..TraceArgs::default()
        };
        let tracer = Tracer::new(&args, sink);
        let upstream = tower::service_fn(|_req: Request<TracedBody<Full<Bytes>>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
        });
        let mut svc = tracer
            .server_layer()
            .layer(tracer.client_layer().layer(upstream));
        group.bench_function(name, |b| {
            b.iter_batched(
                || request(rate > 0.0),
                |req| {
                    let rsp = now(svc.call(req)).unwrap();
                    drain(rsp.into_body());
                    while let Ok(span) = queue.rx.try_recv() {
                        if encode {
                            batch.push(span);
                        }
                    }
                    if batch.len() >= BATCH {
                        black_box(encoder.encode(&batch));
                        for span in batch.drain(..) {
                            recycle_attributes(span.attributes);
                        }
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// The correlate step: what inferring an outbound request's parent costs, and what tracking an
/// inbound request costs (register + finish), with `in_flight` other requests tracked.
fn bench_correlate(c: &mut Criterion) {
    use meshtrace_proxy::trace::correlate::{
        CorrelateSettings, Correlator, ParentContext, Registration, SystemClock,
    };
    use meshtrace_proxy::trace::ids;

    let context = |n: u64| ParentContext {
        trace_id: [n as u8 | 1; 16],
        span_id: n.max(1).to_be_bytes(),
        flags: 1,
        trace_id_64: false,
        trace_state: None,
    };
    let mut group = c.benchmark_group("correlate");
    for in_flight in [0usize, 1, 100, 10_000] {
        let correlator = Correlator::new(CorrelateSettings::default(), Arc::new(SystemClock));
        let ids: Vec<[u8; ids::REQUEST_ID_LEN]> =
            (0..in_flight).map(|_| ids::new_request_id()).collect();
        let _guards: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(n, id)| {
                correlator.register(Registration {
                    request_id: Some(id),
                    context: context(n as u64),
                    candidate: true,
                })
            })
            .collect();
        group.bench_function(format!("register_and_finish/{in_flight}_in_flight"), |b| {
            b.iter(|| {
                let id = ids::new_request_id();
                drop(black_box(correlator.register(Registration {
                    request_id: Some(&id),
                    context: context(7),
                    candidate: true,
                })));
            })
        });
        let known = ids.last().copied();
        if let Some(known) = known {
            group.bench_function(format!("infer_by_request_id/{in_flight}_in_flight"), |b| {
                b.iter(|| black_box(correlator.infer(Some(black_box(&known)))))
            });
        }
        // Without a known id: background (0), sole in flight (1), ambiguous with links (more).
        group.bench_function(format!("infer_without_id/{in_flight}_in_flight"), |b| {
            b.iter(|| black_box(correlator.infer(None)))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_correlate,
    bench_extract,
    bench_inject,
    bench_sampling,
    bench_naming,
    bench_request
);
criterion_main!(benches);
