//! What the demo starts and how it is wired, as a pure function of the flags: every port, every
//! environment variable, every readiness URL, testable without starting anything.
//!
//! Explicit-mode mesh on loopback: each app's `http_proxy` is its own proxy's outbound listener;
//! its upstream URL is the next service's proxy *inbound* listener, which forwards to that app
//! (`MESHTRACE_INBOUND_TARGET`). Traffic enters through the frontend proxy's inbound listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The three services, callers first.
pub const SERVICES: [&str; 3] = ["frontend", "backend-api-1", "backend-api-2"];

/// What each service copies onto its calls (`--forward`), in `SERVICES` order: the frontend
/// forwards nothing and backend-api-1 only `x-request-id`, like many real applications; the
/// proxies still connect their traces (sole request in flight, request id). backend-api-2
/// calls nothing.
pub const FORWARDS: [&str; 3] = ["none", "request-id", "trace-headers"];

/// Ports of one meshed service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServicePorts {
    pub app: u16,
    pub inbound: u16,
    pub outbound: u16,
    pub admin: u16,
}

/// Every port the demo uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortPlan {
    pub viewer_grpc: u16,
    pub viewer_http: u16,
    pub viewer_ui: u16,
    /// In `SERVICES` order.
    pub services: [ServicePorts; 3],
}

/// Where the spans go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Collector {
    /// Start `meshtrace-viewer` on the plan's viewer ports.
    BuiltInViewer,
    /// Send to this OTLP endpoint (e.g. Jaeger's `http://127.0.0.1:4317`) instead.
    External(String),
}

/// How to know a process is up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub url: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessSpec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub ready: Readiness,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// In start order: collector first, then the callees before their callers.
    pub processes: Vec<ProcessSpec>,
    /// Where the traffic generator sends requests (frontend's proxy, inbound side).
    pub entry_url: String,
    /// The viewer's UI, when it is built in.
    pub viewer_url: Option<String>,
}

pub struct PlanInput<'a> {
    pub bin_dir: &'a Path,
    pub ports: &'a PortPlan,
    pub collector: &'a Collector,
    /// `MESHTRACE_SAMPLE_RATE` of the proxies.
    pub sample_rate: f64,
    /// `OTEL_BSP_SCHEDULE_DELAY` of the proxies, in milliseconds.
    pub export_delay_ms: u64,
    /// Seed of backend-api-2's slow/fail draws.
    pub seed: Option<u64>,
}

fn local(port: u16) -> String {
    SocketAddr::from(([127, 0, 0, 1], port)).to_string()
}

