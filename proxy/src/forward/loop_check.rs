//! The loop check: nothing is forwarded to the proxy's own listeners, where it would come back
//! to the proxy forever. Used when a connection is accepted (its original destination) and, in
//! explicit mode, for every destination a request names.

use std::net::SocketAddr;
use std::sync::Arc;

/// The addresses the proxy listens on (inbound, outbound, admin), as bound.
#[derive(Clone, Debug)]
pub struct OwnListeners(Arc<[SocketAddr]>);

impl OwnListeners {
    pub fn new(listeners: impl Into<Arc<[SocketAddr]>>) -> Self {
        OwnListeners(listeners.into())
    }

    /// Whether `addr` reaches one of our own listeners: a connection there would loop forever.
    ///
    /// A listener bound to the unspecified address accepts on every local address, so a target
    /// on one of our ports counts as ours if it is loopback, unspecified, or the address the
    /// current connection arrived on (`conn_local`, the pod IP). Erring towards "ours" only
    /// refuses a connection that would otherwise be at risk of looping.
    pub fn reached_by(&self, addr: SocketAddr, conn_local: SocketAddr) -> bool {
        self.0.iter().any(|listener| {
            listener.port() == addr.port()
                && (addr.ip() == listener.ip()
                    || addr.ip().to_canonical().is_loopback()
                    || addr.ip().is_unspecified()
                    || addr.ip() == conn_local.ip()
                    || to_canonical(addr) == to_canonical(*listener))
        })
    }

    /// The first of `targets` that reaches one of our own listeners.
    pub fn first_reached_by(
        &self,
        targets: &[SocketAddr],
        conn_local: SocketAddr,
    ) -> Option<SocketAddr> {
        targets
            .iter()
            .copied()
            .find(|target| self.reached_by(*target, conn_local))
    }
}

fn to_canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn own_listeners_are_detected() {
        let listeners = OwnListeners::new([addr("0.0.0.0:4143"), addr("127.0.0.1:4140")]);
        let pod = addr("10.1.2.3:4143");
        assert!(listeners.reached_by(addr("127.0.0.1:4140"), pod));
        assert!(listeners.reached_by(addr("127.0.0.1:4143"), pod));
        assert!(listeners.reached_by(addr("10.1.2.3:4143"), pod));
        assert!(listeners.reached_by(addr("[::1]:4140"), pod));
        assert!(listeners.reached_by(addr("[::ffff:127.0.0.1]:4140"), pod));
        assert!(!listeners.reached_by(addr("10.1.2.3:8080"), pod));
        assert!(!listeners.reached_by(addr("10.9.9.9:4143"), pod));
        let targets = [addr("10.9.9.9:4143"), addr("[::1]:4140")];
        assert_eq!(
            listeners.first_reached_by(&targets, pod),
            Some(addr("[::1]:4140"))
        );
    }
}
