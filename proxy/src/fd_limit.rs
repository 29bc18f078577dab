//! The process's file descriptor limit: raised to the hard limit at start (a sidecar's every
//! connection costs a descriptor, its upstream side another), and the default connection cap
//! derived from it.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Descriptors kept out of the connection budget: listeners, the admin server, the exporter's
/// connections, DNS, logs, and upstream connections idling in the pool.
pub const RESERVED_FDS: u64 = 64;

/// Most connections per listener when the fd limit is unlimited.
const UNLIMITED_CAP: usize = 1 << 20;

/// The `RLIMIT_NOFILE` limits before and after [`raise_to_hard`]; `None` is unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdLimits {
    pub soft_before: Option<u64>,
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (what an unprivileged process may do) and
/// reports both. On failure the soft limit stays as it was, and the error is returned with it.
pub fn raise_to_hard() -> (FdLimits, Option<std::io::Error>) {
    let before = getrlimit(Resource::Nofile);
    let mut limits = FdLimits {
        soft_before: before.current,
        soft: before.current,
        hard: before.maximum,
    };
    if before.current == before.maximum {
        return (limits, None);
    }
    let raised = Rlimit {
        current: before.maximum,
        maximum: before.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            limits.soft = getrlimit(Resource::Nofile).current;
            (limits, None)
        }
        Err(error) => (limits, Some(error.into())),
    }
}

/// The current soft `RLIMIT_NOFILE` (`None`: unlimited).
pub fn soft_limit() -> Option<u64> {
    getrlimit(Resource::Nofile).current
}

/// The default `MESHTRACE_MAX_CONNECTIONS`: the descriptors left after [`RESERVED_FDS`],
/// shared by the two listeners, two per connection (the client's and its upstream's).
pub fn default_max_connections(soft: Option<u64>) -> usize {
    match soft {
        None => UNLIMITED_CAP,
        Some(soft) => {
            let per_listener = soft.saturating_sub(RESERVED_FDS) / 4;
            usize::try_from(per_listener).map_or(UNLIMITED_CAP, |cap| cap.clamp(1, UNLIMITED_CAP))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_leaves_room_for_both_listeners_and_upstreams() {
        assert_eq!(default_max_connections(Some(1024)), 240);
        assert_eq!(default_max_connections(Some(1_048_576)), 262_128);
        assert_eq!(default_max_connections(Some(10)), 1);
        assert_eq!(default_max_connections(None), UNLIMITED_CAP);
    }
}
