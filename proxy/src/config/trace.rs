//! The settings of the trace layers: sampling, the sample header, propagation formats, span
//! names and `traceresponse` (`MESHTRACE_*` variables, mirrored by flags).

use std::time::Duration;

use http::HeaderName;

use super::parse_duration;
use crate::trace::correlate::ContextInference;
use crate::trace::SpanNaming;

/// A propagation format named in `MESHTRACE_PROPAGATION`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PropagationFormat {
    /// W3C `traceparent`/`tracestate` (always written).
    #[value(name = "tracecontext")]
    TraceContext,
    /// B3 single header `b3`.
    #[value(name = "b3")]
    B3,
    /// B3 multi headers `x-b3-*`.
    #[value(name = "b3multi")]
    B3Multi,
}

/// When a proxy answers with a `traceresponse` header (`MESHTRACE_TRACE_RESPONSE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TraceResponse {
    /// Only when this proxy applied a sample header from the request: the client asked for a
    /// trace, so it gets its id. Other responses pass unchanged.
    #[value(alias = "true", alias = "1")]
    On,
    /// Also whenever this proxy started the trace (every request entering the mesh without
    /// a context gets one).
    Always,
    /// Never.
    #[value(alias = "false", alias = "0")]
    Off,
}

/// Settings of the trace layers (`MESHTRACE_*` variables, mirrored by flags).
#[derive(Clone, Debug, clap::Args)]
pub struct TraceArgs {
    /// Fraction of traces this proxy samples when the caller sent no decision (0 to 1).
    /// Deterministic per trace: sampled iff the trace id's low 64 bits, as an unsigned
    /// big-endian integer, are below rate × 2^64, so every proxy agrees on a trace.
    #[arg(
        long = "sample-rate",
        env = "MESHTRACE_SAMPLE_RATE",
        default_value_t = 0.01,
        value_parser = parse_sample_rate
    )]
    pub sample_rate: f64,

    /// Request header that forces a sampling rate for one request, e.g. `l5d-sample: 1`
    /// (clamped to 0..1, applied to the trace id like the rate above; beats every other
    /// rule). The proxy that applies it removes it; non-numeric values are ignored and counted.
    #[arg(
        long = "sample-header",
        env = "MESHTRACE_SAMPLE_HEADER",
        default_value = "l5d-sample",
        value_parser = parse_header_name
    )]
    pub sample_header: HeaderName,

    /// Propagation formats written on forwarded requests, comma-separated: `tracecontext`,
    /// `b3` (single header), `b3multi` (x-b3-* headers). `traceparent` is always written;
    /// B3 is written in the forms that arrived, else in the B3 forms listed here.
    #[arg(
        long = "propagation",
        env = "MESHTRACE_PROPAGATION",
        value_enum,
        value_delimiter = ',',
        default_values_t = [PropagationFormat::TraceContext, PropagationFormat::B3Multi]
    )]
    pub propagation: Vec<PropagationFormat>,

    /// Span names: `template` = `{METHOD} {path with ids replaced by {id}}`, `method` =
    /// `{METHOD}`, `path` = `{METHOD} {raw path}`. Query strings are never part of a name.
    #[arg(
        long = "span-name",
        env = "MESHTRACE_SPAN_NAME",
        default_value = "template",
        value_parser = span_naming()
    )]
    pub span_name: SpanNaming,

    /// When to add a `traceresponse: 00-{trace-id}-{span-id}-{flags}` response header:
    /// `on` = only when this proxy applied a sample header from the request, `always` = also
    /// whenever this proxy started the trace, `off` = never.
    #[arg(
        long = "trace-response",
        env = "MESHTRACE_TRACE_RESPONSE",
        value_enum,
        default_value_t = TraceResponse::On
    )]
    pub trace_response: TraceResponse,

    /// How an outbound request without trace context finds its parent: `off` (a new trace),
    /// `request-id` (only through request ids: exact), `infer` (request ids, then the sole
    /// inbound request in flight, else span links to the candidates).
    #[arg(
        long = "context-inference",
        env = "MESHTRACE_CONTEXT_INFERENCE",
        value_enum,
        default_value_t = ContextInference::Infer
    )]
    pub context_inference: ContextInference,

    /// Request id header: the inbound proxy adds one (a random UUID) to requests without it
    /// and keeps the ones clients send; outbound requests carrying a remembered id continue
    /// that request's trace. `none` turns request ids off.
    #[arg(
        long = "request-id-header",
        env = "MESHTRACE_REQUEST_ID_HEADER",
        default_value = "x-request-id",
        value_parser = parse_request_id_header
    )]
    pub request_id_header: RequestIdHeader,

    /// How long after its response an inbound request's id still ties outbound requests to it.
    #[arg(
        long = "request-id-window",
        env = "MESHTRACE_REQUEST_ID_WINDOW",
        default_value = "10s",
        value_parser = parse_duration
    )]
    pub request_id_window: Duration,

    /// Most span links (newest candidates first) on an outbound SERVER span whose parent is
    /// ambiguous.
    #[arg(
        long = "context-max-links",
        env = "MESHTRACE_CONTEXT_MAX_LINKS",
        default_value_t = 8
    )]
    pub context_max_links: usize,

    /// Inbound requests in flight longer than this (long polls, streams) are no longer
    /// candidate parents.
    #[arg(
        long = "context-max-age",
        env = "MESHTRACE_CONTEXT_MAX_AGE",
        default_value = "60s",
        value_parser = parse_duration
    )]
    pub context_max_age: Duration,
}

