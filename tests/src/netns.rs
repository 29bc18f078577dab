//! "Pods" as Linux network namespaces, so the mesh can be tested end to end on one machine
//! (as root), with real iptables interception and real addresses.
//!
//! Topology of one [`Node`] (a per-test unique /24 from the benchmarking range 198.18.0.0/15,
//! plus, when the kernel has IPv6, a /64 from the benchmarking range 2001:2::/48):
//! ```text
//!   root namespace (the test process)             node namespace `mtns-<pid>-<n>-node`
//!   mth<idx> 198.18.X.1/24, 2001:2:0:<idx>::1/64 ── veth ── host ─┐
//!                                                                br0 (bridge)
//!   pod namespace `mtns-<pid>-<n>-<i>-<label>`                     │
//!   eth0 198.18.X.<i>/24, 2001:2:0:<idx>::<i>/64 ── veth ── p<i> ─┘   (i = 2, 3, ...)
//! ```
//! The bridge lives in its own namespace so that deleting the namespaces removes every link;
//! the root namespace only gets one veth end carrying [`Node::host_ip`], through which pods
//! reach listeners of the test process (an OTLP receiver bound to `node.host_ip()` or
//! `0.0.0.0`), and through which the test process reaches pod IPs directly. Pods use the host
//! address as their default gateway, so every destination is routable from inside a pod (the
//! root namespace does not forward, so only the node's /24 is actually reachable).
//!
//! Cleanup: dropping a [`Pod`]/[`Node`] deletes its namespace and links (also while unwinding
//! from a failed assertion), children spawned with [`Pod::spawn`] are killed on drop, and the
//! first node of a process sweeps namespaces left behind by earlier test processes that died
//! (names carry the owning pid).
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use meshtrace_tests::netns::Node;
//! let Some(node) = Node::new_or_skip() else { return Ok(()) };
//! let a = node.pod("client")?;
//! let b = node.pod("server")?;
//! let listener = b.listen(8080)?; // a tokio listener inside pod b
//! let stream = a.connect((b.ip(), 8080).into()).await?; // connected from inside pod a
//! # Ok(()) }
//! ```

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

/// Prefix of every namespace this harness creates; the stale-namespace sweep only touches
/// these.
pub const NS_PREFIX: &str = "mtns-";
/// Prefix of the root-namespace veth end of each node.
const HOST_IF_PREFIX: &str = "mth";
/// Where `ip netns` keeps its namespace handles.
const NETNS_RUN_DIR: &str = "/var/run/netns";
/// Number of /24s in 198.18.0.0/15.
const SUBNETS: u32 = 512;
/// How long connecting helpers wait (generous: the machine is small and shared).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

static NODE_COUNTER: AtomicU32 = AtomicU32::new(0);
/// `ip netns add/del` set up `/var/run/netns` as a shared mount on first use, which races when
/// two run at once; serialize them within the process.
static NETNS_LOCK: Mutex<()> = Mutex::new(());
static SWEEP: Once = Once::new();

/// Why network-namespace tests cannot run here, if they cannot: not root, or `ip`/`iptables`
/// missing. Any other problem is a test failure, not a skip.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network-namespace tests need root".into());
    }
    for (tool, arg, package) in [("ip", "-V", "iproute2"), ("iptables", "-V", "iptables")] {
        if let Err(e) = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            return Some(format!(
                "`{tool}` is not available ({e}); install the Debian package `{package}`"
            ));
        }
    }
    None
}

/// Prints `SKIPPED: <reason>` straight to stderr, bypassing the test harness's output capture
/// so that the skip shows in CI logs even though the test passes.
pub fn print_skip(reason: &str) {
    use std::io::Write as _;
    let test = std::thread::current().name().unwrap_or("test").to_owned();
    let _ = writeln!(io::stderr(), "SKIPPED {test}: {reason}");
}

/// A "node": a bridge that pods attach to, plus the test process's address on it.
pub struct Node {
    inner: Arc<NodeInner>,
}

