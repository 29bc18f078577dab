//! Listening sockets and the original destination of redirected connections.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

/// Binds a listener; port 0 lets the OS choose (see `local_addr`). An IPv6 listener is
/// IPv6-only (`IPV6_V6ONLY`): IPv4 clients go to an IPv4 listener on the same port, so every
/// connection's original destination is read in its own family.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // As tokio's `TcpListener::bind`: a restarted proxy rebinds despite TIME_WAIT sockets.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
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
    // An IPv4 client on a dual-stack IPv6 socket (not one of ours) arrives v4-mapped.
    let v4 = match local {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_some(),
    };
    let reported = if v4 {
        socket.original_dst_v4()
    } else {
        socket.original_dst_v6()
    };
    let dst = reported.ok()?.as_socket()?;
    (canonical(dst) != canonical(local)).then_some(dst)
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
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

    /// One socket per family on the same port: an IPv6 listener does not take IPv4 clients.
    #[tokio::test]
    async fn ipv4_and_ipv6_listeners_share_a_port() {
        if bind(addr("[::1]:0")).await.is_err() {
            eprintln!("skipped: no IPv6 on this host");
            return;
        }
        let v4 = bind(addr("0.0.0.0:0")).await.unwrap();
        let port = v4.local_addr().unwrap().port();
        let v6 = bind(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)))
            .await
            .expect("[::] binds beside 0.0.0.0 on the same port");
        let _client = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (accepted, _) = v4.accept().await.unwrap();
        assert!(accepted.local_addr().unwrap().is_ipv4());
        drop(v6);
    }
}
