//! Starts the demo's processes and guarantees none outlives the demo: each child runs in its
//! own process group (so Ctrl-C reaches only the runner, which then stops them in order) and is
//! bound to the runner's life with `PR_SET_PDEATHSIG` (so even a SIGKILLed runner leaves no
//! orphans). When any child dies, the runner learns it at once and shuts the rest down.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use futures::future::select_all;
use tokio::process::{Child, Command};

use super::plan::ProcessSpec;

/// How long a child gets to exit after SIGTERM before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("creating log file {path:?}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting {name} ({program:?}): {source}")]
    Spawn {
        name: String,
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

struct Supervised {
    name: String,
    child: Child,
    log: PathBuf,
}

pub struct Supervisor {
    log_dir: PathBuf,
    children: Vec<Supervised>,
}

impl Supervisor {
    pub fn new(log_dir: &Path) -> Self {
        Self {
            log_dir: log_dir.to_owned(),
            children: Vec::new(),
        }
    }

    /// Starts `spec` with stdout and stderr in `<log dir>/<name>.log`; returns the log path.
    pub fn spawn(&mut self, spec: &ProcessSpec) -> Result<PathBuf, SuperviseError> {
        let log = self.log_dir.join(format!("{}.log", spec.name));
        let log_error = |source| SuperviseError::Log {
            path: log.clone(),
            source,
        };
        let stdout = File::create(&log).map_err(log_error)?;
        let stderr = stdout.try_clone().map_err(log_error)?;
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        // SAFETY: the closure runs in the forked child before exec and only makes two
        // async-signal-safe system calls (setpgid, prctl); it touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|source| SuperviseError::Spawn {
            name: spec.name.clone(),
            program: spec.program.clone(),
            source,
        })?;
        self.children.push(Supervised {
            name: spec.name.clone(),
            child,
            log: log.clone(),
        });
        Ok(log)
    }

    /// Whether the named child has already exited (and how).
    pub fn exited(&mut self, name: &str) -> Option<ExitStatus> {
        self.children
            .iter_mut()
            .find(|c| c.name == name)
            .and_then(|c| c.child.try_wait().ok().flatten())
    }

    /// Resolves when the first child exits: its name, status and log file. Never resolves
    /// when there are no children.
    pub async fn first_exit(&mut self) -> (String, std::io::Result<ExitStatus>, PathBuf) {
        if self.children.is_empty() {
            return std::future::pending().await;
        }
        let waits = self.children.iter_mut().map(|c| Box::pin(c.child.wait()));
        let (status, index, _) = select_all(waits).await;
        let child = &self.children[index];
        (child.name.clone(), status, child.log.clone())
    }

    /// SIGTERM to every child, callers first (reverse start order); waits, then SIGKILLs
    /// whatever is still running.
    pub async fn shutdown(&mut self) {
        for supervised in self.children.iter().rev() {
            if let Some(pid) = supervised.child.id().and_then(|id| i32::try_from(id).ok()) {
                // SAFETY: plain kill(2) on a pid we spawned and have not reaped yet.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
        for supervised in self.children.iter_mut().rev() {
            match tokio::time::timeout(STOP_DEADLINE, supervised.child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    eprintln!("  {} did not stop in time; killing it", supervised.name);
                    let _ = supervised.child.start_kill();
                    let _ = supervised.child.wait().await;
                }
            }
        }
        self.children.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::plan::Readiness;

    fn spec(name: &str, script: &str) -> ProcessSpec {
        ProcessSpec {
            name: name.into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("DEMO_GREETING".into(), "hello".into())],
            ready: Readiness { url: String::new() },
        }
    }

    #[tokio::test]
    async fn reports_the_first_child_to_die_and_stops_the_rest() {
        let logs = tempfile::tempdir().expect("tempdir");
        let mut supervisor = Supervisor::new(logs.path());
        supervisor
            .spawn(&spec("sleeper", "exec sleep 600"))
            .expect("spawn sleeper");
        let log = supervisor
            .spawn(&spec("crasher", "echo \"$DEMO_GREETING\"; exit 3"))
            .expect("spawn crasher");
        let (name, status, reported_log) =
            tokio::time::timeout(Duration::from_secs(60), supervisor.first_exit())
                .await
                .expect("a child exited");
        assert_eq!(name, "crasher");
        assert_eq!(status.expect("status").code(), Some(3));
        assert_eq!(reported_log, log);
        assert_eq!(std::fs::read_to_string(&log).expect("log"), "hello\n");
        assert!(supervisor.exited("sleeper").is_none());

        let sleeper_pid = supervisor.children[0].child.id().expect("pid");
        tokio::time::timeout(Duration::from_secs(60), supervisor.shutdown())
            .await
            .expect("shutdown in time");
        // Reaped: the pid no longer names our child.
        let alive = unsafe { libc::kill(sleeper_pid as i32, 0) } == 0;
        assert!(!alive, "sleeper still running after shutdown");
    }

    #[tokio::test]
    async fn children_get_their_own_process_group() {
        let logs = tempfile::tempdir().expect("tempdir");
        let mut supervisor = Supervisor::new(logs.path());
        let log = supervisor
            .spawn(&spec(
                "group",
                "read -r pid comm state ppid pgrp rest < /proc/$$/stat; echo $pgrp; echo $$",
            ))
            .expect("spawn");
        let (_, status, _) = tokio::time::timeout(Duration::from_secs(60), supervisor.first_exit())
            .await
            .expect("exit");
        assert!(status.expect("status").success());
        let output = std::fs::read_to_string(log).expect("log");
        let mut lines = output.lines().map(str::trim);
        let pgid = lines.next().expect("pgid line");
        let pid = lines.next().expect("pid line");
        assert_eq!(pgid, pid, "child should lead its own process group");
    }
}
