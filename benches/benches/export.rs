//! OTLP batch encoding throughput: what the exporter task spends per span turning
//! `SpanRecord`s into the protobuf bytes of an OTLP request (off the request path, but with every
//! request sampled it shares the proxy's CPU with the data path).
//!
//! `wire/*` is what the exporter does (straight to the wire format, `export::wire`);
//! `to_proto*` is the typed path through the generated `opentelemetry-proto` messages, kept as
//! the reference the wire encoder is tested against.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::sync::Arc;

use meshtrace_proxy::export::encode;
use meshtrace_proxy::export::wire::BatchEncoder;
use meshtrace_proxy::span::{
    recycle_attributes, AttrValue, SharedStr, SpanKind, SpanRecord, SpanStatus,
};
use prost::Message;

/// A span shaped like the proxy's: a dozen HTTP semantic-convention attributes, strings shared
/// with the request's other span, addresses and numbers typed.
fn span(n: u64) -> SpanRecord {
    let path = format!("/api/users/{n}");
    let text: Arc<str> = Arc::from(format!(
        "GET /api/users/{{id}}{path}users.shop.svccurl/8.5.0"
    ));
    let at = |start: usize, len: usize| {
        AttrValue::Shared(SharedStr::slice(&text, start..start + len).expect("in bounds"))
    };
    let name_len = "GET /api/users/{id}".len();
    let host_at = name_len + path.len();
    let agent_at = host_at + "users.shop.svc".len();
    SpanRecord {
        trace_id: [(n % 251) as u8; 16],
        span_id: n.to_be_bytes(),
        parent_span_id: Some((n + 1).to_be_bytes()),
        trace_state: None,
        flags: 1,
        kind: if n % 2 == 0 {
            SpanKind::Server
        } else {
            SpanKind::Client
        },
        name: SharedStr::slice(&text, 0..name_len).expect("in bounds"),
        start_unix_nanos: 1_700_000_000_000_000_000 + n,
        end_unix_nanos: 1_700_000_000_000_500_000 + n,
        status: SpanStatus::Unset,
        attributes: vec![
            ("http.request.method", AttrValue::Static("GET")),
            ("url.path", at(name_len, path.len())),
            ("url.scheme", AttrValue::Static("http")),
            ("server.address", at(host_at, "users.shop.svc".len())),
            ("server.port", AttrValue::Int(8080)),
            ("client.address", AttrValue::Ip([10, 1, 2, 3].into())),
            ("network.protocol.version", AttrValue::Static("1.1")),
            ("network.peer.address", AttrValue::Ip([10, 1, 4, 5].into())),
            ("network.peer.port", AttrValue::Int(8080)),
            ("user_agent.original", at(agent_at, "curl/8.5.0".len())),
            ("http.response.status_code", AttrValue::Int(200)),
            ("http.response.body.size", AttrValue::Int(1234)),
            ("meshtrace.direction", AttrValue::Static("inbound")),
        ],
        links: Vec::new(),
    }
}

fn batch(size: u64) -> Vec<SpanRecord> {
    (0..size).map(span).collect()
}

fn bench_encode(c: &mut Criterion) {
    let resource = meshtrace_proxy::config::ExportArgs {
        workload: Some("checkout".into()),
        pod_name: Some("checkout-7d9f-abcde".into()),
        pod_namespace: Some("shop".into()),
        ..Default::default()
    }
    .resource()
    .to_proto();
    let scope = encode::scope();
    let mut encoder = BatchEncoder::new(&resource, &scope);
    let mut group = c.benchmark_group("otlp_batch_encode");
    for size in [64u64, 512] {
        group.throughput(Throughput::Elements(size));
        // What the exporter does per batch: encode, then free the records (keeping their
        // attribute lists for new spans).
        group.bench_function(format!("wire/{size}"), |b| {
            b.iter_batched(
                || batch(size),
                |spans| {
                    let body = encoder.encode(&spans);
                    for span in spans {
                        recycle_attributes(span.attributes);
                    }
                    black_box(body)
                },
                BatchSize::SmallInput,
            )
        });
        group.bench_function(format!("to_proto/{size}"), |b| {
            b.iter_batched(
                || batch(size),
                |spans| black_box(encode::export_request(&resource, &scope, spans)),
                BatchSize::SmallInput,
            )
        });
        group.bench_function(format!("to_proto_and_protobuf/{size}"), |b| {
            b.iter_batched(
                || batch(size),
                |spans| {
                    let request = encode::export_request(&resource, &scope, spans);
                    black_box(request.encode_to_vec())
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench_encode);
criterion_main!(benches);