/// `MESHTRACE_REQUEST_ID_HEADER`: a header name, or `None` for `none`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestIdHeader(pub Option<HeaderName>);

fn parse_request_id_header(s: &str) -> Result<RequestIdHeader, String> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(RequestIdHeader(None));
    }
    parse_header_name(s).map(|name| RequestIdHeader(Some(name)))
}

impl Default for TraceArgs {
    fn default() -> Self {
        TraceArgs {
            sample_rate: 0.01,
            sample_header: HeaderName::from_static("l5d-sample"),
            propagation: vec![PropagationFormat::TraceContext, PropagationFormat::B3Multi],
            span_name: SpanNaming::Template,
            trace_response: TraceResponse::On,
            context_inference: ContextInference::Infer,
            request_id_header: RequestIdHeader(Some(HeaderName::from_static("x-request-id"))),
            request_id_window: Duration::from_secs(10),
            context_max_links: 8,
            context_max_age: Duration::from_secs(60),
        }
    }
}

/// The values of `MESHTRACE_SPAN_NAME`, so that `trace` needs no clap.
fn span_naming() -> impl clap::builder::TypedValueParser<Value = SpanNaming> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    let names = [
        (
            SpanNaming::Template,
            "template",
            "`{METHOD} {templated path}`: identifiers replaced by `{id}`, query dropped",
        ),
        (
            SpanNaming::Method,
            "method",
            "`{METHOD}` only, as the OpenTelemetry HTTP conventions name spans without a route",
        ),
        (
            SpanNaming::Path,
            "path",
            "`{METHOD} {path}`: the raw path, query dropped (cut at 256 bytes)",
        ),
    ];
    PossibleValuesParser::new(names.map(|(_, name, help)| PossibleValue::new(name).help(help))).map(
        move |chosen| {
            names
                .into_iter()
                .find(|(_, name, _)| *name == chosen)
                .map_or(SpanNaming::default(), |(naming, _, _)| naming)
        },
    )
}

fn parse_sample_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.trim().parse().map_err(|e| format!("not a number: {e}"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("{rate} is not between 0 and 1"))
    }
}