struct NodeInner {
    /// `mtns-<pid>-<n>`: prefix of all of this node's namespaces.
    id: String,
    ns: String,
    host_if: String,
    /// The first three octets of the node's /24.
    net: [u8; 3],
    /// The node's IPv6 /64 (`2001:2:0:<idx>::/64`, in the benchmarking range 2001:2::/48), when
    /// the kernel has IPv6.
    net6: Option<u16>,
    next_pod: AtomicU8,
}

impl Node {
    /// A new node, or `None` after printing why these tests are skipped here. Panics (failing
    /// the test) if the environment should work but setting up the node fails.
    pub fn new_or_skip() -> Option<Node> {
        if let Some(reason) = skip_reason() {
            print_skip(&reason);
            return None;
        }
        match Node::new() {
            Ok(node) => Some(node),
            Err(e) => panic!("setting up a network-namespace node failed: {e}"),
        }
    }

    /// A new node with a subnet no other live node (of any process) uses.
    pub fn new() -> io::Result<Node> {
        SWEEP.call_once(sweep_stale);
        let pid = std::process::id();
        let n = NODE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("{NS_PREFIX}{pid}-{n}");
        let ns = format!("{id}-node");
        netns_add(&ns)?;
        // From here on, dropping `inner` deletes what exists so far.
        let mut inner = NodeInner {
            id,
            ns,
            host_if: String::new(),
            net: [0; 3],
            net6: None,
            next_pod: AtomicU8::new(2),
        };
        ip(&["-n", &inner.ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &inner.ns,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "forward_delay",
            "0",
        ])?;
        ip(&["-n", &inner.ns, "link", "set", "br0", "up"])?;

        // Claim a subnet by creating its root-namespace link name: creation is atomic, so two
        // processes can never both get the same index.
        let start = (pid.wrapping_mul(37).wrapping_add(n.wrapping_mul(7))) % SUBNETS;
        let mut claimed = None;
        for offset in 0..SUBNETS {
            let idx = (start + offset) % SUBNETS;
            let host_if = format!("{HOST_IF_PREFIX}{idx}");
            let created = ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", "host", "netns", &inner.ns,
            ]);
            match created {
                Ok(_) => {
                    claimed = Some((idx, host_if));
                    break;
                }
                Err(e) if e.to_string().contains("File exists") => continue,
                Err(e) => return Err(e),
            }
        }
        let Some((idx, host_if)) = claimed else {
            return Err(io::Error::other(
                "all 512 subnets of 198.18.0.0/15 are in use",
            ));
        };
        inner.host_if = host_if;
        // 198.18.0.0/15 = 198.18.0.0/24 ..= 198.19.255.0/24.
        inner.net = [198, 18 + (idx / 256) as u8, (idx % 256) as u8];
        let host_cidr = format!("{}/24", inner.host_ip());
        ip(&["link", "set", &inner.host_if, "alias", &inner.id])?;
        ip(&["addr", "add", &host_cidr, "dev", &inner.host_if])?;
        if ipv6_available() {
            inner.net6 = Some(idx as u16);
            let host_cidr6 = format!("{}/64", inner.v6(1));
            ip(&["addr", "add", &host_cidr6, "dev", &inner.host_if, "nodad"])?;
        }
        ip(&["link", "set", &inner.host_if, "up"])?;
        ip(&[
            "-n", &inner.ns, "link", "set", "host", "master", "br0", "up",
        ])?;
        Ok(Node {
            inner: Arc::new(inner),
        })
    }

    /// The test process's address on the node: pods reach listeners bound to it (or to
    /// `0.0.0.0`).
    pub fn host_ip(&self) -> Ipv4Addr {
        self.inner.host_ip()
    }

    /// The test process's IPv6 address on the node, if the kernel has IPv6.
    pub fn host_ip6(&self) -> Option<Ipv6Addr> {
        self.inner.net6.map(|_| self.inner.v6(1))
    }

    /// The node's subnet, e.g. `198.18.7.0/24`.
    pub fn subnet(&self) -> String {
        let [a, b, c] = self.inner.net;
        format!("{a}.{b}.{c}.0/24")
    }

    /// Name of the node's veth end in the root namespace (carries [`Node::host_ip`]).
    pub fn host_link(&self) -> &str {
        &self.inner.host_if
    }

    /// Name of the namespace holding the bridge.
    pub fn ns_name(&self) -> &str {
        &self.inner.ns
    }

    /// A new pod on this node with its own address. `label` only makes the namespace name
    /// readable (`mtns-<pid>-<n>-<i>-<label>`).
    pub fn pod(&self, label: &str) -> io::Result<Pod> {
        let i = self.inner.next_pod.fetch_add(1, Ordering::Relaxed);
        if i == 255 || i < 2 {
            return Err(io::Error::other("a node holds at most 253 pods"));
        }
        let label: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(24)
            .collect();
        let [a, b, c] = self.inner.net;
        let ns = format!("{}-{i}-{label}", self.inner.id);
        netns_add(&ns)?;
        let pod = Pod {
            node: Arc::clone(&self.inner),
            ns,
            label,
            bridge_port: format!("p{i}"),
            ip: Ipv4Addr::new(a, b, c, i),
            ip6: self.inner.net6.map(|_| self.inner.v6(i.into())),
        };
        // `pod` is dropped (namespace deleted) if any step fails.
        let ns = pod.ns.as_str();
        let node_ns = self.inner.ns.as_str();
        let cidr = format!("{}/24", pod.ip);
        let gateway = self.host_ip().to_string();
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            node_ns,
            "link",
            "add",
            &pod.bridge_port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns,
        ])?;
        ip(&["-n", ns, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", ns, "route", "add", "default", "via", &gateway])?;
        if let Some(ip6) = pod.ip6 {
            let cidr6 = format!("{ip6}/64");
            let gateway6 = self.inner.v6(1).to_string();
            ip(&["-n", ns, "addr", "add", &cidr6, "dev", "eth0", "nodad"])?;
            ip(&["-n", ns, "-6", "route", "add", "default", "via", &gateway6])?;
        }
        ip(&[
            "-n",
            node_ns,
            "link",
            "set",
            &pod.bridge_port,
            "master",
            "br0",
            "up",
        ])?;
        Ok(pod)
    }
}

