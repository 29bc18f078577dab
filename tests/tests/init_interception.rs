//! What `meshtrace-proxy init`'s rules do to real connections between pods: inbound
//! connections land on the proxy's inbound port with their original destination intact,
//! skipped and admin ports do not, the application's outbound connections land on the outbound
//! port while the proxy's own (uid 2102) do not.
//!
//! The "proxy" here is a plain listener of the test process inside the meshed pod, on the
//! proxy's well-known ports (fixed ports are safe: each pod is a private namespace).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use meshtrace_proxy::config::InitArgs;
use meshtrace_proxy::init;
use meshtrace_tests::netns::{self, original_dst, Node, Pod};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TIMEOUT: Duration = Duration::from_secs(30);
const INBOUND: u16 = 4143;
const OUTBOUND: u16 = 4140;
const ADMIN: u16 = 4191;
const PROXY_UID: u32 = 2102;

fn init_in(pod: &Pod, flags: &[&str]) {
    let args = InitArgs::try_parse_from(std::iter::once("init").chain(flags.iter().copied()))
        .expect("valid init flags")
        .config()
        .expect("valid init configuration");
    pod.enter(|| init::run(&args))
        .expect("entering the pod")
        .expect("init succeeds");
}

/// Accepts one connection and checks it is the client's (a byte sent by the client arrives).
async fn accept_from(listener: &TcpListener, client: &mut TcpStream) -> TcpStream {
    let (mut server, _) = tokio::time::timeout(TIMEOUT, listener.accept())
        .await
        .expect("the connection did not arrive at the expected listener")
        .expect("accept");
    client.write_all(b"x").await.unwrap();
    let mut byte = [0u8; 1];
    server.read_exact(&mut byte).await.unwrap();
    assert_eq!(&byte, b"x");
    server
}

#[tokio::test]
async fn inbound_connections_reach_the_inbound_port_with_their_original_destination() {
    let Some(node) = Node::new_or_skip() else {
        return;
    };
    let client_pod = node.pod("client").unwrap();
    let meshed = node.pod("meshed").unwrap();
    init_in(&meshed, &["--skip-inbound-ports=9090,9200-9210"]);

    let proxy_inbound = meshed.listen(INBOUND).unwrap();
    let app = meshed.listen(8080).unwrap();
    let skipped = meshed.listen(9205).unwrap();
    let admin = meshed.listen(ADMIN).unwrap();

    // From another pod to the application's port: redirected to the proxy, which learns the
    // original destination.
    let mut client = client_pod
        .connect((meshed.ip(), 8080).into())
        .await
        .unwrap();
    let server = accept_from(&proxy_inbound, &mut client).await;
    assert_eq!(
        original_dst(&server).unwrap(),
        SocketAddr::from((meshed.ip(), 8080))
    );
    assert_eq!(server.local_addr().unwrap().port(), INBOUND);
    assert_eq!(
        server.peer_addr().unwrap().ip(),
        IpAddr::V4(client_pod.ip()),
        "the client address is preserved"
    );

    // The same from the test process outside the pods (e.g. a prober on the node).
    let mut outside = TcpStream::connect((meshed.ip(), 8080)).await.unwrap();
    let server = accept_from(&proxy_inbound, &mut outside).await;
    assert_eq!(
        original_dst(&server).unwrap(),
        SocketAddr::from((meshed.ip(), 8080))
    );

    // A skipped port (inside a skipped range) reaches the application directly.
    let mut client = client_pod
        .connect((meshed.ip(), 9205).into())
        .await
        .unwrap();
    let server = accept_from(&skipped, &mut client).await;
    assert_eq!(server.local_addr().unwrap().port(), 9205);

    // The admin port reaches the admin server, not the inbound proxy.
    let mut client = client_pod
        .connect((meshed.ip(), ADMIN).into())
        .await
        .unwrap();
    let server = accept_from(&admin, &mut client).await;
    assert_eq!(server.local_addr().unwrap().port(), ADMIN);

    // The application's own listener only gets connections from inside the pod (the proxy
    // forwarding to it, as uid 2102, over loopback).
    let mut forwarded = meshed
        .connect_as(PROXY_UID, PROXY_UID, (Ipv4Addr::LOCALHOST, 8080).into())
        .await
        .unwrap();
    accept_from(&app, &mut forwarded).await;
}

