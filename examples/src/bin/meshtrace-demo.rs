//! `meshtrace-demo` (`cargo demo`): the local mesh demo, see `--help`.

use clap::Parser;
use meshtrace_examples::demo::{run, DemoConfig};

/// Runs the sample app (frontend → backend-api-1 → backend-api-2) on loopback, each service
/// behind its own meshtrace-proxy (explicit mode, no iptables), plus the trace viewer; drives
/// traffic, prints a terminal waterfall of a finished trace and the viewer URL, and stops every
/// process on Ctrl-C.
#[derive(Parser, Debug)]
#[command(name = "meshtrace-demo", version)]
struct Cli {
    #[command(flatten)]
    demo: DemoConfig,
}

// One thread: children are bound to the spawning thread's life (PR_SET_PDEATHSIG), and the
// main thread lives as long as the demo.
#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    // `cargo demo` is an alias ending in `--`, so both `cargo demo --rate 5` and the habitual
    // `cargo demo -- --rate 5` must work: the latter arrives as `-- --rate 5`.
    let args = std::env::args_os()
        .enumerate()
        .filter(|(index, arg)| !(*index == 1 && arg == "--"))
        .map(|(_, arg)| arg);
    let cli = Cli::parse_from(args);
    match run(cli.demo).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("meshtrace-demo: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