impl NodeInner {
    fn host_ip(&self) -> Ipv4Addr {
        let [a, b, c] = self.net;
        Ipv4Addr::new(a, b, c, 1)
    }

    /// Host `host` of the node's IPv6 /64 (only called when `net6` is set).
    fn v6(&self, host: u16) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 2, 0, self.net6.unwrap_or_default(), 0, 0, 0, host)
    }
}

fn ipv6_available() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6")
        .is_ok_and(|v| v.trim() == "0")
}

impl Drop for NodeInner {
    fn drop(&mut self) {
        if !self.host_if.is_empty() {
            log_cleanup_error(ip(&["link", "del", &self.host_if]).map(drop));
        }
        log_cleanup_error(netns_del(&self.ns));
    }
}

/// One pod: a network namespace with one address on its node's bridge. Keeps its node alive.
pub struct Pod {
    node: Arc<NodeInner>,
    ns: String,
    label: String,
    bridge_port: String,
    ip: Ipv4Addr,
    ip6: Option<Ipv6Addr>,
}

impl Drop for Pod {
    fn drop(&mut self) {
        // Deleting the bridge port removes the pair now, even if something (a leaked socket, a
        // surviving process) still holds the namespace.
        let _ = ip(&["-n", &self.node.ns, "link", "del", &self.bridge_port]);
        log_cleanup_error(netns_del(&self.ns));
    }
}

impl std::fmt::Debug for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pod")
            .field("ns", &self.ns)
            .field("ip", &self.ip)
            .finish()
    }
}

impl Pod {
    /// The pod's address (like a Kubernetes pod IP).
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The pod's IPv6 address (`2001:2:0:<node>::<i>`), if the kernel has IPv6.
    pub fn ip6(&self) -> Option<Ipv6Addr> {
        self.ip6
    }

    /// The namespace name, for `ip netns exec <name> ...`.
    pub fn ns_name(&self) -> &str {
        &self.ns
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The node's host address, the pod's default gateway.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.node.host_ip()
    }

