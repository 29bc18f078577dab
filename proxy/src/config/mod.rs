//! Every setting of `meshtrace-proxy`: the command line and the environment, read here once.
//!
//! `MESHTRACE_*` variables (for export, the standard `OTEL_*` ones) are mirrored by flags; the
//! flag wins. This module holds the command line and `run`'s listeners, timeouts and logs;
//! [`trace`], [`export`] and [`init`] hold the settings of those subsystems. Nothing outside
//! `config` reads the environment or knows clap: the subsystems take the typed values built
//! here. Parsing is pure (no I/O), so every knob and its default is unit-tested here.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

pub mod await_ready;
pub mod cni;
pub mod export;
pub mod init;
pub mod trace;

pub use await_ready::AwaitReadyArgs;
pub use export::ExportArgs;
pub use init::{InitArgs, IptablesMode};
pub use meshtrace_ports::PortList;
pub use trace::{ContextInference, PropagationFormat, TraceArgs, TraceResponse};

use crate::forward::head::HeadLimits;
use crate::meta::Direction;

/// Ports that skip protocol detection by default: server-speaks-first protocols (SMTP, MySQL,
/// Galera, PostgreSQL, Redis, Elasticsearch transport, memcached), as in Linkerd.
pub const DEFAULT_OPAQUE_PORTS: &str = "25,587,3306,4444,5432,6379,9300,11211";

/// The default bound on a request or response head: 64 KiB (Envoy's is 60 KiB).
pub const DEFAULT_MAX_HEADER_BYTES: u32 = 64 * 1024;

/// The default budget for unfinished request heads: 32 MiB, an eighth of the injector's 256 MiB
/// memory limit.
pub const DEFAULT_MAX_PENDING_HEAD_BYTES: usize = 32 * 1024 * 1024;

/// meshtrace sidecar proxy: forwards a pod's inbound and outbound traffic unchanged and traces
/// every HTTP hop.
///
/// Every flag can also be set through the environment variable shown with it.
#[derive(clap::Parser)]
#[command(
    name = "meshtrace-proxy",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    run: Config,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Run the proxy (the default when no subcommand is given).
    Run(Box<Config>),
    /// Program the pod's iptables rules that redirect traffic to the proxy (init container).
    Init(InitArgs),
    /// Wait until this pod's proxy reports ready on its admin port (postStart hook).
    AwaitReady(AwaitReadyArgs),
}

/// What the command line asks for.
pub enum Invocation {
    /// `meshtrace-proxy [run] [FLAGS]`.
    Run(Box<Config>),
    /// `meshtrace-proxy init [FLAGS]`.
    Init(InitArgs),
    /// `meshtrace-proxy await-ready [--timeout 2m]`.
    AwaitReady(AwaitReadyArgs),
}

impl Invocation {
    /// Parses the process's arguments and environment; prints help, version or a usage error
    /// and exits where clap does.
    pub fn from_command_line() -> Invocation {
        let cli = <Cli as clap::Parser>::parse();
        match cli.command {
            Some(Command::Init(args)) => Invocation::Init(args),
            Some(Command::AwaitReady(args)) => Invocation::AwaitReady(args),
            Some(Command::Run(config)) => Invocation::Run(config),
            None => Invocation::Run(Box::new(cli.run)),
        }
    }
}

