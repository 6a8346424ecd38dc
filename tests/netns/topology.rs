//! The test network: namespaces, veth links, two bridges and link faults. Every
//! `ip` and `tc` call of the harness lives here, and every one is bounded in time.
//!
//! Nothing is created in the root namespace: each veth pair is created inside the
//! switch namespace with its peer placed straight into the host namespace, so
//! deleting the namespaces removes every link and bridge with them.

use std::io::Read as _;
use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

/// Every namespace of the harness is named `fod-<owner pid>-<seq>-<role>`.
pub const NAME_PREFIX: &str = "fod-";

/// Upper bound for one `ip`/`tc` command (they normally take milliseconds).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// The interface of a host on the cluster network, inside its namespace.
const HOST_IF: &str = "eth0";
/// The bridge every port is on while the network is whole.
const MAIN_BRIDGE: &str = "br0";
/// The bridge the second group of a partition is moved to.
const SIDE_BRIDGE: &str = "br1";

/// Runs `program args`; its stdout, or why it failed. Killed after `COMMAND_TIMEOUT`.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let shown = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{shown}: {e}"))?;
    let pid = child.id();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let (tx, rx) = mpsc::channel();
    // Pipes are drained on a thread so a chatty command cannot block on a full pipe.
    std::thread::spawn(move || {
        let mut out = String::new();
        let mut err = String::new();
        if let Some(p) = stdout.as_mut() {
            let _ = p.read_to_string(&mut out);
        }
        if let Some(p) = stderr.as_mut() {
            let _ = p.read_to_string(&mut err);
        }
        let _ = tx.send((child.wait(), out, err));
    });
    match rx.recv_timeout(COMMAND_TIMEOUT) {
        Ok((Ok(status), out, _)) if status.success() => Ok(out),
        Ok((Ok(status), _, err)) => Err(format!("{shown}: {status}: {}", err.trim())),
        Ok((Err(e), _, _)) => Err(format!("{shown}: {e}")),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            Err(format!("{shown}: no answer within {COMMAND_TIMEOUT:?}"))
        }
    }
}

/// `ip args`.
fn ip(args: &[&str]) -> Result<String, String> {
    run("ip", args)
}

/// Writes a line to the real stderr, past the test harness's output capture, so
/// that skips and cleanups are seen even when the test passes.
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The pid in a `fod-<pid>-...` name, if that process is gone.
fn dead_owner(name: &str) -> Option<u32> {
    let owner = name
        .strip_prefix(NAME_PREFIX)
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok())?;
    let alive = owner == std::process::id() || Path::new(&format!("/proc/{owner}")).exists();
    (!alive).then_some(owner)
}

/// Removes what earlier runs whose owner process is gone left behind: kills
/// whatever still runs in their namespaces, deletes the namespaces (with their
/// links and bridges) and their `fod-*` temp dirs (configs, data, logs).
pub fn remove_stale() {
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if dead_owner(&name).is_none() {
                continue;
            }
            super::disk::unmount_under(&entry.path());
            if std::fs::remove_dir_all(entry.path()).is_ok() {
                say(&format!(
                    "netns harness: removed stale temp dir {}",
                    entry.path().display()
                ));
            }
        }
    }
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(owner) = dead_owner(name) else {
            continue;
        };
        kill_inside(name);
        match ip(&["netns", "del", name]) {
            Ok(_) => say(&format!(
                "netns harness: removed stale namespace {name} (owner pid {owner} is gone)"
            )),
            Err(e) => say(&format!("netns harness: could not remove stale namespace {name}: {e}")),
        }
    }
}

