//! `meshtrace-proxy init` against real iptables in a pod: the rules it writes, idempotence,
//! `--dry-run`, backend choice, IPv6 and failures.
//!
//! `init` runs in-process on a thread that entered the pod's namespace (the iptables commands
//! it spawns inherit the namespace), through the same `meshtrace_proxy::init::run` the binary's
//! `init` subcommand calls.

use meshtrace_proxy::config::InitArgs;
use meshtrace_proxy::init::{self, InitConfig, InitError};
use meshtrace_tests::netns::{Node, Pod};

fn args(flags: &[&str]) -> InitConfig {
    InitArgs::try_parse_from(std::iter::once("init").chain(flags.iter().copied()))
        .expect("valid init flags")
        .config()
        .expect("valid init configuration")
}

fn init_in(pod: &Pod, flags: &[&str]) -> Result<(), InitError> {
    let args = args(flags);
    pod.enter(|| init::run(&args)).expect("entering the pod")
}

/// The nat table as `*-save` prints it, minus the timestamped comments and counters, so two
/// dumps compare equal exactly when the rules are the same.
fn nat(pod: &Pod, save: &str) -> Vec<String> {
    pod.run(save, &["-t", "nat"])
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| match line.find(" [") {
            Some(counters) if line.starts_with(':') => line[..counters].to_owned(),
            _ => line.to_owned(),
        })
        .collect()
}

fn rules(dump: &[String]) -> Vec<&str> {
    dump.iter()
        .map(String::as_str)
        .filter(|l| l.starts_with("-A "))
        .collect()
}

fn count_matching(dump: &[String], needle: &str) -> usize {
    dump.iter().filter(|l| l.contains(needle)).count()
}

#[test]
fn writes_commented_chains_and_jumps() {
    let Some(node) = Node::new_or_skip() else {
        return;
    };
    let pod = node.pod("rules").unwrap();
    init_in(
        &pod,
        &[
            "--iptables-mode=nft",
            "--skip-inbound-ports=22,9000-9100",
            "--skip-outbound-ports=5432",
            "--skip-outbound-subnets=169.254.169.254/32",
            "--proxy-gid=2103",
        ],
    )
    .unwrap();
    let dump = nat(&pod, "iptables-nft-save");
    assert!(
        dump.contains(&":MESHTRACE_INBOUND -".to_owned()),
        "{dump:#?}"
    );
    assert!(
        dump.contains(&":MESHTRACE_OUTBOUND -".to_owned()),
        "{dump:#?}"
    );
    let rules = rules(&dump);
    for rule in &rules {
        assert!(
            rule.contains("--comment \"meshtrace/"),
            "uncommented: {rule}"
        );
    }
    let has = |parts: &[&str]| rules.iter().any(|r| parts.iter().all(|p| r.contains(p)));
    assert!(
        has(&["-A PREROUTING", "-p tcp", "-j MESHTRACE_INBOUND"]),
        "{rules:#?}"
    );
    assert!(
        has(&["-A OUTPUT", "-p tcp", "-j MESHTRACE_OUTBOUND"]),
        "{rules:#?}"
    );
    assert!(has(&["-A MESHTRACE_INBOUND", "--dport 4191", "-j RETURN"]));
    assert!(has(&["-A MESHTRACE_INBOUND", "--dport 22", "-j RETURN"]));
    assert!(has(&[
        "-A MESHTRACE_INBOUND",
        "--dport 9000:9100",
        "-j RETURN"
    ]));
    assert!(has(&[
        "-A MESHTRACE_INBOUND",
        "-j REDIRECT --to-ports 4143"
    ]));
    assert!(has(&[
        "-A MESHTRACE_OUTBOUND",
        "--uid-owner 2102",
        "-j RETURN"
    ]));
    assert!(has(&[
        "-A MESHTRACE_OUTBOUND",
        "--gid-owner 2103",
        "-j RETURN"
    ]));
    assert!(has(&["-A MESHTRACE_OUTBOUND", "-o lo", "-j RETURN"]));
    assert!(has(&["-A MESHTRACE_OUTBOUND", "--dport 5432", "-j RETURN"]));
    assert!(has(&[
        "-A MESHTRACE_OUTBOUND",
        "-d 169.254.169.254/32",
        "-j RETURN"
    ]));
    assert!(has(&[
        "-A MESHTRACE_OUTBOUND",
        "-j REDIRECT --to-ports 4140"
    ]));
    // The redirect comes last in each chain: everything skipped is matched first.
    let last_in = rules
        .iter()
        .rposition(|r| r.starts_with("-A MESHTRACE_INBOUND"));
    assert!(rules[last_in.unwrap()].contains("REDIRECT"));
    let last_out = rules
        .iter()
        .rposition(|r| r.starts_with("-A MESHTRACE_OUTBOUND"));
    assert!(rules[last_out.unwrap()].contains("REDIRECT"));
}

