//! Listening sockets and the original destination of redirected connections.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

/// Binds a listener; port 0 lets the OS choose (see `local_addr`).
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// The destination the client dialed before iptables redirected the connection to us.
///
/// Reads `SO_ORIGINAL_DST` (IPv4, `SOL_IP`) or `IP6T_SO_ORIGINAL_DST` (IPv6, `SOL_IPV6`) through
/// socket2, which wraps the one `getsockopt` call that needs `unsafe`. Without a redirect the
/// kernel reports either an error (no conntrack entry) or the socket's own local address;
/// callers treat both as "no original destination".
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let socket = socket2::SockRef::from(stream);
    let local = stream.local_addr().ok()?;
    let reported = if local.is_ipv4() {
        socket.original_dst_v4()
    } else {
        socket.original_dst_v6()
    };
    let dst = reported.ok()?.as_socket()?;
    (dst != local).then_some(dst)
}

/// Whether `addr` reaches one of our own listeners: a connection there would loop forever.
///
/// A listener bound to the unspecified address accepts on every local address, so a target on
/// one of our ports counts as ours if it is loopback, unspecified, or the address the current
/// connection arrived on (the pod IP). Erring towards "ours" only refuses a connection that
/// would otherwise be at risk of looping.
pub fn is_own_listener(addr: SocketAddr, listeners: &[SocketAddr], conn_local: SocketAddr) -> bool {
    listeners.iter().any(|listener| {
        listener.port() == addr.port()
            && (addr.ip() == listener.ip()
                || addr.ip().to_canonical().is_loopback()
                || addr.ip().is_unspecified()
                || addr.ip() == conn_local.ip()
                || to_canonical(addr) == to_canonical(*listener))
    })
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
        let listeners = [addr("0.0.0.0:4143"), addr("127.0.0.1:4140")];
        let pod = addr("10.1.2.3:4143");
        assert!(is_own_listener(addr("127.0.0.1:4140"), &listeners, pod));
        assert!(is_own_listener(addr("127.0.0.1:4143"), &listeners, pod));
        assert!(is_own_listener(addr("10.1.2.3:4143"), &listeners, pod));
        assert!(is_own_listener(addr("[::1]:4140"), &listeners, pod));
        assert!(is_own_listener(
            addr("[::ffff:127.0.0.1]:4140"),
            &listeners,
            pod
        ));
        assert!(!is_own_listener(addr("10.1.2.3:8080"), &listeners, pod));
        assert!(!is_own_listener(addr("10.9.9.9:4143"), &listeners, pod));
    }

    #[tokio::test]
    async fn unredirected_connection_has_no_original_destination() {
        let listener = bind(addr("127.0.0.1:0")).await.unwrap();
        let target = listener.local_addr().unwrap();
        let client = TcpStream::connect(target).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert_eq!(original_dst(&accepted), None);
        drop(client);
    }
}
