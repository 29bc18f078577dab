//! Which iptables backend to program, and running its commands.
//!
//! A node's kernel can hold both legacy xtables and nf_tables rules, and the kubelet, the CNI
//! plugin and kube-proxy already picked one; rules written to the other backend would be
//! evaluated in a surprising order or be invisible to the operator's tools. So, like the
//! Kubernetes `iptables-wrapper` and service-mesh init steps, `auto` picks the backend that
//! already has rules, else nft when `iptables-nft` works, else legacy.

use std::io::Write as _;
use std::process::{Command, Stdio};

use super::rules::{count_rules, Family};
use super::InitError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
}

impl Backend {
    pub const fn name(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }

    pub const fn save_program(self, family: Family) -> &'static str {
        match (self, family) {
            (Backend::Nft, Family::V4) => "iptables-nft-save",
            (Backend::Nft, Family::V6) => "ip6tables-nft-save",
            (Backend::Legacy, Family::V4) => "iptables-legacy-save",
            (Backend::Legacy, Family::V6) => "ip6tables-legacy-save",
        }
    }

    pub const fn restore_program(self, family: Family) -> &'static str {
        match (self, family) {
            (Backend::Nft, Family::V4) => "iptables-nft-restore",
            (Backend::Nft, Family::V6) => "ip6tables-nft-restore",
            (Backend::Legacy, Family::V4) => "iptables-legacy-restore",
            (Backend::Legacy, Family::V6) => "ip6tables-legacy-restore",
        }
    }
}

/// What probing one backend found: the number of rules it already holds, or why it cannot be
/// used.
pub type Probe = Result<usize, String>;

/// The `auto` decision, given what `iptables-legacy-save` and `iptables-nft-save` reported.
pub fn choose_backend(legacy: &Probe, nft: &Probe) -> Result<Backend, InitError> {
    match (legacy, nft) {
        (Ok(legacy), Ok(nft)) if *legacy > *nft => Ok(Backend::Legacy),
        (_, Ok(_)) => Ok(Backend::Nft),
        (Ok(_), Err(_)) => Ok(Backend::Legacy),
        (Err(legacy), Err(nft)) => Err(InitError::NoBackend {
            legacy: legacy.clone(),
            nft: nft.clone(),
        }),
    }
}

/// Runs `iptables-{legacy,nft}-save` (read-only) and chooses.
pub fn detect() -> Result<Backend, InitError> {
    let probe = |backend: Backend| -> Probe {
        run(backend.save_program(Family::V4), &[], None)
            .map(|out| count_rules(&out))
            .map_err(|e| e.to_string())
    };
    let legacy = probe(Backend::Legacy);
    let nft = probe(Backend::Nft);
    tracing::debug!(?legacy, ?nft, "probed iptables backends");
    choose_backend(&legacy, &nft)
}

/// Runs a command to completion (feeding `stdin` if given) and returns its stdout; a failure
/// to start or a non-zero exit becomes an error naming the command and carrying its stderr.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, InitError> {
    let command_line = command_line(program, args);
    let spawn_error = |source| InitError::Spawn {
        command: command_line.clone(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A command that exits early closes the pipe; its exit status and stderr tell why, so a
        // write error here is not the interesting one.
        if let Err(error) = pipe.write_all(input.as_bytes()) {
            tracing::debug!(%error, command = %command_line, "writing stdin");
        }
    }
    let output = child.wait_with_output().map_err(spawn_error)?;
    if !output.status.success() {
        return Err(InitError::Failed {
            command: command_line,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

pub fn command_line(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_prefers_the_backend_that_has_rules() {
        let unusable = || Err::<usize, _>("not found".to_owned());
        // Fresh node: nft.
        assert_eq!(choose_backend(&Ok(0), &Ok(0)).unwrap(), Backend::Nft);
        // Legacy in use (kube-proxy on a legacy node).
        assert_eq!(choose_backend(&Ok(12), &Ok(0)).unwrap(), Backend::Legacy);
        // nft in use.
        assert_eq!(choose_backend(&Ok(0), &Ok(3)).unwrap(), Backend::Nft);
        // Both in use: the one with more rules; a tie goes to nft.
        assert_eq!(choose_backend(&Ok(2), &Ok(9)).unwrap(), Backend::Nft);
        assert_eq!(choose_backend(&Ok(9), &Ok(2)).unwrap(), Backend::Legacy);
        assert_eq!(choose_backend(&Ok(4), &Ok(4)).unwrap(), Backend::Nft);
        // Only one works.
        assert_eq!(choose_backend(&unusable(), &Ok(0)).unwrap(), Backend::Nft);
        assert_eq!(
            choose_backend(&Ok(0), &unusable()).unwrap(),
            Backend::Legacy
        );
        assert_eq!(
            choose_backend(&Ok(5), &unusable()).unwrap(),
            Backend::Legacy
        );
    }

    #[test]
    fn auto_without_any_backend_explains_both() {
        let err = choose_backend(&Err("legacy broke".into()), &Err("nft broke".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("legacy broke"), "{err}");
        assert!(err.contains("nft broke"), "{err}");
    }

    #[test]
    fn missing_program_names_the_command() {
        let err = run("meshtrace-no-such-program", &["-t", "nat"], None).unwrap_err();
        assert!(matches!(err, InitError::Spawn { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("meshtrace-no-such-program -t nat"), "{msg}");
    }

    #[test]
    fn failing_program_reports_status_and_stderr() {
        let err = run(
            "sh",
            &["-c", "cat >/dev/null; echo 'line 3 failed' >&2; exit 4"],
            Some("*nat\nCOMMIT\n"),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("sh -c"), "{msg}");
        assert!(msg.contains("line 3 failed"), "{msg}");
        assert!(msg.contains('4'), "{msg}");
    }

    #[test]
    fn successful_program_returns_stdout() {
        let out = run("sh", &["-c", "cat"], Some("*nat\nCOMMIT\n")).unwrap();
        assert_eq!(out, "*nat\nCOMMIT\n");
    }
}
