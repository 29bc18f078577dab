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
}
