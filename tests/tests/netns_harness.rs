//! The network-namespace harness itself: pods talk to each other and to the test process,
//! commands and closures run inside pods, and everything is cleaned up.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use meshtrace_tests::netns::{self, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(30);

async fn accept(listener: &tokio::net::TcpListener) -> (tokio::net::TcpStream, SocketAddr) {
    tokio::time::timeout(TIMEOUT, listener.accept())
        .await
        .expect("no connection arrived in time")
        .expect("accept failed")
}

async fn ping_pong(client: &mut tokio::net::TcpStream, server: &mut tokio::net::TcpStream) {
    client.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    server.write_all(b"pong").await.unwrap();
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
}

#[tokio::test]
async fn two_pods_talk_over_tcp() {
    let Some(node) = Node::new_or_skip() else {
        return;
    };
    let a = node.pod("a").unwrap();
    let b = node.pod("b").unwrap();
    assert_ne!(a.ip(), b.ip());

    let listener = b.listen(0).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut client = a.connect((b.ip(), port).into()).await.unwrap();
    let (mut server, peer) = accept(&listener).await;
    assert_eq!(peer.ip(), IpAddr::V4(a.ip()), "the peer is pod a's address");
    assert_eq!(
        server.local_addr().unwrap(),
        SocketAddr::from((b.ip(), port))
    );
    ping_pong(&mut client, &mut server).await;
}

#[tokio::test]
async fn pods_and_the_test_process_reach_each_other() {
    let Some(node) = Node::new_or_skip() else {
        return;
    };
    let a = node.pod("a").unwrap();

    // Pod → a listener of the test process (like the OTLP receiver).
    let outside = tokio::net::TcpListener::bind((node.host_ip(), 0))
        .await
        .unwrap();
    let mut client = a.connect(outside.local_addr().unwrap()).await.unwrap();
    let (mut server, peer) = accept(&outside).await;
    assert_eq!(peer.ip(), IpAddr::V4(a.ip()));
    ping_pong(&mut client, &mut server).await;

    // Test process → a listener inside the pod.
    let inside = a.listen(0).unwrap();
    let port = inside.local_addr().unwrap().port();
    let mut client = tokio::net::TcpStream::connect((a.ip(), port))
        .await
        .unwrap();
    let (mut server, peer) = accept(&inside).await;
    assert_eq!(peer.ip(), IpAddr::V4(node.host_ip()));
    ping_pong(&mut client, &mut server).await;
}

#[tokio::test]
async fn pods_on_different_nodes_have_different_subnets() {
    let Some(first) = Node::new_or_skip() else {
        return;
    };
    let second = Node::new().unwrap();
    assert_ne!(first.subnet(), second.subnet());
    assert_ne!(first.host_ip(), second.host_ip());
    for node in [&first, &second] {
        let ip = node.host_ip().octets();
        assert!(ip[0] == 198 && (ip[1] == 18 || ip[1] == 19), "{ip:?}");
    }
}

#[tokio::test]
async fn commands_and_closures_run_inside_the_pod() {
    let Some(node) = Node::new_or_skip() else {
        return;
    };
    let a = node.pod("cmd").unwrap();

    let addrs = a.run("ip", &["-4", "-o", "addr", "show"]).unwrap();
    assert!(addrs.contains(&format!("{}/24", a.ip())), "{addrs}");
    assert!(addrs.contains("127.0.0.1/8"), "loopback is up: {addrs}");

    let uid = a.command_as(2102, 2102, "id").arg("-u").output().unwrap();
    assert!(uid.status.success());
    assert_eq!(String::from_utf8_lossy(&uid.stdout).trim(), "2102");

    // A closure's sockets live in the pod: it sees the pod's interfaces.
    let local = a
        .enter(|| {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            socket.connect((node.host_ip(), 9)).unwrap();
            socket.local_addr().unwrap().ip()
        })
        .unwrap();
    assert_eq!(local, IpAddr::V4(a.ip()));

    let failed = a.run("ip", &["link", "show", "no-such-link"]).unwrap_err();
    assert!(failed.to_string().contains("no-such-link"), "{failed}");
}