/// Everything `meshtrace-proxy run` can be told.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Addresses of the inbound listener (traffic from other pods to the local application,
    /// redirected here by iptables): one or more, comma-separated, e.g.
    /// `0.0.0.0:4143,[::]:4143` for a dual-stack pod (IPv6 listeners are IPv6-only).
    #[arg(long, env = "MESHTRACE_INBOUND_ADDR", default_value = "0.0.0.0:4143")]
    pub inbound_addr: ListenAddrs,

    /// Addresses of the outbound listener (traffic from the local application, redirected here
    /// by iptables, or sent here explicitly with `http_proxy=http://127.0.0.1:4140`): one or
    /// more, comma-separated, e.g. `127.0.0.1:4140,[::1]:4140` for a dual-stack pod.
    #[arg(
        long,
        env = "MESHTRACE_OUTBOUND_ADDR",
        default_value = "127.0.0.1:4140"
    )]
    pub outbound_addr: ListenAddrs,

    /// Address of the admin server (/live, /ready, /metrics, /shutdown).
    #[arg(long, env = "MESHTRACE_ADMIN_ADDR", default_value = "0.0.0.0:4191")]
    pub admin_addr: SocketAddr,

    /// Fixed `host:port` every inbound connection is forwarded to, instead of its original
    /// destination (for running without iptables). Resolved once at startup.
    #[arg(long, env = "MESHTRACE_INBOUND_TARGET", value_name = "HOST:PORT")]
    pub inbound_target: Option<String>,

    /// How long to wait for a client's first bytes before treating the connection as opaque TCP
    /// (e.g. `10s`, `500ms`).
    #[arg(long, env = "MESHTRACE_DETECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub detect_timeout: Duration,

    /// How long an HTTP/1 client may take to send a request's head, counted from the head's
    /// first byte (nginx's `client_header_timeout`); a client that takes longer is answered
    /// `408` with `meshtrace-proxy-error: request_head_timeout` and the connection closed. Time
    /// between requests does not count (see `MESHTRACE_HTTP1_IDLE_TIMEOUT`). On h2, an open
    /// header block older than this ends the connection. `0`: unbounded.
    #[arg(long, env = "MESHTRACE_HTTP1_HEADER_READ_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub http1_header_read_timeout: Duration,

    /// How long an HTTP/1 keep-alive connection may sit idle between requests before the proxy
    /// closes it; `0` keeps it as long as the client does, as the application would.
    #[arg(long, env = "MESHTRACE_HTTP1_IDLE_TIMEOUT", default_value = "0", value_parser = parse_duration)]
    pub http1_idle_timeout: Duration,

    /// The largest request head (request line and fields) an HTTP/1 client may send, in bytes;
    /// a larger one is answered `431` with `meshtrace-proxy-error: request_head_too_large` and
    /// nothing of it is forwarded. Also bounds response heads from upstreams (a larger one is a
    /// `502`) and, as `SETTINGS_MAX_HEADER_LIST_SIZE`, h2 header lists in both directions.
    #[arg(long, env = "MESHTRACE_HTTP1_MAX_HEADER_BYTES", default_value_t = DEFAULT_MAX_HEADER_BYTES, value_parser = clap::value_parser!(u32).range(1024..))]
    pub http1_max_header_bytes: u32,

    /// Which HTTP/1 implementation serves clients and talks to upstreams: `meshtrace`, the
    /// proxy's own codec (heads forwarded with their bytes, field order and case; buffers held
    /// only while a message is in flight), or `hyper`, the previous path, kept as the reference.
    #[arg(long, env = "MESHTRACE_HTTP1_CODEC", value_enum, default_value_t = Http1Codec::Meshtrace)]
    pub http1_codec: Http1Codec,

    /// The most bytes all unfinished HTTP/1 request heads of the process may hold together
    /// (heads that span reads); past it, the connections holding the largest ones are answered
    /// `431` with `meshtrace-proxy-error: request_head_budget` and closed until the rest fit.
    /// `0`: no budget.
    #[arg(long, env = "MESHTRACE_MAX_PENDING_HEAD_BYTES", default_value_t = DEFAULT_MAX_PENDING_HEAD_BYTES)]
    pub max_pending_head_bytes: usize,

    /// Most client connections each listener keeps open (each may hold an upstream connection
    /// too); at the cap, or at the process's fd limit, idle connections are shed, oldest first,
    /// to admit new clients. `0`: derived from the fd limit, (RLIMIT_NOFILE - 64) / 4.
    #[arg(long, env = "MESHTRACE_MAX_CONNECTIONS", default_value = "0")]
    pub max_connections: usize,

    /// Destination ports forwarded as opaque TCP without protocol detection, for
    /// server-speaks-first protocols: a comma-separated list of ports and ranges
    /// (`25,3306,8000-8100`, ports 1-65535); empty for none.
    #[arg(long, env = "MESHTRACE_OPAQUE_PORTS", default_value = DEFAULT_OPAQUE_PORTS)]
    pub opaque_ports: PortList,

    /// Inbound: how long to wait for a TCP connection to the local application.
    #[arg(long, env = "MESHTRACE_INBOUND_CONNECT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub inbound_connect_timeout: Duration,

    /// Outbound: how long to wait for a TCP connection to the destination.
    #[arg(long, env = "MESHTRACE_OUTBOUND_CONNECT_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub outbound_connect_timeout: Duration,

    /// Inbound: how long to wait for the application's response headers before answering 504;
    /// `0` waits forever.
    #[arg(long, env = "MESHTRACE_INBOUND_RESPONSE_TIMEOUT", default_value = "0", value_parser = parse_duration)]
    pub inbound_response_timeout: Duration,

    /// Outbound: how long to wait for the destination's response headers before answering 504;
    /// `0` waits forever.
    #[arg(long, env = "MESHTRACE_OUTBOUND_RESPONSE_TIMEOUT", default_value = "0", value_parser = parse_duration)]
    pub outbound_response_timeout: Duration,

    /// Inbound: how long an idle keep-alive connection to the application stays pooled.
    #[arg(long, env = "MESHTRACE_INBOUND_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub inbound_idle_timeout: Duration,

    /// Outbound: how long an idle keep-alive connection to a destination stays pooled.
    #[arg(long, env = "MESHTRACE_OUTBOUND_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub outbound_idle_timeout: Duration,

    /// After SIGTERM/SIGINT or POST /shutdown: how long in-flight requests and tunnels may take
    /// to finish before the proxy exits anyway.
    #[arg(long, env = "MESHTRACE_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// After the drain: how long the exporter may take to send the spans it still holds
    /// (retries included) before the proxy exits and counts the rest as dropped.
    #[arg(long, env = "MESHTRACE_EXPORT_FLUSH_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub export_flush_timeout: Duration,

    /// Runtime worker threads. A sidecar shares its pod's CPU with the application, so one
    /// thread is the default (as in linkerd2-proxy): no cross-thread wakeups, less memory. `0`
    /// means one per CPU core.
    #[arg(long, env = "MESHTRACE_WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,

    /// Log filter, `tracing-subscriber` `Targets` syntax (`info`, `info,meshtrace_proxy=debug`).
    #[arg(long, env = "MESHTRACE_LOG", default_value = "info")]
    pub log: String,

    /// Log format.
    #[arg(long, env = "MESHTRACE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub trace: TraceArgs,

    #[command(flatten)]
    pub export: ExportArgs,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

