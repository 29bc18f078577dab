//! Tracing on every hop: propagation formats, sampling, span recording, and the tower layers
//! that put SERVER and CLIENT spans around the HTTP path.

/// Settings of the trace layers (`MESHTRACE_*` variables, mirrored by flags).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TraceArgs {}