    /// A command that runs `program` inside the pod (as root), via `ip netns exec`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).arg(program);
        cmd
    }

    /// A command that runs `program` inside the pod as `uid`/`gid` (no supplementary groups),
    /// e.g. the proxy as uid 2102.
    pub fn command_as(&self, uid: u32, gid: u32, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = self.command("setpriv");
        cmd.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .arg(program);
        cmd
    }

    /// Runs `program args...` inside the pod to completion; its stdout, or an error carrying
    /// the command line, exit status and stderr.
    pub fn run(&self, program: &str, args: &[&str]) -> io::Result<String> {
        let mut cmd = self.command(program);
        cmd.args(args);
        let output = cmd.output()?;
        check_output(
            &format!("[{}] {program} {}", self.ns, args.join(" ")),
            output,
        )
    }

    /// Spawns a long-running child (built with [`Pod::command`]/[`Pod::command_as`]) in its
    /// own process group; the group is killed when the returned handle is dropped.
    pub fn spawn(&self, mut cmd: Command) -> io::Result<PodChild> {
        cmd.process_group(0);
        Ok(PodChild {
            child: cmd.spawn()?,
        })
    }

    /// Runs `f` on a fresh thread that has entered the pod's network namespace: sockets it
    /// creates belong to the pod (they stay there when used from other threads), processes it
    /// spawns run in the pod. A panic in `f` is propagated.
    pub fn enter<T, F>(&self, f: F) -> io::Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        self.enter_inner(None, f)
    }

    /// Like [`Pod::enter`], with the thread's filesystem uid/gid (which the iptables `owner`
    /// match checks for sockets) set to `uid`/`gid`: sockets created by `f` count as owned by
    /// that user, e.g. 2102 for "made by the proxy".
    pub fn enter_as<T, F>(&self, uid: u32, gid: u32, f: F) -> io::Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        self.enter_inner(Some((uid, gid)), f)
    }

    fn enter_inner<T, F>(&self, creds: Option<(u32, u32)>, f: F) -> io::Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let handle = File::open(format!("{NETNS_RUN_DIR}/{}", self.ns))?;
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name(format!("netns-{}", self.label))
                .spawn_scoped(scope, move || -> io::Result<T> {
                    enter_netns(&handle)?;
                    if let Some((uid, gid)) = creds {
                        set_thread_fs_ids(uid, gid);
                    }
                    Ok(f())
                })?;
            match thread.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// A std listener bound inside the pod.
    pub fn bind_std(&self, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
        self.enter(move || std::net::TcpListener::bind(addr))?
    }

    /// A tokio listener on `0.0.0.0:port` inside the pod (port 0: any free port). Must be
    /// called within a tokio runtime.
    pub fn listen(&self, port: u16) -> io::Result<tokio::net::TcpListener> {
        self.listen_on((Ipv4Addr::UNSPECIFIED, port).into())
    }

    /// A tokio listener on `addr` inside the pod (e.g. `[::]:port` for IPv6). Must be called
    /// within a tokio runtime.
    pub fn listen_on(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
        let listener = self.bind_std(addr)?;
        listener.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(listener)
    }

    /// Connects from inside the pod (as root, i.e. like the pod's application) to `addr`.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        self.connect_inner(None, addr).await
    }

    /// Connects from inside the pod with a socket owned by `uid`/`gid` (see
    /// [`Pod::enter_as`]).
    pub async fn connect_as(
        &self,
        uid: u32,
        gid: u32,
        addr: SocketAddr,
    ) -> io::Result<tokio::net::TcpStream> {
        self.connect_inner(Some((uid, gid)), addr).await
    }

    async fn connect_inner(
        &self,
        creds: Option<(u32, u32)>,
        addr: SocketAddr,
    ) -> io::Result<tokio::net::TcpStream> {
        // A dedicated thread (not the blocking pool, whose threads are reused) enters the
        // namespace; the blocking connect runs there so the runtime is never blocked.
        let handle = File::open(format!("{NETNS_RUN_DIR}/{}", self.ns))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("netns-connect-{}", self.label))
            .spawn(move || {
                let result = enter_netns(&handle).and_then(|()| {
                    if let Some((uid, gid)) = creds {
                        set_thread_fs_ids(uid, gid);
                    }
                    TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
                });
                let _ = tx.send(result);
            })?;
        let stream = rx
            .await
            .map_err(|_| io::Error::other("connect thread died"))??;
        stream.set_nonblocking(true)?;
        tokio::net::TcpStream::from_std(stream)
    }

    /// Waits until something inside the pod accepts TCP connections on `127.0.0.1:port`
    /// (e.g. a proxy or application started with [`Pod::spawn`]), polling; an error after
    /// `timeout`.
    pub async fn wait_for_port(&self, port: u16, timeout: Duration) -> io::Result<()> {
        self.wait_for((Ipv4Addr::LOCALHOST, port).into(), timeout)
            .await
    }

    /// Waits until a connection from inside the pod to `addr` succeeds, polling (there is no
    /// readiness signal from another process to await); an error after `timeout`.
    pub async fn wait_for(&self, addr: SocketAddr, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.connect(addr).await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "nothing accepted on {addr} from pod {} within {timeout:?}: {e}",
                            self.ns
                        ),
                    ))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// A child process running in a pod; its process group is killed (SIGKILL) and reaped on