#[test]
fn running_twice_leaves_one_set_of_rules() {
    let Some(node) = Node::new_or_skip() else {
        return;
    };
    for (mode, save) in [
        ("nft", "iptables-nft-save"),
        ("legacy", "iptables-legacy-save"),
    ] {
        let pod = node.pod(mode).unwrap();
        let flags = [
            &format!("--iptables-mode={mode}")[..],
            "--skip-inbound-ports=8081",
        ];
        init_in(&pod, &flags).unwrap();
        let first = nat(&pod, save);
        init_in(&pod, &flags).unwrap();
        let second = nat(&pod, save);
        assert_eq!(first, second, "{mode}: second run changed the rules");
        assert_eq!(count_matching(&second, "-j MESHTRACE_INBOUND"), 1, "{mode}");
        assert_eq!(
            count_matching(&second, "-j MESHTRACE_OUTBOUND"),
            1,
            "{mode}"
        );

        // A re-run with other flags replaces our chains' contents, still one jump each.
        init_in(
            &pod,
            &[
                &format!("--iptables-mode={mode}")[..],
                "--skip-inbound-ports=7070",
            ],
        )
        .unwrap();
        let third = nat(&pod, save);
        assert_eq!(
            count_matching(&third, "--dport 8081"),
            0,
            "{mode}: {third:#?}"
        );
        assert_eq!(
            count_matching(&third, "--dport 7070"),
            1,
            "{mode}: {third:#?}"
        );
        assert_eq!(count_matching(&third, "-j MESHTRACE_INBOUND"), 1, "{mode}");
    }
}

#[test]
fn rules_of_others_are_kept() {
    let Some(node) = Node::new_or_skip() else {
        return;
    };
    let pod = node.pod("others").unwrap();
    pod.run(
        "iptables-nft",
        &[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "eth0",
            "-j",
            "MASQUERADE",
        ],
    )
    .unwrap();
    init_in(&pod, &["--iptables-mode=nft"]).unwrap();
    init_in(&pod, &["--iptables-mode=nft"]).unwrap();
    let dump = nat(&pod, "iptables-nft-save");
    assert_eq!(count_matching(&dump, "-j MASQUERADE"), 1, "{dump:#?}");
}

#[test]
fn dry_run_changes_nothing() {
    let Some(node) = Node::new_or_skip() else {
        return;
    };
    let pod = node.pod("dry").unwrap();
    let before_nft = nat(&pod, "iptables-nft-save");
    let before_legacy = nat(&pod, "iptables-legacy-save");

    let dry = args(&["--dry-run", "--ipv6"]);
    let plan = pod.enter(|| init::plan(&dry)).unwrap().unwrap();
    let shown = plan.to_string();
    assert!(shown.contains("iptables-nft-restore --noflush"), "{shown}");
    assert!(shown.contains("ip6tables-nft-restore --noflush"), "{shown}");
    assert!(shown.contains("-j REDIRECT --to-ports 4143"), "{shown}");
    assert!(shown.contains("-A OUTPUT -p tcp"), "{shown}");
    pod.enter(|| init::run(&dry)).unwrap().unwrap();

    assert_eq!(nat(&pod, "iptables-nft-save"), before_nft);
    assert_eq!(nat(&pod, "iptables-legacy-save"), before_legacy);
    assert_eq!(
        count_matching(&nat(&pod, "ip6tables-nft-save"), "MESHTRACE"),
        0
    );
}

#[test]
fn auto_mode_follows_the_backend_in_use() {
    let Some(node) = Node::new_or_skip() else {
        return;
    };
    // A fresh pod: nft.
    let fresh = node.pod("fresh").unwrap();
    init_in(&fresh, &[]).unwrap();
    assert_eq!(
        count_matching(&nat(&fresh, "iptables-nft-save"), "-j MESHTRACE_INBOUND"),
        1
    );
    assert_eq!(
        count_matching(&nat(&fresh, "iptables-legacy-save"), "MESHTRACE"),
        0
    );

    // Legacy already holds rules (as on a node whose kube-proxy uses legacy): legacy, also on
    // a second run.
    let legacy = node.pod("legacy").unwrap();
    legacy
        .run(
            "iptables-legacy",
            &[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "eth0",
                "-j",
                "MASQUERADE",
            ],
        )
        .unwrap();
    init_in(&legacy, &[]).unwrap();
    init_in(&legacy, &[]).unwrap();
    let legacy_dump = nat(&legacy, "iptables-legacy-save");
    assert_eq!(
        count_matching(&legacy_dump, "-j MESHTRACE_INBOUND"),
        1,
        "{legacy_dump:#?}"
    );
    assert_eq!(
        count_matching(&nat(&legacy, "iptables-nft-save"), "MESHTRACE"),
        0
    );
}