#[tokio::test]
async fn outbound_connections_of_the_application_reach_the_outbound_port() {
    let Some(node) = Node::new_or_skip() else {
        return;
    };
    let meshed = node.pod("meshed").unwrap();
    let peer = node.pod("peer").unwrap();
    init_in(
        &meshed,
        &[
            "--skip-outbound-ports=6379",
            &format!("--skip-outbound-subnets={}/32", node.host_ip()),
            "--proxy-gid=2103",
        ],
    );
    let proxy_outbound = meshed.listen(OUTBOUND).unwrap();
    let peer_app = peer.listen(0).unwrap();
    let peer_port = peer_app.local_addr().unwrap().port();
    let peer_addr = SocketAddr::from((peer.ip(), peer_port));

    // The application (root, not the proxy's uid) → redirected, original destination kept.
    let mut app = meshed.connect(peer_addr).await.unwrap();
    let server = accept_from(&proxy_outbound, &mut app).await;
    assert_eq!(original_dst(&server).unwrap(), peer_addr);

    // The proxy (uid 2102) reaches the original destination without being redirected again.
    let mut proxy = meshed
        .connect_as(PROXY_UID, PROXY_UID, peer_addr)
        .await
        .unwrap();
    let server = accept_from(&peer_app, &mut proxy).await;
    assert_eq!(server.peer_addr().unwrap().ip(), IpAddr::V4(meshed.ip()));

    // The proxy's gid alone is enough, when --proxy-gid is given.
    let mut by_gid = meshed.connect_as(1000, 2103, peer_addr).await.unwrap();
    accept_from(&peer_app, &mut by_gid).await;

    // A skipped port goes out directly.
    let skipped_port = peer.listen(6379).unwrap();
    let mut app = meshed.connect((peer.ip(), 6379).into()).await.unwrap();
    accept_from(&skipped_port, &mut app).await;

    // A skipped subnet (here: the test process's address) goes out directly.
    let outside = TcpListener::bind((node.host_ip(), 0)).await.unwrap();
    let mut app = meshed.connect(outside.local_addr().unwrap()).await.unwrap();
    let server = accept_from(&outside, &mut app).await;
    assert_eq!(server.peer_addr().unwrap().ip(), IpAddr::V4(meshed.ip()));
}

#[tokio::test]
async fn loopback_and_own_pod_ip_are_not_intercepted() {
    let Some(node) = Node::new_or_skip() else {
        return;
    };
    let meshed = node.pod("meshed").unwrap();
    init_in(&meshed, &[]);
    let _proxy_outbound = meshed.listen(OUTBOUND).unwrap();
    let _proxy_inbound = meshed.listen(INBOUND).unwrap();
    let app = meshed.listen(0).unwrap();
    let port = app.local_addr().unwrap().port();

    // localhost stays local.
    let mut local = meshed
        .connect((Ipv4Addr::LOCALHOST, port).into())
        .await
        .unwrap();
    let server = accept_from(&app, &mut local).await;
    assert_eq!(server.local_addr().unwrap().port(), port);

    // The pod calling itself by its pod IP leaves via `lo` too (local routing table), so it is
    // not meshed either: documented behaviour of the `-o lo` rule.
    let mut own_ip = meshed.connect((meshed.ip(), port).into()).await.unwrap();
    let server = accept_from(&app, &mut own_ip).await;
    assert_eq!(
        server.local_addr().unwrap(),
        SocketAddr::from((meshed.ip(), port))
    );
}

#[tokio::test]
async fn unmeshed_pods_are_untouched() {
    let Some(node) = Node::new_or_skip() else {
        return;
    };
    let meshed = node.pod("meshed").unwrap();
    let plain = node.pod("plain").unwrap();
    init_in(&meshed, &[]);
    // A listener on the plain pod's would-be inbound port must not see connections to its
    // other ports: the rules are per pod.
    let _not_a_proxy = plain.listen(INBOUND).unwrap();
    let app = plain.listen(0).unwrap();
    let port = app.local_addr().unwrap().port();
    let client_pod = node.pod("client").unwrap();
    let mut client = client_pod.connect((plain.ip(), port).into()).await.unwrap();
    let server = accept_from(&app, &mut client).await;
    assert_eq!(server.local_addr().unwrap().port(), port);
}