/// drop.
pub struct PodChild {
    child: Child,
}

impl PodChild {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Whether the child has exited (and how), without waiting.
    pub fn try_wait(&mut self) -> io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }
}

impl Drop for PodChild {
    fn drop(&mut self) {
        if let Ok(pgid) = i32::try_from(self.child.id()) {
            // SAFETY: kill has no memory-safety preconditions; the group is the one the child
            // leads (spawned with process_group(0)) and the child is not reaped yet, so the
            // id cannot have been reused.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `SO_ORIGINAL_DST` of an accepted (redirected) connection: where the client was connecting
/// before iptables `REDIRECT` changed it. For a connection that was not redirected this is its
/// plain local address.
pub fn original_dst<S: AsRawFd>(socket: &S) -> io::Result<SocketAddr> {
    const SO_ORIGINAL_DST: libc::c_int = 80;
    let fd = socket.as_raw_fd();
    // SAFETY: an all-zero sockaddr_in is a valid value.
    let mut v4: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: the pointer and length describe `v4`, which outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&mut v4 as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        let ip = Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
        return Ok((ip, u16::from_be(v4.sin_port)).into());
    }
    let v4_error = io::Error::last_os_error();
    // SAFETY: an all-zero sockaddr_in6 is a valid value.
    let mut v6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    // SAFETY: as above, for `v6` (IP6T_SO_ORIGINAL_DST is also 80).
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_IPV6,
            SO_ORIGINAL_DST,
            (&mut v6 as *mut libc::sockaddr_in6).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        let ip = Ipv6Addr::from(v6.sin6_addr.s6_addr);
        return Ok((ip, u16::from_be(v6.sin6_port)).into());
    }
    Err(v4_error)
}

/// A binary of this workspace, next to the test executable's directory (`target/<profile>/`),
/// e.g. `meshtrace-proxy`; `MESHTRACE_PROXY_BIN` overrides the proxy's path. Panics with how to
/// build it when it is missing (`cargo test -p meshtrace-tests` alone does not build other
/// packages' binaries; `cargo test --workspace` does).
pub fn workspace_binary(name: &str) -> PathBuf {
    if name == "meshtrace-proxy" {
        if let Some(path) = std::env::var_os("MESHTRACE_PROXY_BIN") {
            return PathBuf::from(path);
        }
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} does not exist; build it first (cargo build -p {name})",
        path.display()
    );
    path
}