#[tokio::test]
async fn spawned_children_are_killed_on_drop() {
    let Some(node) = Node::new_or_skip() else {
        return;
    };
    let a = node.pod("child").unwrap();
    let mut sleeper = a.command("sleep");
    sleeper.arg("1000");
    let mut child = a.spawn(sleeper).unwrap();
    let pid = child.id() as i32;
    assert!(child.try_wait().unwrap().is_none(), "still running");
    // `ip netns identify <pid>` names the namespace the process is in. The child is `ip netns
    // exec`, which enters the namespace only after it has started: ask until it has (bounded).
    let mut in_pod = String::new();
    for _ in 0..100 {
        let out = a
            .command("ip")
            .args(["netns", "identify"])
            .arg(pid.to_string())
            .output()
            .unwrap();
        in_pod = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !in_pod.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(in_pod, a.ns_name());
    drop(child);
    // Reaped by the drop: the pid no longer exists.
    let rc = unsafe { libc::kill(pid, 0) };
    assert_eq!(rc, -1, "process {pid} survived its handle");
}

#[tokio::test]
async fn wait_for_port_sees_a_late_listener() {
    let Some(node) = Node::new_or_skip() else {
        return;
    };
    let a = node.pod("late").unwrap();
    // Find a free port inside the pod, then release it and listen on it again later.
    let port = a
        .bind_std(([127, 0, 0, 1], 0).into())
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = a
        .wait_for_port(port, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);

    // The waiter starts polling before the listener exists.
    let a = std::sync::Arc::new(a);
    let waiter = tokio::spawn({
        let a = a.clone();
        async move { a.wait_for_port(port, TIMEOUT).await }
    });
    let listener = a.bind_std(([127, 0, 0, 1], port).into()).unwrap();
    waiter.await.unwrap().unwrap();
    drop(listener);
}

fn namespace_exists(name: &str) -> bool {
    std::path::Path::new("/var/run/netns").join(name).exists()
}

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

#[tokio::test]
async fn cleanup_leaves_nothing_behind() {
    let Some(node) = Node::new_or_skip() else {
        return;
    };
    let a = node.pod("a").unwrap();
    let b = node.pod("b").unwrap();
    let names = [
        node.ns_name().to_owned(),
        a.ns_name().to_owned(),
        b.ns_name().to_owned(),
    ];
    let host_link = node.host_link().to_owned();
    assert!(link_exists(&host_link), "{host_link} exists while in use");
    for name in &names {
        assert!(namespace_exists(name), "{name} exists while in use");
    }
    // A socket still open inside a pod must not keep the links alive.
    let listener = a.listen(0).unwrap();
    drop((a, b, node));
    for name in &names {
        assert!(!namespace_exists(name), "{name} was not deleted");
    }
    assert!(!link_exists(&host_link), "{host_link} was not deleted");
    drop(listener);
}

#[tokio::test]
async fn cleanup_happens_when_a_test_panics() {
    let Some(probe) = Node::new_or_skip() else {
        return;
    };
    drop(probe);
    let names = std::sync::Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(|| {
        let node = Node::new().unwrap();
        let pod = node.pod("doomed").unwrap();
        let mut names = names.lock().unwrap();
        names.push(node.ns_name().to_owned());
        names.push(pod.ns_name().to_owned());
        drop(names);
        panic!("a failing assertion");
    });
    assert!(result.is_err());
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 2);
    for name in &names {
        assert!(!namespace_exists(name), "{name} survived the panic");
    }
}

#[tokio::test]
async fn stale_namespaces_of_dead_processes_are_found() {
    if let Some(reason) = netns::skip_reason() {
        netns::print_skip(&reason);
        return;
    }
    // A pid that existed and is gone now.
    let mut exited = std::process::Command::new("true").spawn().unwrap();
    exited.wait().unwrap();
    let dead_pid = exited.id();
    let stale = format!("{}{dead_pid}-0-node", netns::NS_PREFIX);
    let status = std::process::Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .unwrap();
    assert!(status.success());
    let found = netns::stale_namespaces();
    // Delete it ourselves before asserting, so a failure leaves nothing behind either.
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &stale])
        .status();
    assert!(found.contains(&stale), "{stale} not in {found:?}");
    assert!(
        !found
            .iter()
            .any(|name| netns::own_namespaces().contains(name)),
        "a live process's namespaces are never stale"
    );
}

#[tokio::test]
async fn pods_talk_over_ipv6() {
    let Some(node) = Node::new_or_skip() else {
        return;
    };
    let a = node.pod("a6").unwrap();
    let b = node.pod("b6").unwrap();
    let (Some(a6), Some(b6), Some(host6)) = (a.ip6(), b.ip6(), node.host_ip6()) else {
        netns::print_skip("the kernel has IPv6 disabled");
        return;
    };
    let listener = b
        .listen_on((std::net::Ipv6Addr::UNSPECIFIED, 0).into())
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut client = a.connect((b6, port).into()).await.unwrap();
    let (mut server, peer) = accept(&listener).await;
    assert_eq!(peer.ip(), IpAddr::V6(a6));
    ping_pong(&mut client, &mut server).await;

    let outside = tokio::net::TcpListener::bind((host6, 0)).await.unwrap();
    let mut client = a.connect(outside.local_addr().unwrap()).await.unwrap();
    let (mut server, peer) = accept(&outside).await;
    assert_eq!(peer.ip(), IpAddr::V6(a6));
    ping_pong(&mut client, &mut server).await;
}
