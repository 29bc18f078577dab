//! Protocol detection: classifying a connection's first bytes runs once per accepted
//! connection, before any byte is forwarded, so it adds directly to connection setup latency.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meshtrace_proxy::detect::{classify, detect};

const HTTP1_GET: &[u8] =
    b"GET /api/users/42?expand=orders HTTP/1.1\r\nHost: users.default.svc:8080\r\n\
User-Agent: bench\r\nAccept: */*\r\n\r\n";
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00";
const TLS_HELLO: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";

fn bench_classify(c: &mut Criterion) {
    let mut group = c.benchmark_group("detect/classify");
    group.throughput(Throughput::Elements(1));
    for (name, bytes) in [
        ("http1", HTTP1_GET),
        ("h2", H2_PREFACE),
        ("tls_opaque", TLS_HELLO),
    ] {
        group.bench_function(name, |b| b.iter(|| classify(black_box(bytes))));
    }
    // A long request target: the scan is linear in the request line.
    let mut long = b"GET /".to_vec();
    long.extend(std::iter::repeat_n(b'a', 4000));
    long.extend_from_slice(b" HTTP/1.1\r\n\r\n");
    group.bench_function("http1_4k_target", |b| b.iter(|| classify(black_box(&long))));
    group.finish();
}

/// The whole async `detect` over an in-memory stream: buffer allocation, read and freeze
/// included, as the proxy does it per connection.
fn bench_detect(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("detect/async");
    group.throughput(Throughput::Elements(1));
    for (name, bytes) in [("http1", HTTP1_GET), ("h2", H2_PREFACE)] {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                let mut io = black_box(bytes);
                detect(&mut io, Duration::from_secs(10))
                    .await
                    .expect("in-memory read")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_classify, bench_detect);
criterion_main!(benches);