/// The HTTP/1 implementation of the data path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Http1Codec {
    /// The proxy's own codec on `httparse` (`forward::h1`).
    #[default]
    Meshtrace,
    /// hyper's HTTP/1 server and client.
    Hyper,
}

/// The settings that differ between the two directions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectionConfig {
    pub connect_timeout: Duration,
    /// `None`: wait forever.
    pub response_timeout: Option<Duration>,
    pub idle_timeout: Duration,
    /// The largest response head (HTTP/1) or header list (h2) accepted from upstreams.
    pub max_header_bytes: usize,
    pub http1_codec: Http1Codec,
}

impl Default for Config {
    /// The documented defaults, i.e. what an empty command line and environment give.
    fn default() -> Self {
        Config {
            inbound_addr: SocketAddr::from(([0, 0, 0, 0], 4143)).into(),
            outbound_addr: SocketAddr::from(([127, 0, 0, 1], 4140)).into(),
            admin_addr: SocketAddr::from(([0, 0, 0, 0], 4191)),
            inbound_target: None,
            detect_timeout: Duration::from_secs(10),
            http1_header_read_timeout: Duration::from_secs(60),
            http1_idle_timeout: Duration::ZERO,
            http1_max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            http1_codec: Http1Codec::default(),
            max_pending_head_bytes: DEFAULT_MAX_PENDING_HEAD_BYTES,
            max_connections: 0,
            opaque_ports: DEFAULT_OPAQUE_PORTS
                .parse()
                .unwrap_or_else(|_| PortList::default()),
            inbound_connect_timeout: Duration::from_secs(1),
            outbound_connect_timeout: Duration::from_secs(3),
            inbound_response_timeout: Duration::ZERO,
            outbound_response_timeout: Duration::ZERO,
            inbound_idle_timeout: Duration::from_secs(60),
            outbound_idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            export_flush_timeout: Duration::from_secs(5),
            worker_threads: 1,
            log: "info".to_string(),
            log_format: LogFormat::Plain,
            trace: TraceArgs::default(),
            export: ExportArgs::default(),
        }
    }
}

