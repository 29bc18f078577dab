//! Shared test support: upstream servers, OTLP receivers and network-namespace "pods", used by
//! the crates' integration tests, the end-to-end tests and the benchmarks.

pub mod client;
pub mod grpc;
pub mod netns;
pub mod otlp;
pub mod tcp;
pub mod upstream;
pub mod ws;