/// SIGKILLs every process in namespace `ns`.
fn kill_inside(ns: &str) {
    if let Ok(pids) = ip(&["netns", "pids", ns]) {
        for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// The namespaces and links of one test network; deleted on drop.
pub struct Topology {
    /// Namespace holding the bridges and the switch end of every veth pair.
    pub switch: String,
    /// Namespace of each host.
    pub hosts: Vec<String>,
    /// Namespaces created so far, deleted on drop (even after a failed setup).
    created: Vec<String>,
    /// Whether the kernel has `sch_netem`, or why not.
    pub netem: Result<(), String>,
}

impl Topology {
    /// Creates the switch and `ips.len()` hosts, host `i` with address
    /// `ips[i]/24` on its `eth0`. Anything created is removed again on error.
    pub fn create(prefix: &str, ips: &[String]) -> Result<Self, String> {
        let mut topo = Topology {
            switch: format!("{prefix}-sw"),
            hosts: Vec::new(),
            created: Vec::new(),
            netem: Ok(()),
        };
        let sw = topo.switch.clone();
        topo.add_ns(&sw)?;
        for bridge in [MAIN_BRIDGE, SIDE_BRIDGE] {
            ip(&[
                "-n",
                &sw,
                "link",
                "add",
                bridge,
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
            ])?;
            ip(&["-n", &sw, "link", "set", bridge, "up"])?;
        }
        for (i, addr) in ips.iter().enumerate() {
            let host = format!("{prefix}-h{}", i + 1);
            topo.add_ns(&host)?;
            let port = port(i);
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", HOST_IF, "netns", &host,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", MAIN_BRIDGE, "up"])?;
            ip(&["-n", &host, "addr", "add", &format!("{addr}/24"), "dev", HOST_IF])?;
            ip(&["-n", &host, "link", "set", HOST_IF, "up"])?;
            topo.hosts.push(host);
        }
        topo.netem = probe_netem(&sw);
        Ok(topo)
    }

    fn add_ns(&mut self, ns: &str) -> Result<(), String> {
        ip(&["netns", "add", ns])?;
        self.created.push(ns.to_string());
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Puts host `i`'s switch port on `bridge` and brings it up.
    fn attach(&self, i: usize, bridge: &str) {
        let port = port(i);
        must(ip(&["-n", &self.switch, "link", "set", &port, "master", bridge]));
        must(ip(&["-n", &self.switch, "link", "set", &port, "up"]));
    }

    /// Takes host `i`'s switch port down: no frame reaches or leaves host `i`.
    pub fn cut(&self, i: usize) {
        must(ip(&["-n", &self.switch, "link", "set", &port(i), "down"]));
    }

    /// Hosts in `a` stay on the main bridge, hosts in `b` move to the side bridge,
    /// every other host is cut.
    pub fn partition(&self, a: &[usize], b: &[usize]) {
        for i in 0..self.hosts.len() {
            if a.contains(&i) {
                self.attach(i, MAIN_BRIDGE);
            } else if b.contains(&i) {
                self.attach(i, SIDE_BRIDGE);
            } else {
                self.cut(i);
            }
        }
    }

    /// Every host back on the main bridge, every port up.
    pub fn heal(&self) {
        for i in 0..self.hosts.len() {
            self.attach(i, MAIN_BRIDGE);
        }
    }

    /// The two ends of host `i`'s link as (namespace, interface).
    fn ends(&self, i: usize) -> [(String, String); 2] {
        [
            (self.switch.clone(), port(i)),
            (self.hosts[i].clone(), HOST_IF.to_string()),
        ]
    }

    /// `tc qdisc replace ... root netem <spec>` on both ends of host `i`'s link,
    /// so the impairment applies to traffic in both directions.
    pub fn netem(&self, i: usize, spec: &str) -> Result<(), String> {
        self.netem.clone()?;
        for (ns, dev) in self.ends(i) {
            let mut args = vec!["-n", &ns, "qdisc", "replace", "dev", &dev, "root", "netem"];
            args.extend(spec.split_whitespace());
            run("tc", &args)?;
        }
        Ok(())
    }

    /// Random loss of `percent`% of frames in each direction of host `i`'s link,
    /// the rest limited to `rate`, without `sch_netem` (see [`Self::impair`]).
    pub fn lossy(&self, i: usize, percent: f64, rate: &str) -> Result<(), String> {
        for (ns, dev) in self.ends(i) {
            impair(&ns, &dev, percent, rate)?;
        }
        Ok(())
    }

    /// Drops every frame host `i` sends (`outbound`) or every frame sent to it
    /// (`!outbound`), and nothing in the other direction: a one-way cut.
    pub fn cut_one_way(&self, i: usize, outbound: bool) -> Result<(), String> {
        let [(sw, port), (host, dev)] = self.ends(i);
        // A qdisc shapes what leaves an interface: the host's eth0 sends what
        // the host sends, the switch port sends what the host receives.
        let (ns, dev) = if outbound { (host, dev) } else { (sw, port) };
        impair(&ns, &dev, 100.0, "1gbit")
    }

    /// Frames dropped so far by the impairments on both ends of host `i`'s link.
    pub fn dropped(&self, i: usize) -> u64 {
        let mut total = 0;
        for (ns, dev) in self.ends(i) {
            let text = run("tc", &["-s", "-n", &ns, "qdisc", "show", "dev", &dev]).unwrap_or_default();
            let mut in_root = false;
            for line in text.lines() {
                if line.starts_with("qdisc") {
                    in_root = line.contains(" root ");
                } else if in_root {
                    // " Sent 64174 bytes 1489 pkt (dropped 519, overlimits 0 requeues 0)"
                    let dropped = line
                        .split_once("(dropped ")
                        .and_then(|(_, rest)| rest.split(',').next());
                    total += dropped.and_then(|n| n.trim().parse::<u64>().ok()).unwrap_or(0);
                    in_root = false;
                }
            }
        }
        total
    }

    /// Removes any impairment from both ends of host `i`'s link.
    pub fn clear(&self, i: usize) {
        for (ns, dev) in self.ends(i) {
            // Fails when there is nothing to remove, which is fine.
            let _ = run("tc", &["-n", &ns, "qdisc", "del", "dev", &dev, "root"]);
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            kill_inside(ns);
            if let Err(e) = ip(&["netns", "del", ns]) {
                say(&format!("netns harness: could not delete namespace {ns}: {e}"));
            }
        }
    }
}

/// On interface `dev` of namespace `ns`, drops `percent`% of the frames it
/// sends, at random, and limits the rest to `rate`, without `sch_netem`: an HTB
/// root whose classic BPF filter sends a random share of frames to a class
/// whose fifo holds none. Replaces whatever qdisc was there.
fn impair(ns: &str, dev: &str, percent: f64, rate: &str) -> Result<(), String> {
    let threshold = ((percent / 100.0) * f64::from(u32::MAX)) as u32;
    // ld rand; jge #threshold -> pass; ret -1 (the filter's class: drop); pass: ret 0 (no match).
    // At 100% the threshold is u32::MAX, which no random value reaches but
    // u32::MAX itself: one frame in 2^32 passes.
    let bytecode = format!("4,32 0 0 4294963256,53 1 0 {threshold},6 0 0 4294967295,6 0 0 0");
    let _ = run("tc", &["-n", ns, "qdisc", "del", "dev", dev, "root"]);
    let tc = |args: &[&str]| {
        let mut all = vec!["-n", ns];
        all.extend_from_slice(args);
        run("tc", &all)
    };
    tc(&[
        "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1",
    ])?;
    for class in ["1:1", "1:2"] {
        tc(&[
            "class", "add", "dev", dev, "parent", "1:", "classid", class, "htb", "rate", rate, "quantum", "1514",
        ])?;
    }
    tc(&[
        "qdisc", "add", "dev", dev, "parent", "1:2", "handle", "2:", "pfifo", "limit", "0",
    ])?;
    tc(&[
        "filter", "add", "dev", dev, "parent", "1:", "bpf", "bytecode", &bytecode, "classid", "1:2",
    ])?;
    Ok(())
}

/// Name of host `i`'s port on the switch.
fn port(i: usize) -> String {
    format!("p{}", i + 1)
}

/// Panics on a failed fault injection: a test that thinks it cut a link when it
/// did not would prove nothing.
fn must(result: Result<String, String>) {
    if let Err(e) = result {
        panic!("netns harness: {e}");
    }
}

/// Whether `tc` can add a netem qdisc (on the switch's loopback, removed again).
fn probe_netem(ns: &str) -> Result<(), String> {
    run(
        "tc",
        &["-n", ns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
    )
    .map_err(|e| format!("netem unavailable (kernel without sch_netem, or no tc): {e}"))?;
    let _ = run("tc", &["-n", ns, "qdisc", "del", "dev", "lo", "root"]);
    Ok(())
}
