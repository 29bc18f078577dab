//! The demo's terminal waterfall: one line per span, nested by parent, with each hop's start
//! offset and duration, so the first thing a newcomer sees is where the time went.

use std::collections::HashMap;
use std::fmt::Write;

use serde::Deserialize;

/// A trace as `GET /api/traces/{id}` of the viewer returns it (the fields the terminal needs).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TraceJson {
    pub trace_id: String,
    pub duration_ms: f64,
    pub spans: Vec<SpanJson>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SpanJson {
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub service: String,
    pub kind: String,
    pub name: String,
    pub start_offset_ms: f64,
    pub duration_ms: f64,
    pub status: StatusJson,
    /// Span attributes; the terminal shows `meshtrace.direction` (which side of the proxy).
    #[serde(default)]
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// Span links (candidate parents of an outbound request the proxy could not tie to one).
    #[serde(default)]
    pub links: Vec<LinkJson>,
}

/// A span link as the viewer API returns it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LinkJson {
    pub trace_id: String,
    pub span_id: String,
}

impl SpanJson {
    /// `inbound`/`outbound`: whether the proxy took this request in for its own app or out
    /// from it; it tells the two span pairs each proxy emits apart.
    pub fn direction(&self) -> &str {
        self.attributes
            .get("meshtrace.direction")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
    }