fn parse_header_name(s: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(s.trim().as_bytes()).map_err(|e| format!("not a header name: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        trace: TraceArgs,
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let cli = Cli::try_parse_from(["proxy"]).unwrap();
        let want = TraceArgs::default();
        assert_eq!(cli.trace.sample_rate, want.sample_rate);
        assert_eq!(cli.trace.sample_header, want.sample_header);
        assert_eq!(cli.trace.propagation, want.propagation);
        assert_eq!(cli.trace.span_name, want.span_name);
        assert_eq!(cli.trace.trace_response, want.trace_response);
        assert_eq!(cli.trace.context_inference, want.context_inference);
        assert_eq!(cli.trace.request_id_header, want.request_id_header);
        assert_eq!(cli.trace.request_id_window, want.request_id_window);
        assert_eq!(cli.trace.context_max_links, want.context_max_links);
        assert_eq!(cli.trace.context_max_age, want.context_max_age);
    }

    #[test]
    fn context_inference_flags_parse() {
        let cli = Cli::try_parse_from([
            "proxy",
            "--context-inference",
            "request-id",
            "--request-id-header",
            "X-Correlation-Id",
            "--request-id-window",
            "2s",
            "--context-max-links",
            "3",
            "--context-max-age",
            "500ms",
        ])
        .unwrap();
        assert_eq!(cli.trace.context_inference, ContextInference::RequestId);
        assert_eq!(
            cli.trace.request_id_header,
            RequestIdHeader(Some(HeaderName::from_static("x-correlation-id")))
        );
        assert_eq!(cli.trace.request_id_window, Duration::from_secs(2));
        assert_eq!(cli.trace.context_max_links, 3);
        assert_eq!(cli.trace.context_max_age, Duration::from_millis(500));
        let off = Cli::try_parse_from(["proxy", "--request-id-header", "none"]).unwrap();
        assert_eq!(off.trace.request_id_header, RequestIdHeader(None));
        let off = Cli::try_parse_from(["proxy", "--context-inference", "off"]).unwrap();
        assert_eq!(off.trace.context_inference, ContextInference::Off);
        for bad in [
            ["proxy", "--context-inference", "guess"],
            ["proxy", "--request-id-header", "bad header"],
            ["proxy", "--context-max-age", "soon"],
            ["proxy", "--context-max-links", "-1"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "proxy",
            "--sample-rate",
            "0.5",
            "--sample-header",
            "X-Force-Sample",
            "--propagation",
            "b3,tracecontext",
            "--span-name",
            "path",
            "--trace-response",
            "off",
        ])
        .unwrap();
        assert_eq!(cli.trace.sample_rate, 0.5);
        assert_eq!(cli.trace.sample_header, "x-force-sample");
        assert_eq!(
            cli.trace.propagation,
            vec![PropagationFormat::B3, PropagationFormat::TraceContext]
        );
        assert_eq!(cli.trace.span_name, SpanNaming::Path);
        assert_eq!(cli.trace.trace_response, TraceResponse::Off);
    }

    #[test]
    fn trace_response_takes_on_always_off() {
        for (value, want) in [
            ("on", TraceResponse::On),
            ("always", TraceResponse::Always),
            ("off", TraceResponse::Off),
            ("true", TraceResponse::On),
            ("0", TraceResponse::Off),
        ] {
            let cli = Cli::try_parse_from(["proxy", "--trace-response", value]).unwrap();
            assert_eq!(cli.trace.trace_response, want, "{value}");
        }
    }

    #[test]
    fn bad_values_are_rejected() {
        for args in [
            ["proxy", "--sample-rate", "1.5"],
            ["proxy", "--sample-rate", "lots"],
            ["proxy", "--sample-header", "bad header"],
            ["proxy", "--propagation", "jaeger"],
            ["proxy", "--span-name", "route"],
            ["proxy", "--trace-response", "maybe"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn help_documents_every_variable() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for var in [
            "MESHTRACE_SAMPLE_RATE",
            "MESHTRACE_SAMPLE_HEADER",
            "MESHTRACE_PROPAGATION",
            "MESHTRACE_SPAN_NAME",
            "MESHTRACE_TRACE_RESPONSE",
            "MESHTRACE_CONTEXT_INFERENCE",
            "MESHTRACE_REQUEST_ID_HEADER",
            "MESHTRACE_REQUEST_ID_WINDOW",
            "MESHTRACE_CONTEXT_MAX_LINKS",
            "MESHTRACE_CONTEXT_MAX_AGE",
        ] {
            assert!(help.contains(var), "{var} missing from --help");
        }
    }
}
