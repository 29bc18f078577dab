//! Shared by the load benchmarks (`mesh`, `overload`).

use std::path::{Path, PathBuf};

/// The release proxy binary the benchmarks start: `MESHTRACE_PROXY_BIN`, else
/// `target/release/meshtrace-proxy` beside the benchmark (`target/release/deps/<bench>-<hash>`).
/// Exits with a hint when it has not been built.
pub fn proxy_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MESHTRACE_PROXY_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("meshtrace-proxy"))
        .unwrap_or_default();
    if !path.exists() {
        eprintln!(
            "{} missing: build it first (`cargo build --release -p meshtrace-proxy`, or use \
             benches/run.sh) or set MESHTRACE_PROXY_BIN",
            path.display()
        );
        std::process::exit(2);
    }
    path
}
