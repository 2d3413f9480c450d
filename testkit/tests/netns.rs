//! The multi-host harness itself: hosts get their addresses, a small disk has its size, a cut
//! takes a host's port down and a heal brings it back, and dropping the network leaves no
//! namespace, interface or mount behind.

use std::process::Command;

use haystack_testkit::netns::Net;

fn text(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn a_network_is_made_cut_healed_and_removed() {
    let Some(mut net) = Net::create_or_skip("a_network_is_made_cut_healed_and_removed") else {
        return;
    };
    let a = net.add_host("a").expect("host a");
    let b = net.add_host("b").expect("host b");
    assert_ne!(net.ip(a), net.ip(b));
    let disk = net.small_disk(a, 4 << 20).expect("tmpfs");
    let df = text(Command::new("df").args(["-B1", "--output=size"]).arg(&disk));
    let size: u64 = df
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df size");
    assert_eq!(size, 4 << 20, "{df}");
    // A process on host a sees its own address, and only it besides loopback.
    let p = net.spawn(
        a,
        "addr",
        std::path::Path::new("/usr/sbin/ip"),
        &["-4".into(), "-o".into(), "addr".into(), "show".into()],
    );
    let log = net.log(p);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let shown = loop {
        let s = std::fs::read_to_string(&log).unwrap_or_default();
        if s.contains(&net.ip(a).to_string()) || std::time::Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(shown.contains(&net.ip(a).to_string()), "{shown}");
    assert!(!shown.contains(&net.ip(b).to_string()), "{shown}");
    net.cut(b);
    net.heal(b);
    let root = text(Command::new("ip").args(["-4", "-o", "addr", "show"]));
    assert!(root.contains(&format!("{}/24", net.test_ip())), "{root}");
    let mounts_before = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(mounts_before.contains(disk.to_str().unwrap()));
    let test_ip = net.test_ip().to_string();
    let id = format!("{}-", net.id());
    assert!(text(Command::new("ip").args(["netns", "list"])).contains(&id));
    drop(net);
    let netns = text(Command::new("ip").args(["netns", "list"]));
    let root = text(Command::new("ip").args(["-4", "-o", "addr", "show"]));
    assert!(!root.contains(&test_ip), "root veth left behind: {root}");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        !mounts.contains(disk.to_str().unwrap()),
        "tmpfs left mounted"
    );
    assert!(!netns.contains(&id), "namespaces left behind: {netns}");
}
