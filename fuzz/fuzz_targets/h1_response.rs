//! The HTTP/1 codec's response-head parser and framing decision: the properties checked are in the
//! documentation of `forward::h1::fuzz_response_head` (proxy/src/forward/h1/mod.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    meshtrace_proxy::forward::h1::fuzz_response_head(data);
});
