//! The per-request sample header (`l5d-sample: <rate>`). A value the parser accepts is a rate
//! in [0, 1], whitespace around it changes nothing, and it reads back from its decimal form; the
//! header is found by the request scan under whatever name it is configured with; and the
//! decision it drives is deterministic per trace id and monotonic in the rate.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use meshtrace_proxy::trace::propagation::ScannedHeaders;
use meshtrace_proxy::trace::sampling::{decide, parse_rate, ratio_sampled, Reason};

fuzz_target!(|data: &[u8]| {
    // The first 16 bytes are a trace id, the rest the header's value.
    if data.len() < 16 {
        return;
    }
    let (id, value) = data.split_at(16);
    let mut trace_id = [0u8; 16];
    trace_id.copy_from_slice(id);

    let rate = parse_rate(value);
    // Surrounding whitespace (HTTP's OWS) changes nothing.
    let mut padded = b" \t".to_vec();
    padded.extend_from_slice(value);
    padded.extend_from_slice(b"\t ");
    assert_eq!(
        parse_rate(&padded).map(f64::to_bits),
        rate.map(f64::to_bits)
    );
    if let Some(rate) = rate {
        // A number: at least one digit, or a spelled-out infinity.
        let text = std::str::from_utf8(value)
            .expect("a rate is text")
            .trim()
            .to_ascii_lowercase();
        assert!(
            text.bytes().any(|c| c.is_ascii_digit()) || text.contains("inf"),
            "{text:?}"
        );
        // The rate written back as a number reads as itself.
        assert_eq!(parse_rate(rate.to_string().as_bytes()), Some(rate));
    }

    if let Ok(header) = HeaderValue::from_bytes(value) {
        let name = HeaderName::from_static("l5d-sample");
        let mut headers = HeaderMap::new();
        headers.append(name.clone(), header.clone());
        // A second value is ignored: the first one decides.
        headers.append(name.clone(), HeaderValue::from_static("garbage"));
        let found = ScannedHeaders::scan(&headers, Some(&name));
        assert_eq!(found.sample(), Some(&header));
        assert!(found.present() == ScannedHeaders::scan(&HeaderMap::new(), None).present());
    }

    let Some(rate) = rate else { return };
    assert!((0.0..=1.0).contains(&rate));
    let sampled = ratio_sampled(&trace_id, rate);
    assert_eq!(sampled, ratio_sampled(&trace_id, rate), "deterministic");
    if rate == 0.0 {
        assert!(!sampled);
    }
    if rate == 1.0 {
        assert!(sampled);
    }
    // Monotonic: sampled at a rate means sampled at every higher rate, and not sampled means
    // not sampled at any lower one.
    for other in [
        0.0,
        f64::MIN_POSITIVE,
        1e-12,
        0.25,
        0.5,
        0.75,
        1.0 - f64::EPSILON,
        1.0,
    ] {
        let at_other = ratio_sampled(&trace_id, other);
        if other >= rate && sampled {
            assert!(at_other, "rate {rate} sampled, {other} not");
        }
        if other <= rate && !sampled {
            assert!(!at_other, "rate {rate} not sampled, {other} is");
        }
    }
    // The header outranks everything else in the decision.
    for (debug, inherited) in [(true, Some(false)), (false, Some(true)), (false, None)] {
        let d = decide(Some(rate), debug, inherited, &trace_id, 0.5);
        assert_eq!((d.sampled, d.reason), (sampled, Reason::SampleHeader));
    }
});
