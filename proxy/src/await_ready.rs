//! `meshtrace-proxy await-ready`: waits until the proxy of this pod answers `GET /ready` with
//! 200 on its admin port, or gives up after `--timeout`.
//!
//! On clusters without native sidecars the injector runs it as the proxy container's `postStart`
//! hook: the kubelet starts the application containers only after the hook returns, so they
//! never run before the proxy that their traffic is redirected to. The proxy image needs no
//! shell or HTTP client for it.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub use crate::config::AwaitReadyArgs;

/// Pause between attempts.
const RETRY_EVERY: Duration = Duration::from_millis(200);
/// Limit for one attempt's connect and exchange.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
#[error("meshtrace-proxy not ready at http://{addr}/ready after {waited:?}: {last}")]
pub struct NotReady {
    pub addr: SocketAddr,
    pub waited: Duration,
    /// What the last attempt saw.
    pub last: String,
}

/// Where to reach an admin server bound to `addr` from inside the pod.
pub fn target(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// One `GET /ready`: `Ok(())` on 200, else what was seen.
fn probe(addr: SocketAddr) -> Result<(), String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, ATTEMPT_TIMEOUT).map_err(|e| e.to_string())?;
    let io = |e: std::io::Error| e.to_string();
    stream.set_read_timeout(Some(ATTEMPT_TIMEOUT)).map_err(io)?;
    stream
        .set_write_timeout(Some(ATTEMPT_TIMEOUT))
        .map_err(io)?;
    stream
        .write_all(b"GET /ready HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .map_err(io)?;
    // The status line is all that matters; it fits in the first read of a small response.
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < head.len() {
        match stream.read(&mut head[len..]).map_err(io)? {
            0 => break,
            n => len += n,
        }
        if head[..len].contains(&b'\n') {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head[..len]);
    let status_line = line.lines().next().unwrap_or_default().trim().to_owned();
    let mut parts = status_line.split(' ');
    match (parts.next(), parts.next()) {
        (Some(version), Some("200")) if version.starts_with("HTTP/1.") => Ok(()),
        _ if status_line.is_empty() => Err("empty response".to_owned()),
        _ => Err(format!("answered {status_line:?}")),
    }
}

/// Polls until ready or `args.timeout` has passed.
pub fn run(args: &AwaitReadyArgs) -> Result<(), NotReady> {
    let addr = target(args.admin_addr);
    let start = Instant::now();
    loop {
        let last = match probe(addr) {
            Ok(()) => return Ok(()),
            Err(last) => last,
        };
        let waited = start.elapsed();
        if waited >= args.timeout {
            return Err(NotReady { addr, waited, last });
        }
        std::thread::sleep(RETRY_EVERY.min(args.timeout - waited));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_are_reached_on_loopback() {
        assert_eq!(
            target("0.0.0.0:4191".parse().unwrap()),
            "127.0.0.1:4191".parse().unwrap()
        );
        assert_eq!(
            target("[::]:15020".parse().unwrap()),
            "[::1]:15020".parse().unwrap()
        );
        assert_eq!(
            target("10.1.2.3:4191".parse().unwrap()),
            "10.1.2.3:4191".parse().unwrap()
        );
    }

    #[test]
    fn a_non_200_answer_is_not_ready() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 256];
            let _ = conn.read(&mut buf);
            conn.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
        });
        let err = probe(addr).unwrap_err();
        assert!(err.contains("503"), "{err}");
        server.join().unwrap();
    }
}