fn enter_netns(handle: &File) -> io::Result<()> {
    // SAFETY: setns on a valid namespace fd only changes this thread's network namespace.
    if unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets this thread's filesystem ids (per-thread in Linux; glibc does not broadcast
/// setfsuid/setfsgid to other threads). New sockets' owner is taken from them.
fn set_thread_fs_ids(uid: u32, gid: u32) {
    // SAFETY: setfsgid/setfsuid only change the calling thread's credentials.
    unsafe {
        libc::setfsgid(gid);
        libc::setfsuid(uid);
    }
}

fn ip(args: &[&str]) -> io::Result<String> {
    let output = Command::new("ip").args(args).output()?;
    check_output(&format!("ip {}", args.join(" ")), output)
}

fn check_output(command: &str, output: Output) -> io::Result<String> {
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(io::Error::other(format!(
            "`{command}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

fn netns_add(name: &str) -> io::Result<()> {
    let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    ip(&["netns", "add", name]).map(drop)
}

fn netns_del(name: &str) -> io::Result<()> {
    let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    ip(&["netns", "del", name]).map(drop)
}

fn log_cleanup_error(result: io::Result<()>) {
    if let Err(e) = result {
        eprintln!("netns cleanup: {e}");
    }
}

/// Names (of our namespaces) whose owning process no longer exists.
pub fn stale_namespaces() -> Vec<String> {
    let Ok(listing) = ip(&["netns", "list"]) else {
        return Vec::new();
    };
    listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| {
            name.strip_prefix(NS_PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<i32>().ok())
                .is_some_and(|pid| !process_exists(pid))
        })
        .map(str::to_owned)
        .collect()
}

/// Names of this harness's namespaces that belong to the current process.
pub fn own_namespaces() -> Vec<String> {
    let prefix = format!("{NS_PREFIX}{}-", std::process::id());
    ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

/// Root-namespace links of this harness's nodes that belong to the current process.
pub fn own_host_links() -> Vec<String> {
    let own_alias = format!("alias {NS_PREFIX}{}-", std::process::id());
    ip(&["-o", "link", "show"])
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(&own_alias))
        .filter_map(|line| line.split(':').nth(1))
        .map(|name| name.trim().split('@').next().unwrap_or_default().to_owned())
        .collect()
}

fn process_exists(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Deletes namespaces left by test processes that died without cleaning up (killed, or
/// aborted), after killing any process still running in them.
fn sweep_stale() {
    for name in stale_namespaces() {
        if let Ok(pids) = ip(&["netns", "pids", &name]) {
            for pid in pids.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        match netns_del(&name) {
            Ok(()) => eprintln!("netns: removed stale namespace {name}"),
            Err(e) => eprintln!("netns: could not remove stale namespace {name}: {e}"),
        }
    }
}

/// The uid (and gid) the proxy runs as; `meshtrace-proxy init` exempts its traffic.
pub const PROXY_UID: u32 = 2102;
/// The proxy's inbound port (iptables redirects other pods' connections here).
pub const PROXY_INBOUND_PORT: u16 = 4143;
/// The proxy's outbound port (iptables redirects the application's connections here).
pub const PROXY_OUTBOUND_PORT: u16 = 4140;
/// The proxy's admin port (never redirected).
pub const PROXY_ADMIN_PORT: u16 = 4191;
/// How long a starting proxy may take to report ready (a debug build on a loaded machine).
pub const PROXY_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A pod's sidecar: the real `meshtrace-proxy` binary running inside the pod as uid 2102, the
/// way the injector runs it. Killed on drop; its log (stderr) is printed if the test is
/// failing, since that is usually where the reason is.
pub struct MeshedProxy {
    child: PodChild,
    pod: String,
    logs: Arc<Mutex<Vec<u8>>>,
}

impl MeshedProxy {
    /// Everything the proxy logged so far.
    pub fn logs(&self) -> String {
        let logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&logs).into_owned()
    }

    /// Whether the proxy process has exited (and how), without waiting.
    pub fn try_wait(&mut self) -> io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }
}

impl Drop for MeshedProxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- meshtrace-proxy log of pod {} ----\n{}",
                self.pod,
                self.logs()
            );
        }
    }
}

impl Pod {
    /// Runs the real `meshtrace-proxy init <args>` inside the pod (as root, like the init
    /// container): the pod's nat table then hands its traffic to the proxy's ports.
    pub fn init_mesh(&self, args: &[&str]) -> io::Result<()> {
        let binary = workspace_binary("meshtrace-proxy");
        let mut cmd = self.command(&binary);
        cmd.arg("init").args(args);
        let output = cmd.output()?;
        check_output(
            &format!("[{}] meshtrace-proxy init {}", self.ns, args.join(" ")),
            output,
        )
        .map(drop)
    }

    /// Starts the real proxy binary in the pod as uid/gid 2102 with the sidecar's environment
    /// (inbound on `0.0.0.0:4143`, spans to `otlp_endpoint` with a 100 ms batching delay,
    /// `OTEL_SERVICE_NAME` = the pod's label, every trace sampled) plus `env` (which wins), and
    /// waits until its `/ready` answers 200. Nothing else from the test's environment leaks in.
    pub async fn start_proxy(
        &self,
        otlp_endpoint: &str,
        env: &[(&str, &str)],
    ) -> io::Result<MeshedProxy> {
        let binary = workspace_binary("meshtrace-proxy");
        let mut cmd = self.command_as(PROXY_UID, PROXY_UID, &binary);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env(
                "MESHTRACE_INBOUND_ADDR",
                format!("0.0.0.0:{PROXY_INBOUND_PORT}"),
            )
            .env(
                "MESHTRACE_OUTBOUND_ADDR",
                format!("127.0.0.1:{PROXY_OUTBOUND_PORT}"),
            )
            .env(
                "MESHTRACE_ADMIN_ADDR",
                format!("0.0.0.0:{PROXY_ADMIN_PORT}"),
            )
            .env("MESHTRACE_SAMPLE_RATE", "1")
            .env("MESHTRACE_LOG", "info")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_endpoint)
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("OTEL_SERVICE_NAME", &self.label)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = self.spawn(cmd)?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        if let Some(mut stderr) = child.child_mut().stderr.take() {
            let logs = Arc::clone(&logs);
            std::thread::Builder::new()
                .name(format!("proxy-log-{}", self.label))
                .spawn(move || {
                    use std::io::Read as _;
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = stderr.read(&mut buf) {
                        logs.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .extend_from_slice(&buf[..n]);
                    }
                })?;
        }
        let mut proxy = MeshedProxy {
            child,
            pod: self.ns.clone(),
            logs,
        };
        match self.wait_until_ready(&mut proxy).await {
            Ok(()) => Ok(proxy),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("{e}\n---- proxy log ----\n{}", proxy.logs()),
            )),
        }
    }

    /// [`Pod::init_mesh`] then [`Pod::start_proxy`]: the pod as the injector leaves it.
    pub async fn mesh(
        &self,
        otlp_endpoint: &str,
        init_args: &[&str],
        env: &[(&str, &str)],
    ) -> io::Result<MeshedProxy> {
        self.init_mesh(init_args)?;
        self.start_proxy(otlp_endpoint, env).await
    }

    /// Polls the proxy's `/ready` from inside the pod (another process: there is no signal to
    /// await) until it answers 200, failing early if the proxy exits.
    async fn wait_until_ready(&self, proxy: &mut MeshedProxy) -> io::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, PROXY_ADMIN_PORT));
        let deadline = Instant::now() + PROXY_READY_TIMEOUT;
        let mut last = String::from("no attempt yet");
        while Instant::now() < deadline {
            if let Some(status) = proxy.try_wait()? {
                return Err(io::Error::other(format!(
                    "the proxy in pod {} exited before it was ready ({status})",
                    self.ns
                )));
            }
            match self.connect(admin).await {
                Ok(mut stream) => {
                    let mut response = Vec::new();
                    let exchange = async {
                        stream
                            .write_all(
                                b"GET /ready HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
                            )
                            .await?;
                        stream.read_to_end(&mut response).await
                    };
                    match tokio::time::timeout(Duration::from_secs(10), exchange).await {
                        Ok(Ok(_)) if response.starts_with(b"HTTP/1.1 200") => return Ok(()),
                        Ok(Ok(_)) => {
                            last = String::from_utf8_lossy(&response).into_owned();
                        }
                        Ok(Err(e)) => last = e.to_string(),
                        Err(_) => last = "/ready did not answer within 10s".into(),
                    }
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the proxy in pod {} was not ready within {PROXY_READY_TIMEOUT:?}: {last}",
                self.ns
            ),
        ))
    }
}