    /// How the proxy found this span's parent when it had to infer it (the application
    /// forwarded no trace context): `request id` (exact) or `sole in flight` (a good guess).
    pub fn inferred_parent(&self) -> Option<&'static str> {
        match self
            .attributes
            .get("meshtrace.context.source")
            .and_then(serde_json::Value::as_str)?
        {
            "request_id" => Some("request id"),
            "sole_in_flight" => Some("sole request in flight"),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct StatusJson {
    pub code: String,
    #[serde(default)]
    pub message: String,
}

/// Width of the timeline column, in characters.
const TIMELINE_WIDTH: usize = 40;

/// Spans depth-first under their parents, children by start; orphans become roots.
fn ordered(spans: &[SpanJson]) -> Vec<(usize, &SpanJson)> {
    let ids: HashMap<&str, &SpanJson> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut children: HashMap<&str, Vec<&SpanJson>> = HashMap::new();
    let mut roots = Vec::new();
    for span in spans {
        match span.parent_span_id.as_deref() {
            Some(parent) if ids.contains_key(parent) && parent != span.span_id => {
                children.entry(parent).or_default().push(span)
            }
            _ => roots.push(span),
        }
    }
    let by_start = |a: &&SpanJson, b: &&SpanJson| a.start_offset_ms.total_cmp(&b.start_offset_ms);
    roots.sort_by(by_start);
    for list in children.values_mut() {
        list.sort_by(by_start);
    }
    let mut out = Vec::with_capacity(spans.len());
    let mut stack: Vec<(usize, &SpanJson)> = roots.into_iter().rev().map(|s| (0, s)).collect();
    let mut seen = std::collections::HashSet::new();
    while let Some((depth, span)) = stack.pop() {
        if !seen.insert(span.span_id.as_str()) {
            continue;
        }
        out.push((depth, span));
        if let Some(kids) = children.get(span.span_id.as_str()) {
            stack.extend(kids.iter().rev().map(|k| (depth + 1, *k)));
        }
    }
    out
}

fn bar(start_ms: f64, duration_ms: f64, total_ms: f64, fill: char) -> String {
    let total = total_ms.max(f64::EPSILON);
    let width = TIMELINE_WIDTH as f64;
    let from = ((start_ms / total) * width).floor().clamp(0.0, width - 1.0) as usize;
    let to = (((start_ms + duration_ms) / total) * width)
        .ceil()
        .clamp(from as f64 + 1.0, width) as usize;
    (0..TIMELINE_WIDTH)
        .map(|i| if (from..to).contains(&i) { fill } else { '·' })
        .collect()
}

/// Renders the trace as a table; error spans get a `#` bar and their status message.
pub fn render(trace: &TraceJson) -> String {
    let rows = ordered(&trace.spans);
    let services: std::collections::BTreeSet<&str> =
        trace.spans.iter().map(|s| s.service.as_str()).collect();
    let errors = trace
        .spans
        .iter()
        .filter(|s| s.status.code == "error")
        .count();
    let name_cells: Vec<String> = rows
        .iter()
        .map(|(depth, span)| format!("{}{}", "  ".repeat(*depth), span.name))
        .collect();
    let name_width = name_cells
        .iter()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(4)
        .max(9);
    let service_width = services.iter().map(|s| s.len()).max().unwrap_or(7).max(7);

    let mut out = String::new();
    let _ = writeln!(
        out,
        "trace {} · {} spans · {} services · {:.1} ms · {} error span{}",
        trace.trace_id,
        trace.spans.len(),
        services.len(),
        trace.duration_ms,
        errors,
        if errors == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        out,
        "{:<service_width$}  {:<8}  {:<6}  {:<name_width$}  {:>9}  {:>9}  {:<6}  timeline 0 → {:.1} ms",
        "service", "proxy", "kind", "operation", "start", "duration", "status", trace.duration_ms
    );
    for ((_, span), name) in rows.iter().zip(&name_cells) {
        let failed = span.status.code == "error";
        let mut line = format!(
            "{:<service_width$}  {:<8}  {:<6}  {:<name_width$}  {:>7.2}ms  {:>7.2}ms  {:<6}  {}",
            span.service,
            span.direction(),
            span.kind.to_uppercase(),
            name,
            span.start_offset_ms,
            span.duration_ms,
            if failed { "ERROR" } else { "ok" },
            bar(
                span.start_offset_ms,
                span.duration_ms,
                trace.duration_ms,
                if failed { '#' } else { '=' }
            ),
        );
        if failed && !span.status.message.is_empty() {
            let _ = write!(line, "  {}", span.status.message);
        }
        if let Some(how) = span.inferred_parent() {
            let _ = write!(line, "  [inferred parent: {how}]");
        }
        if !span.links.is_empty() {
            let _ = write!(line, "  [{} links to candidate parents]", span.links.len());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(
        id: &str,
        parent: Option<&str>,
        service: &str,
        kind: &str,
        start: f64,
        dur: f64,
        code: &str,
    ) -> SpanJson {
        SpanJson {
            span_id: id.into(),
            parent_span_id: parent.map(Into::into),
            service: service.into(),
            kind: kind.into(),
            name: format!("op-{id}"),
            start_offset_ms: start,
            duration_ms: dur,
            status: StatusJson {
                code: code.into(),
                message: if code == "error" {
                    "HTTP 503".into()
                } else {
                    String::new()
                },
            },
            attributes: serde_json::Map::from_iter([(
                "meshtrace.direction".to_owned(),
                serde_json::Value::from(if kind == "server" {
                    "inbound"
                } else {
                    "outbound"
                }),
            )]),
            links: Vec::new(),
        }
    }

    #[test]
    fn marks_inferred_parents_and_links() {
        let mut inferred = span("b", Some("a"), "frontend", "server", 1.0, 2.0, "unset");
        inferred.attributes.insert(
            "meshtrace.context.source".into(),
            serde_json::Value::from("sole_in_flight"),
        );
        let mut exact = span("c", Some("a"), "frontend", "server", 1.0, 2.0, "unset");
        exact.attributes.insert(
            "meshtrace.context.source".into(),
            serde_json::Value::from("request_id"),
        );
        let mut linked = span("d", None, "frontend", "server", 1.0, 2.0, "unset");
        linked.attributes.insert(
            "meshtrace.context.source".into(),
            serde_json::Value::from("ambiguous"),
        );
        linked.links = vec![
            LinkJson {
                trace_id: "01".repeat(16),
                span_id: "02".repeat(8),
            };
            2
        ];
        let trace = TraceJson {
            trace_id: "ab".repeat(16),
            duration_ms: 4.0,
            spans: vec![
                span("a", None, "frontend", "server", 0.0, 4.0, "unset"),
                inferred,
                exact,
                linked,
            ],
        };
        let text = render(&trace);
        let line = |id: &str| {
            text.lines()
                .find(|l| l.contains(&format!("op-{id} ")))
                .unwrap_or_else(|| panic!("no op-{id} in {text}"))
        };
        assert!(!line("a").contains("inferred"), "{text}");
        assert!(
            line("b").ends_with("[inferred parent: sole request in flight]"),
            "{text}"
        );
        assert!(
            line("c").ends_with("[inferred parent: request id]"),
            "{text}"
        );
        assert!(
            line("d").ends_with("[2 links to candidate parents]"),
            "{text}"
        );
    }

    #[test]
    fn renders_nested_rows_with_timings_and_errors() {
        let trace = TraceJson {
            trace_id: "ab".repeat(16),
            duration_ms: 40.0,
            spans: vec![
                span("c", Some("b"), "backend", "server", 10.0, 20.0, "error"),
                span("a", None, "frontend", "server", 0.0, 40.0, "unset"),
                span("d", Some("a"), "frontend", "client", 32.0, 4.0, "unset"),
                span("b", Some("a"), "frontend", "client", 8.0, 24.0, "error"),
            ],
        };
        let text = render(&trace);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert!(
            lines[0].contains("4 spans · 2 services · 40.0 ms · 2 error spans"),
            "{text}"
        );
        // Depth-first: a, b, c (child of b), then d.
        assert!(
            lines[2].contains("op-a") && lines[2].starts_with("frontend"),
            "{text}"
        );
        assert!(lines[3].contains("  op-b"), "{text}");
        assert!(
            lines[2].contains("inbound") && lines[3].contains("outbound"),
            "{text}"
        );
        assert!(
            lines[4].contains("    op-c") && lines[4].contains("ERROR"),
            "{text}"
        );
        assert!(
            lines[4].contains("10.00ms") && lines[4].contains("20.00ms"),
            "{text}"
        );
        assert!(lines[4].ends_with("HTTP 503"), "{text}");
        assert!(
            lines[5].contains("op-d") && lines[5].contains(" ok "),
            "{text}"
        );
        // The root's bar spans the whole timeline; c's bar starts a quarter in.
        assert!(lines[2].ends_with(&"=".repeat(TIMELINE_WIDTH)), "{text}");
        assert!(
            lines[4].contains(&format!("{}{}", "·".repeat(10), "#".repeat(20))),
            "{text}"
        );
    }

    #[test]
    fn bars_are_at_least_one_cell_and_stay_in_bounds() {
        assert_eq!(
            bar(0.0, 0.0, 10.0, '=')
                .chars()
                .filter(|c| *c == '=')
                .count(),
            1
        );
        assert_eq!(bar(10.0, 0.0, 10.0, '=').chars().last(), Some('='));
        assert_eq!(bar(0.0, 5.0, 0.0, '=').chars().count(), TIMELINE_WIDTH);
    }

    #[test]
    fn parses_the_viewer_api_shape() {
        let json = serde_json::json!({
            "traceId": "0af7651916cd43dd8448eb211c80319c",
            "durationMs": 1.5,
            "rootName": "GET /",
            "spans": [{
                "spanId": "b7ad6b7169203331", "parentSpanId": null, "service": "frontend",
                "kind": "server", "name": "GET /", "startOffsetMs": 0.0, "durationMs": 1.5,
                "status": {"code": "unset", "message": ""}, "attributes": {}
            }]
        });
        let trace: TraceJson = serde_json::from_value(json).expect("parse");
        assert_eq!(trace.spans[0].service, "frontend");
        assert!(render(&trace).contains("SERVER"));
    }
}