impl Config {
    /// Listeners on 127.0.0.1 port 0 (the OS picks free ports), for tests and embedding.
    pub fn loopback_ephemeral() -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Config {
            inbound_addr: any.into(),
            outbound_addr: any.into(),
            admin_addr: any,
            ..Config::default()
        }
    }

    /// The bounds on HTTP/1 request heads (and, by size, on every head).
    pub fn head_limits(&self) -> HeadLimits {
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        HeadLimits {
            read_timeout: nonzero(self.http1_header_read_timeout),
            idle_timeout: nonzero(self.http1_idle_timeout),
            max_bytes: self.http1_max_header_bytes as usize,
        }
    }

    pub fn direction(&self, direction: Direction) -> DirectionConfig {
        let (connect, response, idle) = match direction {
            Direction::Inbound => (
                self.inbound_connect_timeout,
                self.inbound_response_timeout,
                self.inbound_idle_timeout,
            ),
            Direction::Outbound => (
                self.outbound_connect_timeout,
                self.outbound_response_timeout,
                self.outbound_idle_timeout,
            ),
        };
        DirectionConfig {
            connect_timeout: connect,
            response_timeout: (!response.is_zero()).then_some(response),
            idle_timeout: idle,
            max_header_bytes: self.http1_max_header_bytes as usize,
            http1_codec: self.http1_codec,
        }
    }
}

/// The addresses one listener binds: one socket each (an IPv6 one IPv6-only, so that
/// `0.0.0.0` and `[::]` can share a port and each connection keeps its own family).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenAddrs(Vec<SocketAddr>);

impl ListenAddrs {
    pub fn iter(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.0.iter().copied()
    }
}

impl From<SocketAddr> for ListenAddrs {
    fn from(addr: SocketAddr) -> Self {
        ListenAddrs(vec![addr])
    }
}

impl FromStr for ListenAddrs {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut addrs = Vec::new();
        for part in text.split(',').map(str::trim) {
            let addr = part
                .parse::<SocketAddr>()
                .map_err(|_| ParseError::ListenAddr(part.to_string()))?;
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        Ok(ListenAddrs(addrs))
    }
}

impl fmt::Display for ListenAddrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, addr) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{addr}")?;
        }
        Ok(())
    }
}

/// A configuration value that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error(
        "invalid duration {0:?}: expected a number with an optional unit (ms, s, m, h), e.g. 10s"
    )]
    Duration(String),
    #[error(
        "invalid listen address {0:?}: expected e.g. 0.0.0.0:4143 or [::]:4143, comma-separated"
    )]
    ListenAddr(String),
}