#[test]
fn ipv6_programs_ip6tables() {
    let Some(node) = Node::new_or_skip() else {
        return;
    };
    let pod = node.pod("v6").unwrap();
    init_in(
        &pod,
        &[
            "--iptables-mode=nft",
            "--ipv6",
            "--skip-outbound-subnets=198.18.0.0/15,2001:2::/48",
        ],
    )
    .unwrap();
    let v4 = nat(&pod, "iptables-nft-save");
    let v6 = nat(&pod, "ip6tables-nft-save");
    for dump in [&v4, &v6] {
        assert_eq!(count_matching(dump, "-j MESHTRACE_INBOUND"), 1, "{dump:#?}");
        assert_eq!(
            count_matching(dump, "-j REDIRECT --to-ports 4140"),
            1,
            "{dump:#?}"
        );
    }
    assert_eq!(count_matching(&v6, "-d 2001:2::/48"), 1, "{v6:#?}");
    assert_eq!(count_matching(&v6, "198.18.0.0"), 0, "{v6:#?}");
    assert_eq!(count_matching(&v4, "-d 198.18.0.0/15"), 1, "{v4:#?}");

    // Without --ipv6, ip6tables is left alone.
    let v4_only = node.pod("v4only").unwrap();
    init_in(&v4_only, &["--iptables-mode=nft"]).unwrap();
    assert_eq!(
        count_matching(&nat(&v4_only, "ip6tables-nft-save"), "MESHTRACE"),
        0
    );
}

/// Runs `init` where iptables may not write the tables: the spawned iptables commands lack
/// CAP_NET_ADMIN (dropped from this thread's capability bounding set, which children inherit).
fn init_without_net_admin(pod: &Pod, flags: &[&str]) -> Result<(), InitError> {
    /// From linux/capability.h.
    const CAP_NET_ADMIN: libc::c_ulong = 12;
    let args = args(flags);
    pod.enter(|| {
        // SAFETY: prctl(PR_CAPBSET_DROP) only changes this thread's bounding set.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, CAP_NET_ADMIN, 0, 0, 0) };
        assert_eq!(
            rc,
            0,
            "dropping CAP_NET_ADMIN: {}",
            std::io::Error::last_os_error()
        );
        init::run(&args)
    })
    .unwrap()
}

#[test]
fn failure_to_write_the_tables_is_a_clear_error() {
    let Some(node) = Node::new_or_skip() else {
        return;
    };
    let pod = node.pod("denied").unwrap();
    for (mode, program) in [("nft", "iptables-nft-"), ("legacy", "iptables-legacy-")] {
        let err = init_without_net_admin(&pod, &[&format!("--iptables-mode={mode}")[..]])
            .expect_err("init without CAP_NET_ADMIN must fail");
        let msg = err.to_string();
        assert!(matches!(err, InitError::Failed { .. }), "{mode}: {err:?}");
        assert!(msg.contains(program), "{mode}: names the command: {msg}");
        assert!(
            msg.contains("ermission denied") || msg.contains("not permitted"),
            "{mode}: carries iptables' stderr: {msg}"
        );
    }
    // Auto mode: which probe fails first depends on the backends (reading legacy tables that
    // were never loaded needs no privilege), but the error still names the command and why.
    let err = init_without_net_admin(&pod, &[]).expect_err("auto mode must fail too");
    let msg = err.to_string();
    assert!(msg.contains("iptables-"), "{msg}");
    assert!(
        msg.contains("ermission denied") || msg.contains("not permitted"),
        "{msg}"
    );
    // A dry run still shows what would be done (assuming what it cannot read).
    init_without_net_admin(&pod, &["--dry-run"]).expect("a dry run needs no privilege");
    // Nothing was written.
    assert_eq!(
        count_matching(&nat(&pod, "iptables-nft-save"), "MESHTRACE"),
        0
    );
    assert_eq!(
        count_matching(&nat(&pod, "iptables-legacy-save"), "MESHTRACE"),
        0
    );
}