/// The same uid rule for whole processes, the way the real proxy runs (`setpriv` to 2102),
/// versus the application's processes (root).
#[tokio::test]
async fn processes_are_redirected_by_their_user() {
    let Some(node) = Node::new_or_skip() else {
        return;
    };
    let meshed = node.pod("meshed").unwrap();
    let peer = node.pod("peer").unwrap();
    init_in(&meshed, &[]);
    let proxy_outbound = meshed.listen(OUTBOUND).unwrap();
    let peer_app = peer.listen(0).unwrap();
    let peer_addr = SocketAddr::from((peer.ip(), peer_app.local_addr().unwrap().port()));
    let send_hello = format!(
        "exec 3<>/dev/tcp/{}/{}; printf hello >&3; read -r -n 1 reply <&3",
        peer_addr.ip(),
        peer_addr.port()
    );

    for (who, mut command, listener, redirected) in [
        (
            "proxy user",
            meshed.command_as(PROXY_UID, PROXY_UID, "bash"),
            &peer_app,
            false,
        ),
        (
            "application (root)",
            meshed.command("bash"),
            &proxy_outbound,
            true,
        ),
    ] {
        command.args(["-c", &send_hello]);
        let mut child = meshed.spawn(command).unwrap();
        let (mut server, _) = tokio::time::timeout(TIMEOUT, listener.accept())
            .await
            .unwrap_or_else(|_| panic!("{who}: the connection did not arrive where expected"))
            .unwrap();
        let mut hello = [0u8; 5];
        server.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello, b"hello", "{who}");
        if redirected {
            assert_eq!(original_dst(&server).unwrap(), peer_addr, "{who}");
        }
        server.write_all(b"k").await.unwrap();
        let status = tokio::task::spawn_blocking(move || child.child_mut().wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "{who}: {status}");
    }
}

#[tokio::test]
async fn ipv6_connections_are_redirected_with_ipv6() {
    let Some(node) = Node::new_or_skip() else {
        return;
    };
    let meshed = node.pod("meshed6").unwrap();
    let peer = node.pod("peer6").unwrap();
    let (Some(meshed6), Some(peer6)) = (meshed.ip6(), peer.ip6()) else {
        netns::print_skip("the kernel has IPv6 disabled");
        return;
    };
    init_in(&meshed, &["--ipv6"]);
    let any6 = |port| SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
    let proxy_inbound = meshed.listen_on(any6(INBOUND)).unwrap();
    let proxy_outbound = meshed.listen_on(any6(OUTBOUND)).unwrap();
    let admin = meshed.listen_on(any6(ADMIN)).unwrap();
    let peer_app = peer.listen_on(any6(0)).unwrap();
    let peer_addr = SocketAddr::from((peer6, peer_app.local_addr().unwrap().port()));

    // Inbound over IPv6: to the inbound port, original destination via IP6T_SO_ORIGINAL_DST.
    let mut client = peer.connect((meshed6, 8080).into()).await.unwrap();
    let server = accept_from(&proxy_inbound, &mut client).await;
    assert_eq!(
        original_dst(&server).unwrap(),
        SocketAddr::from((meshed6, 8080))
    );
    // The admin port is skipped over IPv6 too.
    let mut client = peer.connect((meshed6, ADMIN).into()).await.unwrap();
    accept_from(&admin, &mut client).await;

    // Outbound over IPv6: the application is redirected, the proxy is not.
    let mut app = meshed.connect(peer_addr).await.unwrap();
    let server = accept_from(&proxy_outbound, &mut app).await;
    assert_eq!(original_dst(&server).unwrap(), peer_addr);
    let mut proxy = meshed
        .connect_as(PROXY_UID, PROXY_UID, peer_addr)
        .await
        .unwrap();
    accept_from(&peer_app, &mut proxy).await;
}