/// Parses `10s`, `250ms`, `1.5m`, `2h`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, ParseError> {
    let text = text.trim();
    let invalid = || ParseError::Duration(text.to_string());
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| invalid())?;
    let seconds_per_unit = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(invalid()),
    };
    Duration::try_from_secs_f64(number * seconds_per_unit).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("ten seconds").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn listen_address_lists() {
        let dual: ListenAddrs = "0.0.0.0:4143, [::]:4143".parse().unwrap();
        let addrs: Vec<SocketAddr> = dual.iter().collect();
        assert_eq!(
            addrs,
            [
                "0.0.0.0:4143".parse().unwrap(),
                "[::]:4143".parse().unwrap()
            ]
        );
        assert_eq!(dual.to_string(), "0.0.0.0:4143,[::]:4143");
        for bad in ["", "0.0.0.0", "0.0.0.0:4143,", "::1:4140"] {
            assert!(bad.parse::<ListenAddrs>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn flag_defaults_match_the_default_config() {
        // Guards the documented defaults against drifting apart from `Config::default()`.
        let parsed = Cli::try_parse_from(["meshtrace-proxy"]).unwrap().config;
        assert_eq!(format!("{parsed:?}"), format!("{:?}", Config::default()));
    }

    #[test]
    fn flags_override_defaults() {
        let parsed = Cli::try_parse_from([
            "meshtrace-proxy",
            "--inbound-addr",
            "127.0.0.1:1",
            "--inbound-target",
            "localhost:8080",
            "--outbound-response-timeout",
            "500ms",
            "--opaque-ports",
            "",
            "--log-format",
            "json",
        ])
        .unwrap()
        .config;
        assert_eq!(
            parsed.inbound_addr,
            SocketAddr::from(([127, 0, 0, 1], 1)).into()
        );
        assert_eq!(parsed.inbound_target.as_deref(), Some("localhost:8080"));
        assert!(parsed.opaque_ports.is_empty());
        assert_eq!(parsed.log_format, LogFormat::Json);
        let outbound = parsed.direction(Direction::Outbound);
        assert_eq!(outbound.response_timeout, Some(Duration::from_millis(500)));
        assert_eq!(outbound.connect_timeout, Duration::from_secs(3));
        assert_eq!(parsed.direction(Direction::Inbound).response_timeout, None);
    }

    /// Set in the environment of the child process that
    /// [`a_flag_wins_over_its_environment_variable`] starts.
    const CHILD: &str = "MESHTRACE_CONFIG_TEST_CHILD";

    /// The process environment is shared by every test thread, so the variables are set only
    /// in a child process: this test binary again, running this one test.
    #[test]
    fn a_flag_wins_over_its_environment_variable() {
        if std::env::var_os(CHILD).is_some() {
            return flag_wins_in_child();
        }
        let name = "config::tests::a_flag_wins_over_its_environment_variable";
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--test-threads=1"])
            .env(CHILD, "1")
            .env("MESHTRACE_DETECT_TIMEOUT", "7s")
            .env("MESHTRACE_OUTBOUND_CONNECT_TIMEOUT", "9s")
            .env("MESHTRACE_SAMPLE_RATE", "0.25")
            .env("MESHTRACE_OPAQUE_PORTS", "1-2")
            .env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://from-env:4318")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn flag_wins_in_child() {
        let config = Cli::try_parse_from([
            "meshtrace-proxy",
            "--detect-timeout=2s",
            "--sample-rate=0.5",
            "--opaque-ports=3",
            "--otlp-protocol=grpc",
        ])
        .unwrap()
        .config;
        // Flags win over their variables...
        assert_eq!(config.detect_timeout, Duration::from_secs(2));
        assert_eq!(config.trace.sample_rate, 0.5);
        assert_eq!(config.opaque_ports.to_string(), "3");
        // ...variables without a flag still count...
        let outbound = config.direction(Direction::Outbound);
        assert_eq!(outbound.connect_timeout, Duration::from_secs(9));
        // ...and a flag for the generic OTLP setting does not beat the per-signal variable.
        let export = config.export.config().unwrap().on().unwrap();
        assert_eq!(export.protocol, crate::export::Protocol::HttpProtobuf);
        assert_eq!(export.endpoint, "http://from-env:4318/v1/traces");
    }
}
