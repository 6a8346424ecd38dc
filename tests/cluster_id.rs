//! Cluster ids keep clusters apart, over real processes: each formed cluster
//! gets its own id; a peer of another cluster is refused and cannot be added
//! with `members add`; a fresh node is neither added nor taken over by a
//! cluster that merely knows its address; a member that has not learned the id
//! yet still catches up; and a data dir of another cluster is refused when
//! `cluster.expect_id` pins the intended one.

mod common;

use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use nix::sys::signal::Signal;

use common::run_cli;
use common::run_cli_env;
use common::Cluster;

const ROLES: [&str; 3] = ["validator", "validator", "arbiter"];
const MISMATCH: &str = "refused peer: cluster id mismatch";

/// Starts every agent of `cluster`, commits a write everywhere and waits until
/// all agree on a cluster id; returns (leader, cluster id).
async fn form(cluster: &mut Cluster) -> (usize, String) {
    let all: Vec<usize> = (0..cluster.agents.len()).collect();
    cluster.start_in_order(&all);
    let leader = cluster.wait_leader(&all).await;
    let index = cluster.put_eventually(leader, "formed", "yes").await;
    cluster.wait_converged(&all, index).await;
    let deadline = Instant::now() + common::PATIENCE;
    loop {
        let mut ids = Vec::new();
        for &i in &all {
            ids.push(
                cluster
                    .status(i)
                    .await
                    .and_then(|s| s["cluster_id"].as_str().map(str::to_string)),
            );
        }
        if let Some(Some(id)) = ids.first() {
            if ids.iter().all(|x| x.as_deref() == Some(id.as_str())) {
                return (leader, id.clone());
            }
        }
        assert!(Instant::now() < deadline, "no common cluster id: {ids:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The ids of the members agent `i` reports, and whether each is a voter.
async fn members(cluster: &Cluster, i: usize) -> Vec<(u64, bool)> {
    let status = cluster.status(i).await.expect("status");
    let mut members: Vec<(u64, bool)> = status["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| (m["id"].as_u64().expect("id"), m["voter"].as_bool().expect("voter")))
        .collect();
    members.sort_unstable();
    members
}

/// Adds a new agent to `cluster` with `members add` through agent `via`; its index
/// once it has caught up.
async fn grow(cluster: &mut Cluster, via: usize) -> usize {
    let i = cluster.add_agent("validator");
    grow_with(cluster, via, i).await
}

/// Starts the not-yet-member agent `i`, adds it through agent `via` and waits
/// until it has caught up; returns `i`.
async fn grow_with(cluster: &mut Cluster, via: usize, i: usize) -> usize {
    cluster.start(i);
    wait_up(cluster, i).await;
    let (api, id, addr) = (
        cluster.agents[via].api(),
        cluster.agents[i].id.to_string(),
        cluster.agents[i].peer_addr.clone(),
    );
    let (code, out, err) = run_cli(&["members", "--api", &api, "add", "--id", &id, "--addr", &addr]);
    assert_eq!(code, 0, "members add {id} failed:\n{out}\n{err}\n{}", cluster.logs());
    let index = cluster.put_eventually(via, &format!("grown-{id}"), "1").await;
    let all: Vec<usize> = (0..cluster.agents.len())
        .filter(|&j| cluster.agents[j].pid().is_some())
        .collect();
    cluster.wait_converged(&all, index).await;
    i
}

/// Sends `signal` to agents `which` of `cluster`.
fn signal(cluster: &Cluster, which: &[usize], signal: Signal) {
    for &i in which {
        let pid = cluster.agents[i].pid().expect("agent running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).expect("signal");
    }
}

/// Waits until agent `i`'s API answers.
async fn wait_up(cluster: &Cluster, i: usize) {
    let deadline = Instant::now() + common::PATIENCE;
    while cluster.status(i).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "{} never answered\n{}",
            cluster.agents[i].name,
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (term, leader_id) as agent `i` reports them.
async fn term_and_leader(cluster: &Cluster, i: usize) -> (u64, Option<u64>) {
    let status = cluster.status(i).await.expect("status");
    (status["term"].as_u64().expect("term"), status["leader_id"].as_u64())
}

/// A `failoverd agent` run outside the harness with its own config; killed on drop.
struct Outsider {
    child: Child,
    api: String,
    log: PathBuf,
}

impl Outsider {
    /// A fresh node `id` whose initial members are every agent of `cluster` plus itself.
    fn start(cluster: &Cluster, id: u64) -> Self {
        let dir = cluster.dir.path();
        let peer = format!("127.0.0.1:{}", common::free_port());
        let api = format!("127.0.0.1:{}", common::free_port());
        let mut members: Vec<String> = cluster
            .agents
            .iter()
            .map(|a| format!("{{ id = {}, addr = \"{}\" }}", a.id, a.peer_addr))
            .collect();
        members.push(format!("{{ id = {id}, addr = \"{peer}\" }}"));
        let config = dir.join("outsider.toml");
        let text = format!(
            "node_id = {id}\nname = \"outsider\"\ndata_dir = \"{}\"\n\n[cluster]\nlisten = \"{peer}\"\n\
             initial_members = [ {} ]\n\n[api]\nlisten = \"{api}\"\n",
            dir.join("outsider-data").display(),
            members.join(", "),
        );
        std::fs::write(&config, text).expect("write config");
        let log = dir.join("outsider.log");
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(common::BIN)
            .arg("agent")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn failoverd");
        Outsider { child, api, log }
    }

    async fn status(&self, cluster: &Cluster) -> Option<serde_json::Value> {
        let url = format!("http://{}/v1/status", self.api);
        cluster.http.get(url).send().await.ok()?.json().await.ok()
    }

    fn log(&self) -> String {
        common::strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }
}

impl Drop for Outsider {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- outsider log -----\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh node listing a formed cluster's members plus itself is not added, and moves neither its leader nor its term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_node_listing_a_formed_cluster_is_not_added() {
    let mut a = Cluster::new(&ROLES);
    let (leader, _) = form(&mut a).await;
    let (term, leader_id) = term_and_leader(&a, leader).await;
    let before = members(&a, leader).await;

    let outsider = Outsider::start(&a, 4);
    // "agent started" comes after its first-start decision (bootstrap or not).
    let deadline = Instant::now() + common::PATIENCE;
    while !outsider.log().contains("agent started") {
        assert!(Instant::now() < deadline, "outsider never started\n{}", outsider.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A keeps committing through every member while it runs.
    for i in 0..3 {
        let index = a.put_eventually(i, &format!("with-outsider-{i}"), "1").await;
        a.wait_converged(&[0, 1, 2], index).await;
    }
    for i in 0..3 {
        assert_eq!(
            term_and_leader(&a, i).await,
            (term, leader_id),
            "node {} moved",
            a.agents[i].id
        );
        assert_eq!(
            members(&a, i).await,
            before,
            "membership changed on node {}",
            a.agents[i].id
        );
    }
    let theirs = outsider.status(&a).await.expect("outsider status");
    assert!(
        theirs["cluster_id"].is_null() && theirs["leader_id"].is_null() && theirs["applied_index"].is_null(),
        "the outsider got A's state: {theirs}"
    );
}

/// A member of another cluster that reaches one of ours (at an address it reused) is refused, both ids logged, and neither cluster is disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_of_another_cluster_at_a_reused_address_is_refused() {
    let mut a = Cluster::new(&ROLES);
    let mut b = Cluster::new(&ROLES);
    let (a_leader, a_id) = form(&mut a).await;
    let (b_leader, b_id) = form(&mut b).await;

    // B grows a fourth member, which then goes away; B's leader keeps dialling its address.
    let b4 = grow(&mut b, b_leader).await;
    let reused = b.agents[b4].peer_addr.clone();
    b.kill9(b4);

    // A's new fourth member takes that address over. B is paused meanwhile, so
    // that it first hears from B once it holds A's id (a fresh node would not
    // refuse B: see `fresh_node_at_a_reused_address_is_not_taken_over`).
    signal(&b, &[0, 1, 2], Signal::SIGSTOP);
    let a4 = a.add_agent("validator");
    a.agents[a4].peer_addr = reused.clone();
    a.write_config(a4);
    let a4 = grow_with(&mut a, a_leader, a4).await;
    let status = a.status(a4).await.expect("status");
    assert_eq!(status["cluster_id"].as_str(), Some(a_id.as_str()), "{status}");
    let from = a.log_text(a4).len();
    signal(&b, &[0, 1, 2], Signal::SIGCONT);

    // B's leader reaches it and is refused, on both ends.
    let lines = a.wait_log(a4, from, &[MISMATCH, &b_id, &a_id], 2).await;
    assert!(lines.iter().all(|l| l.contains("peer=127.0.0.1:")), "{lines:?}");
    let to_a4 = format!("addr={reused}");
    let deadline = Instant::now() + common::PATIENCE;
    while !(0..3).any(|i| {
        b.log_text(i)
            .lines()
            .any(|l| l.contains("peer RPC failed") && l.contains(&to_a4) && l.contains("cluster id mismatch"))
    }) {
        assert!(Instant::now() < deadline, "no B node saw the refusal\n{}", b.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Neither cluster is disturbed.
    let index = a.put_eventually(a4, "via-a4", "1").await;
    a.wait_converged(&[0, 1, 2, a4], index).await;
    let status = a.status(a4).await.expect("status");
    assert_eq!(status["cluster_id"].as_str(), Some(a_id.as_str()), "{status}");
    assert_eq!(members(&a, a4).await, vec![(1, true), (2, true), (3, true), (4, true)]);
    let index = b.put_eventually(b_leader, "after-reuse", "1").await;
    b.wait_converged(&[0, 1, 2], index).await;
    assert_eq!(b.get(b_leader, "via-a4").await, None);
}

/// A fresh node waiting to be added, at the address of another cluster's dead member, is not taken over by that cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_node_at_a_reused_address_is_not_taken_over() {
    fresh_node_at_member_address(1).await;
}

/// Same, when the fresh node also has the dead member's node id (say, that member reinstalled on an empty disk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_node_with_a_dead_members_id_and_address_is_not_taken_over() {
    fresh_node_at_member_address(4).await;
}

/// A fresh node with node id `fresh_id`, waiting to be added, comes up at the
/// address of B's (dead) member 4; checks that B does not take it over and that
/// B is not harmed.
async fn fresh_node_at_member_address(fresh_id: u64) {
    let mut b = Cluster::new(&ROLES);
    let (b_leader, b_id) = form(&mut b).await;
    let b4 = grow(&mut b, b_leader).await;
    let reused = b.agents[b4].peer_addr.clone();
    b.kill9(b4);

    // A fresh node, to be added to some cluster later, comes up at that address.
    let mut fresh = Cluster::new(&[]);
    let f = fresh.add_agent("validator");
    fresh.agents[f].id = fresh_id;
    fresh.agents[f].peer_addr = reused.clone();
    fresh.write_config(f);
    fresh.start(f);
    wait_up(&fresh, f).await;
    // B's leader dials it within its backoff: the fresh node either refuses
    // (and logs it) or takes B's traffic.
    let deadline = Instant::now() + common::PATIENCE;
    let status = loop {
        let status = fresh.status(f).await.expect("fresh node status");
        let taken = !status["leader_id"].is_null() || !status["cluster_id"].is_null();
        if taken || fresh.log_text(f).contains("refused peer") {
            break status;
        }
        assert!(Instant::now() < deadline, "B never reached {reused}\n{}", b.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let mut wrong = Vec::new();
    if !status["leader_id"].is_null() || !status["cluster_id"].is_null() {
        wrong.push(format!("the fresh node was taken over by cluster {b_id}: {status}"));
    }
    for i in 0..3 {
        let url = format!("{}/health", b.agents[i].api());
        let health = b
            .http
            .get(url)
            .send()
            .await
            .expect("health")
            .text()
            .await
            .unwrap_or_default();
        if health.contains("raft stopped") {
            wrong.push(format!("{} of B: {}", b.agents[i].name, health.trim()));
        }
    }
    assert!(wrong.is_empty(), "{}\n{}", wrong.join("\n"), b.logs());
    for i in 0..3 {
        let index = b.put_eventually(i, &format!("after-fresh-{i}"), "1").await;
        b.wait_converged(&[0, 1, 2], index).await;
    }
    let status = fresh.status(f).await.expect("fresh node status");
    assert!(
        status["cluster_id"].is_null() && status["applied_index"].is_null(),
        "{status}"
    );
}

/// `members add` refuses a node of another cluster, and a node that is not the id it is added as; membership stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_add_refuses_a_node_of_another_cluster() {
    let mut a = Cluster::new(&ROLES);
    let mut b = Cluster::new(&ROLES);
    let (a_leader, _) = form(&mut a).await;
    let (b_leader, b_id) = form(&mut b).await;

    // B grows a fourth node the supported way, so node 4 holds B's cluster id.
    let b4 = grow(&mut b, b_leader).await;
    let b4_addr = b.agents[b4].peer_addr.clone();
    let b4_status = b.status(b4).await.expect("status");
    assert_eq!(b4_status["cluster_id"].as_str(), Some(b_id.as_str()));

    let before = members(&a, a_leader).await;
    assert_eq!(before, vec![(1, true), (2, true), (3, true)]);
    // Through a follower of A, so the request is also forwarded to A's leader.
    let a_api = a.agents[(a_leader + 1) % 3].api();
    let (code, out, err) = run_cli(&["members", "--api", &a_api, "add", "--id", "4", "--addr", &b4_addr]);
    assert_ne!(code, 0, "A added B's node 4:\n{out}");
    assert!(err.contains(&format!("belongs to cluster {b_id}")), "{err}");
    let b1_addr = b.agents[0].peer_addr.clone();
    let a_api = a.agents[a_leader].api();
    let (code, out, err) = run_cli(&["members", "--api", &a_api, "add", "--id", "9", "--addr", &b1_addr]);
    assert_ne!(code, 0, "A added B's node 1 as 9:\n{out}");
    assert!(err.contains("is node 1, not 9"), "{err}");

    for i in 0..3 {
        assert_eq!(
            members(&a, i).await,
            before,
            "membership changed on node {}",
            a.agents[i].id
        );
    }
    let index = a.put_eventually(a_leader, "after-add", "1").await;
    a.wait_converged(&[0, 1, 2], index).await;
    let b4_status = b.status(b4).await.expect("status");
    assert_eq!(b4_status["cluster_id"].as_str(), Some(b_id.as_str()), "{b4_status}");
    assert_eq!(members(&b, b4).await, vec![(1, true), (2, true), (3, true), (4, true)]);
}

/// `cluster.expect_id` naming another cluster refuses the data dir (exit 65, both ids named); naming its own, the node rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_id_of_another_cluster_refuses_the_data_dir() {
    let mut a = Cluster::new(&ROLES);
    let mut b = Cluster::new(&ROLES);
    let (_, a_id) = form(&mut a).await;
    let (b_leader, b_id) = form(&mut b).await;
    assert_ne!(a_id, b_id);

    let n = (b_leader + 1) % 3;
    b.kill9(n);
    b.agents[n].extra_toml = format!("expect_id = \"{a_id}\"\n");
    b.write_config(n);
    let config = b.agents[n].config.display().to_string();
    let (code, _, stderr) = run_cli_env(&["agent", "--config", &config], &[]);
    assert_eq!(code, 65, "{stderr}");
    assert!(
        stderr.contains(&a_id) && stderr.contains(&b_id),
        "both ids not named:\n{stderr}"
    );

    // The refusal left the data dir intact: pinned to its own id it rejoins B.
    b.agents[n].extra_toml = format!("expect_id = \"{b_id}\"\n");
    b.write_config(n);
    b.start(n);
    let index = b.put_eventually(b_leader, "after-pin", "1").await;
    b.wait_converged(&[0, 1, 2], index).await;
    assert_eq!(b.get(n, "formed").await.as_deref(), Some("yes"));

    assert!(
        stderr.contains("cluster.expect_id"),
        "the refusal does not name the key that pins the id:\n{stderr}"
    );
}

/// A member first started after the others set the cluster id (so it has none yet) catches up instead of stalling the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_member_without_cluster_id_joins_without_stalling_the_cluster() {
    let mut a = Cluster::new(&ROLES);
    // The fastest election timer of the three (openraft draws it once per
    // process): it campaigns first, before the leader's replication to it,
    // backed off while it was down, resumes.
    a.agents[2].extra_toml = "heartbeat_interval = \"100ms\"\nelection_timeout = \"300ms\"\n".to_string();
    a.write_config(2);
    a.start_in_order(&[0, 1]);
    let leader = a.wait_leader(&[0, 1]).await;
    let index = a.put_eventually(leader, "before-late", "1").await;
    a.wait_converged(&[0, 1], index).await;
    let deadline = Instant::now() + common::PATIENCE;
    while a.status(leader).await.is_none_or(|s| s["cluster_id"].is_null()) {
        assert!(Instant::now() < deadline, "no cluster id\n{}", a.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    a.start(2);
    a.wait_converged(&[0, 1, 2], index).await;
    a.wait_leader(&[0, 1, 2]).await;
    let index = a.put_eventually(leader, "after-late", "1").await;
    a.wait_converged(&[0, 1, 2], index).await;
}