pub fn plan(input: &PlanInput<'_>) -> Plan {
    let ports = input.ports;
    let mut processes = Vec::new();
    let (otlp_endpoint, viewer_url) = match input.collector {
        Collector::External(endpoint) => (endpoint.clone(), None),
        Collector::BuiltInViewer => {
            let ui = format!("http://{}", local(ports.viewer_ui));
            processes.push(ProcessSpec {
                name: "meshtrace-viewer".into(),
                program: input.bin_dir.join("meshtrace-viewer"),
                args: vec![
                    "--otlp-grpc-addr".into(),
                    local(ports.viewer_grpc),
                    "--otlp-http-addr".into(),
                    local(ports.viewer_http),
                    "--ui-addr".into(),
                    local(ports.viewer_ui),
                ],
                env: Vec::new(),
                ready: Readiness {
                    url: format!("{ui}/api/services"),
                },
            });
            (format!("http://{}", local(ports.viewer_grpc)), Some(ui))
        }
    };

    // Callees first, so a caller's upstream is up when it starts.
    for (index, service) in SERVICES.iter().enumerate().rev() {
        let own = ports.services[index];
        let mut app_args = vec![
            "--role".to_string(),
            service.to_string(),
            "--listen".into(),
            local(own.app),
        ];
        if let Some(next) = ports.services.get(index + 1) {
            app_args.push("--upstream".into());
            app_args.push(format!("http://{}", local(next.inbound)));
        }
        app_args.push("--forward".into());
        app_args.push(FORWARDS[index].into());
        if let Some(seed) = input.seed {
            app_args.push("--seed".into());
            app_args.push(seed.to_string());
        }
        processes.push(ProcessSpec {
            name: service.to_string(),
            program: input.bin_dir.join("sample-service"),
            args: app_args,
            env: vec![
                (
                    "http_proxy".into(),
                    format!("http://{}", local(own.outbound)),
                ),
                (
                    "HTTP_PROXY".into(),
                    format!("http://{}", local(own.outbound)),
                ),
                ("no_proxy".into(), String::new()),
                ("NO_PROXY".into(), String::new()),
            ],
            ready: Readiness {
                url: format!("http://{}/healthz", local(own.app)),
            },
        });
        processes.push(ProcessSpec {
            name: format!("{service}-proxy"),
            program: input.bin_dir.join("meshtrace-proxy"),
            args: Vec::new(),
            env: vec![
                ("MESHTRACE_INBOUND_ADDR".into(), local(own.inbound)),
                ("MESHTRACE_OUTBOUND_ADDR".into(), local(own.outbound)),
                ("MESHTRACE_ADMIN_ADDR".into(), local(own.admin)),
                ("MESHTRACE_INBOUND_TARGET".into(), local(own.app)),
                (
                    "MESHTRACE_SAMPLE_RATE".into(),
                    input.sample_rate.to_string(),
                ),
                ("OTEL_SERVICE_NAME".into(), service.to_string()),
                ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), otlp_endpoint.clone()),
                ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "grpc".into()),
                (
                    "OTEL_BSP_SCHEDULE_DELAY".into(),
                    input.export_delay_ms.to_string(),
                ),
            ],
            ready: Readiness {
                url: format!("http://{}/ready", local(own.admin)),
            },
        });
    }
    Plan {
        processes,
        entry_url: format!("http://{}/", local(ports.services[0].inbound)),
        viewer_url,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports() -> PortPlan {
        let service = |base: u16| ServicePorts {
            app: base,
            inbound: base + 1,
            outbound: base + 2,
            admin: base + 3,
        };
        PortPlan {
            viewer_grpc: 4317,
            viewer_http: 4318,
            viewer_ui: 16686,
            services: [service(9000), service(9010), service(9020)],
        }
    }

    fn env<'a>(spec: &'a ProcessSpec, key: &str) -> &'a str {
        spec.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{} has no {key}", spec.name))
    }

    fn find<'a>(plan: &'a Plan, name: &str) -> &'a ProcessSpec {
        plan.processes
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name}"))
    }

    #[test]
    fn wires_each_app_through_its_own_proxy_to_the_next_proxy() {
        let ports = ports();
        let plan = plan(&PlanInput {
            bin_dir: Path::new("/bin"),
            ports: &ports,
            collector: &Collector::BuiltInViewer,
            sample_rate: 0.5,
            export_delay_ms: 200,
            seed: Some(3),
        });
        let names: Vec<&str> = plan.processes.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "meshtrace-viewer",
                "backend-api-2",
                "backend-api-2-proxy",
                "backend-api-1",
                "backend-api-1-proxy",
                "frontend",
                "frontend-proxy"
            ]
        );
        assert_eq!(plan.entry_url, "http://127.0.0.1:9001/");
        assert_eq!(plan.viewer_url.as_deref(), Some("http://127.0.0.1:16686"));

        let frontend = find(&plan, "frontend");
        assert_eq!(env(frontend, "http_proxy"), "http://127.0.0.1:9002");
        assert!(frontend
            .args
            .windows(2)
            .any(|w| w == ["--upstream", "http://127.0.0.1:9011"]));
        assert!(frontend.args.windows(2).any(|w| w == ["--forward", "none"]));
        let api1 = find(&plan, "backend-api-1");
        assert!(api1
            .args
            .windows(2)
            .any(|w| w == ["--forward", "request-id"]));
        let api2 = find(&plan, "backend-api-2");
        assert!(!api2.args.contains(&"--upstream".to_string()));
        assert!(api2.args.windows(2).any(|w| w == ["--seed", "3"]));

        let proxy = find(&plan, "backend-api-1-proxy");
        assert_eq!(env(proxy, "MESHTRACE_INBOUND_ADDR"), "127.0.0.1:9011");
        assert_eq!(env(proxy, "MESHTRACE_OUTBOUND_ADDR"), "127.0.0.1:9012");
        assert_eq!(env(proxy, "MESHTRACE_INBOUND_TARGET"), "127.0.0.1:9010");
        assert_eq!(env(proxy, "OTEL_SERVICE_NAME"), "backend-api-1");
        assert_eq!(
            env(proxy, "OTEL_EXPORTER_OTLP_ENDPOINT"),
            "http://127.0.0.1:4317"
        );
        assert_eq!(env(proxy, "MESHTRACE_SAMPLE_RATE"), "0.5");
        assert_eq!(proxy.ready.url, "http://127.0.0.1:9013/ready");
        assert_eq!(proxy.program, Path::new("/bin/meshtrace-proxy"));
    }

    #[test]
    fn an_external_collector_replaces_the_viewer() {
        let ports = ports();
        let plan = plan(&PlanInput {
            bin_dir: Path::new("/bin"),
            ports: &ports,
            collector: &Collector::External("http://jaeger:4317".into()),
            sample_rate: 1.0,
            export_delay_ms: 200,
            seed: None,
        });
        assert!(plan.processes.iter().all(|p| p.name != "meshtrace-viewer"));
        assert_eq!(plan.viewer_url, None);
        assert_eq!(
            env(find(&plan, "frontend-proxy"), "OTEL_EXPORTER_OTLP_ENDPOINT"),
            "http://jaeger:4317"
        );
    }
}
