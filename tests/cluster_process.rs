//! Real `failoverd agent` processes on 127.0.0.1: formation in any order, crashes
//! (kill -9) of one node and of all nodes, restarts, membership changes, write
//! forwarding, SIGTERM, and the `status`/`members` CLI against live agents.
//!
//! Tests check invariants once things have settled (one leader everyone agrees on,
//! acknowledged writes readable on every node, the same applied index and state
//! digest everywhere) and wait with generous bounds (`PATIENCE`) instead of
//! asserting on timing.

mod common;

use std::future::Future;
use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::PATIENCE;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use rand::SeedableRng;
use serde_json::Value;

/// Two validators and an arbiter, the shape failoverd is deployed in.
const ROLES: [&str; 3] = ["validator", "validator", "arbiter"];
/// Indexes of the three initial agents.
const ALL: [usize; 3] = [0, 1, 2];

/// A write the cluster acknowledged: it must never be lost.
#[derive(Debug)]
struct Acked {
    key: String,
    value: String,
    index: u64,
}

/// A member as one node sees it: (id, name, role, voter).
type SeenMember = (u64, String, String, bool);

/// Seed for the test's randomness: `FAILOVERD_TEST_SEED` if set, else random. Printed.
fn seed() -> u64 {
    let seed = std::env::var("FAILOVERD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (rerun with FAILOVERD_TEST_SEED={seed})");
    seed
}

/// A started cluster of `ROLES` with an agreed leader; returns the leader's index too.
async fn started() -> (Cluster, usize) {
    let mut cluster = Cluster::new(&ROLES);
    cluster.start_in_order(&ALL);
    let leader = cluster.wait_leader(&ALL).await;
    (cluster, leader)
}

/// Polls `probe` until it returns `Ok`, for up to `PATIENCE`; panics with the last
/// reason and the agents' logs otherwise.
async fn eventually<'a, T, F, Fut>(c: &'a Cluster, what: &str, mut probe: F) -> T
where
    F: FnMut(&'a Cluster) -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        match probe(c).await {
            Ok(value) => return value,
            Err(why) => assert!(
                Instant::now() < deadline,
                "{what}: still not the case after {PATIENCE:?}: {why}\n{}",
                c.logs()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes `n` keys `{prefix}-K`, round-robin through the agents in `via`, each
/// retried until acknowledged.
async fn write_keys(c: &Cluster, via: &[usize], prefix: &str, n: usize) -> Vec<Acked> {
    let mut acked = Vec::with_capacity(n);
    for k in 0..n {
        let key = format!("{prefix}-{k}");
        let value = format!("{prefix}-value-{k}");
        let index = c.put_eventually(via[k % via.len()], &key, &value).await;
        acked.push(Acked { key, value, index });
    }
    acked
}

/// Waits until `among` have applied at least every acknowledged index and agree on
/// the state digest, then checks every write on every one of them.
async fn assert_has_writes(c: &Cluster, among: &[usize], acked: &[Acked]) -> (u64, String) {
    let min_index = acked.iter().map(|a| a.index).max().unwrap_or(0);
    let converged = c.wait_converged(among, min_index).await;
    for &i in among {
        for a in acked {
            let got = c.get(i, &a.key).await;
            assert_eq!(
                got.as_deref(),
                Some(a.value.as_str()),
                "{} lost the acknowledged write {a:?}\n{}",
                c.agents[i].name,
                c.logs()
            );
        }
    }
    converged
}

/// The members listed in a `/v1/status`, sorted by id.
fn members_of(status: &Value) -> Vec<SeenMember> {
    let mut members: Vec<SeenMember> = status["members"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|m| {
                    (
                        m["id"].as_u64().unwrap_or(0),
                        m["name"].as_str().unwrap_or("").to_string(),
                        m["role"].as_str().unwrap_or("").to_string(),
                        m["voter"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    members.sort();
    members
}

/// Waits until every agent in `on` lists exactly the agents in `members`, as
/// voters registered under their configured name and role.
async fn wait_members(c: &Cluster, on: &[usize], members: &[usize]) {
    let mut want: Vec<SeenMember> = members
        .iter()
        .map(|&i| {
            let a = &c.agents[i];
            (a.id, a.name.clone(), a.role.to_string(), true)
        })
        .collect();
    want.sort();
    let want = &want;
    let what = format!("agents {on:?} list exactly {want:?}");
    eventually(c, &what, move |c| async move {
        for &i in on {
            let status = c
                .status(i)
                .await
                .ok_or(format!("{} does not answer", c.agents[i].name))?;
            let seen = members_of(&status);
            if seen != *want {
                return Err(format!("{} sees {seen:?}", c.agents[i].name));
            }
        }
        Ok(())
    })
    .await;
}

/// Runs the `failoverd` CLI off the async workers; (exit code, stdout, stderr).
async fn cli(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::run_cli(&args)
    })
    .await
    .expect("CLI task")
}

/// Indexes in `among` other than `not`.
fn others(among: &[usize], not: usize) -> Vec<usize> {
    among.iter().copied().filter(|&i| i != not).collect()
}

/// Three agents started in a random order with random gaps form one cluster: one
/// leader all agree on, one cluster id, every member registered with its name and role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_started_in_any_order_form_one_cluster() {
    let mut rng = StdRng::seed_from_u64(seed());
    let mut order = ALL.to_vec();
    order.shuffle(&mut rng);
    let gaps: Vec<u64> = order.iter().map(|_| rng.gen_range(0..1500)).collect();
    let mut cluster = Cluster::new(&ROLES);
    let names: Vec<&str> = order.iter().map(|&i| cluster.agents[i].name.as_str()).collect();
    println!("start order {names:?}, pause after each start {gaps:?} ms");
    for (&i, &gap) in order.iter().zip(&gaps) {
        cluster.start(i);
        tokio::time::sleep(Duration::from_millis(gap)).await;
    }

    let leader = cluster.wait_leader(&ALL).await;
    println!("leader: {}", cluster.agents[leader].name);
    let cluster_id = eventually(&cluster, "one cluster id on all three", |c| async move {
        let mut ids = Vec::new();
        for i in ALL {
            ids.push(
                c.status(i)
                    .await
                    .and_then(|s| s["cluster_id"].as_str().map(str::to_string)),
            );
        }
        match &ids[0] {
            Some(id) if ids.iter().all(|other| other.as_ref() == Some(id)) => Ok(id.clone()),
            _ => Err(format!("cluster ids {ids:?}")),
        }
    })
    .await;
    println!("cluster id {cluster_id}");
    wait_members(&cluster, &ALL, &ALL).await;

    let status = cluster.status(0).await.expect("node1 answers");
    let arbiter = members_of(&status)
        .into_iter()
        .find(|m| m.0 == 3)
        .expect("node 3 listed");
    assert_eq!((arbiter.1.as_str(), arbiter.2.as_str()), ("node3", "arbiter"));
    let leader = cluster.wait_leader(&ALL).await;
    println!("leader once everyone is registered: {}", cluster.agents[leader].name);
}

/// An initial member started only after the other two have formed the cluster (and
/// set its id) joins it: all three agree on a leader and share the cluster id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_initial_member_joins_the_formed_cluster() {
    let mut cluster = Cluster::new(&ROLES);
    cluster.start_in_order(&[0, 1]);
    cluster.wait_leader(&[0, 1]).await;
    let first = write_keys(&cluster, &[0, 1], "before-late", 3).await;
    let formed = cluster.status(0).await.expect("node1 answers");
    let cluster_id = formed["cluster_id"]
        .as_str()
        .expect("cluster id set by the first leader")
        .to_string();

    cluster.start(2);
    let leader = cluster.wait_leader(&ALL).await;
    println!("leader with the late member: {}", cluster.agents[leader].name);
    assert_has_writes(&cluster, &ALL, &first).await;
    let late = cluster.status(2).await.expect("node3 answers");
    assert_eq!(late["cluster_id"].as_str(), Some(cluster_id.as_str()), "{late}");
    wait_members(&cluster, &ALL, &ALL).await;
}

/// After kill -9 of the leader the two survivors elect a new leader, keep every
/// write acknowledged before the crash, and commit new writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survivors_of_a_leader_crash_keep_acknowledged_writes_and_commit() {
    let (mut cluster, leader) = started().await;
    let before = write_keys(&cluster, &ALL, "before", 30).await;

    cluster.kill9(leader);
    let survivors = others(&ALL, leader);
    let new_leader = cluster.wait_leader(&survivors).await;
    println!(
        "killed leader {}, new leader {}",
        cluster.agents[leader].name, cluster.agents[new_leader].name
    );
    assert_has_writes(&cluster, &survivors, &before).await;

    let after = write_keys(&cluster, &survivors, "after", 10).await;
    assert_has_writes(&cluster, &survivors, &after).await;
    assert!(after[0].index > before[before.len() - 1].index);
}

/// A crashed leader restarted on its data dir rejoins, gets the writes made while it
/// was down, and ends with the same applied index and state digest as the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_rejoins_and_catches_up() {
    let (mut cluster, leader) = started().await;
    let mut acked = write_keys(&cluster, &ALL, "before", 10).await;

    cluster.kill9(leader);
    let survivors = others(&ALL, leader);
    cluster.wait_leader(&survivors).await;
    let while_down = write_keys(&cluster, &survivors, "while-down", 20).await;

    cluster.start(leader);
    acked.extend(while_down);
    let (index, digest) = assert_has_writes(&cluster, &ALL, &acked).await;
    println!("all three at applied index {index}, digest {digest}");
    cluster.wait_leader(&ALL).await;

    // It takes part again: a write through it commits and reaches everyone.
    let through_it = write_keys(&cluster, &[leader], "through-restarted", 3).await;
    assert_has_writes(&cluster, &ALL, &through_it).await;
}

/// A node that was down while the others wrote more than a snapshot interval
/// (1000 entries) catches up and converges with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_down_past_a_snapshot_catches_up() {
    let (mut cluster, leader) = started().await;
    let follower = others(&ALL, leader)[0];
    let before = write_keys(&cluster, &ALL, "before", 5).await;
    cluster.wait_converged(&ALL, before[4].index).await;

    cluster.kill9(follower);
    let survivors = others(&ALL, follower);
    cluster.wait_leader(&survivors).await;
    let started_writing = Instant::now();
    let lanes = ["lane0", "lane1", "lane2", "lane3"];
    let lane = |prefix| write_keys(&cluster, &survivors, prefix, 300);
    let (a, b, c, d) = tokio::join!(lane(lanes[0]), lane(lanes[1]), lane(lanes[2]), lane(lanes[3]));
    println!("1200 writes with one node down took {:?}", started_writing.elapsed());
    let acked: Vec<Acked> = [before, a, b, c, d].into_iter().flatten().collect();
    let leader = cluster.wait_leader(&survivors).await;
    let status = cluster.status(leader).await.expect("leader answers");
    println!("leader snapshot index {}", status["snapshot_index"]);
    assert!(
        status["snapshot_index"].as_u64().is_some(),
        "the leader never took a snapshot: {status}"
    );

    cluster.start(follower);
    let (index, digest) = assert_has_writes(&cluster, &ALL, &acked).await;
    let status = cluster.status(follower).await.expect("restarted node answers");
    println!(
        "converged at {index} ({digest}); restarted node's snapshot index {}",
        status["snapshot_index"]
    );
}

/// kill -9 of all three at once loses no acknowledged write: after a restart every
/// one of them is on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_crash_loses_no_acknowledged_write() {
    let (mut cluster, _) = started().await;
    let acked = write_keys(&cluster, &ALL, "crash", 50).await;

    for i in ALL {
        cluster.kill9(i);
    }
    cluster.start_in_order(&ALL);
    let leader = cluster.wait_leader(&ALL).await;
    println!("after the restart the leader is {}", cluster.agents[leader].name);
    assert_has_writes(&cluster, &ALL, &acked).await;

    let after = write_keys(&cluster, &ALL, "after-restart", 5).await;
    assert_has_writes(&cluster, &ALL, &after).await;
}

/// With 2 validators and an arbiter, any one node may be down: the other two still
/// commit, and the node converges again after its restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_single_node_may_be_down() {
    let (mut cluster, _) = started().await;
    let mut acked = write_keys(&cluster, &ALL, "start", 3).await;

    for down in ALL {
        let name = cluster.agents[down].name.clone();
        let role = cluster.agents[down].role;
        println!("taking down {name} ({role})");
        cluster.kill9(down);
        let up = others(&ALL, down);
        cluster.wait_leader(&up).await;
        let written = write_keys(&cluster, &up, &format!("without-{name}"), 5).await;
        assert_has_writes(&cluster, &up, &written).await;
        acked.extend(written);

        cluster.start(down);
        assert_has_writes(&cluster, &ALL, &acked).await;
    }
}

/// A fourth node started without initial members is added with `members add`
/// through a follower, becomes a voter with all the data, takes writes, and is
/// removed again with `members remove`; the remaining three keep committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_is_added_and_removed_with_the_cli() {
    let (mut cluster, leader) = started().await;
    wait_members(&cluster, &ALL, &ALL).await;
    let before = write_keys(&cluster, &ALL, "before-join", 10).await;

    let new = cluster.add_agent("validator");
    cluster.start(new);
    eventually(&cluster, "the new agent's API answers", |c| async move {
        c.status(new).await.map(|_| ()).ok_or("no answer".to_string())
    })
    .await;
    let (new_id, new_addr) = (
        cluster.agents[new].id.to_string(),
        cluster.agents[new].peer_addr.clone(),
    );
    let follower = others(&ALL, leader)[0];
    let api = cluster.agents[follower].api();
    let (code, out, err) = cli(&["members", "add", "--id", &new_id, "--addr", &new_addr, "--api", &api]).await;
    assert_eq!(code, 0, "members add failed:\n{out}\n{err}\n{}", cluster.logs());
    assert!(
        out.contains(&new_addr),
        "members add does not list the new node:\n{out}"
    );

    let four = [0, 1, 2, new];
    wait_members(&cluster, &four, &four).await;
    assert_has_writes(&cluster, &four, &before).await;
    cluster.wait_leader(&four).await;
    let index = cluster
        .put(new, "via-new", "hello")
        .await
        .unwrap_or_else(|e| panic!("write through the new node failed: {e}\n{}", cluster.logs()));
    let via_new = [Acked {
        key: "via-new".into(),
        value: "hello".into(),
        index,
    }];
    assert_has_writes(&cluster, &four, &via_new).await;

    let leader = cluster.wait_leader(&four).await;
    let api = cluster.agents[leader].api();
    let (code, out, err) = cli(&["members", "remove", &new_id, "--api", &api]).await;
    assert_eq!(code, 0, "members remove failed:\n{out}\n{err}\n{}", cluster.logs());
    wait_members(&cluster, &ALL, &ALL).await;

    // The removed node is still running; the three commit without it.
    let after = write_keys(&cluster, &ALL, "after-leave", 5).await;
    assert_has_writes(&cluster, &ALL, &after).await;
    let (code, out, err) = cli(&["members", "--json", "--api", &cluster.agents[0].api()]).await;
    assert_eq!(code, 0, "members --json failed:\n{out}\n{err}");
    let listed: Value = serde_json::from_str(&out).expect("members --json prints JSON");
    let mut ids: Vec<u64> = listed
        .as_array()
        .expect("a JSON list")
        .iter()
        .filter_map(|m| m["id"].as_u64())
        .collect();
    ids.sort();
    assert_eq!(ids, vec![1, 2, 3]);
}

/// A crashed node is removed through a follower's API (forwarded to the leader);
/// the two left form the whole membership and keep committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_node_is_removed_through_a_follower() {
    let (mut cluster, leader) = started().await;
    wait_members(&cluster, &ALL, &ALL).await;
    let before = write_keys(&cluster, &ALL, "before", 5).await;

    cluster.kill9(leader);
    let left = others(&ALL, leader);
    let new_leader = cluster.wait_leader(&left).await;
    let follower = others(&left, new_leader)[0];
    let dead_id = cluster.agents[leader].id.to_string();
    println!(
        "removing dead {} through follower {}",
        cluster.agents[leader].name, cluster.agents[follower].name
    );
    let api = cluster.agents[follower].api();
    let (code, out, err) = cli(&["members", "remove", &dead_id, "--api", &api]).await;
    assert_eq!(code, 0, "members remove failed:\n{out}\n{err}\n{}", cluster.logs());
    wait_members(&cluster, &left, &left).await;

    let after = write_keys(&cluster, &left, "after", 10).await;
    let mut acked = before;
    acked.extend(after);
    assert_has_writes(&cluster, &left, &acked).await;
}

/// A write sent to a follower's API is forwarded to the leader, acknowledged with
/// its log index, and applied at that index everywhere; so is a delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_forwards_writes_to_the_leader() {
    let (cluster, leader) = started().await;
    let follower = others(&ALL, leader)[0];

    let index = cluster
        .put(follower, "forwarded", "through-a-follower")
        .await
        .unwrap_or_else(|e| panic!("write through a follower failed: {e}\n{}", cluster.logs()));
    let acked = [Acked {
        key: "forwarded".into(),
        value: "through-a-follower".into(),
        index,
    }];
    assert_has_writes(&cluster, &ALL, &acked).await;
    for i in ALL {
        let url = format!("{}/v1/kv/forwarded", cluster.agents[i].api());
        let resp = cluster.http.get(url).send().await.expect("GET answered");
        let at = resp.headers().get("x-failoverd-index").and_then(|v| v.to_str().ok());
        assert_eq!(
            at,
            Some(index.to_string().as_str()),
            "{} applied it elsewhere",
            cluster.agents[i].name
        );
    }

    let url = format!("{}/v1/kv/forwarded", cluster.agents[follower].api());
    let resp = cluster.http.delete(url).send().await.expect("DELETE answered");
    assert!(
        resp.status().is_success(),
        "delete through a follower: {}",
        resp.status()
    );
    let body: Value = resp.json().await.expect("JSON reply");
    assert_eq!(body["deleted"], true);
    let status = cluster.status(leader).await.expect("leader answers");
    let applied = status["applied_index"].as_u64().unwrap_or(0);
    cluster.wait_converged(&ALL, applied).await;
    for i in ALL {
        assert_eq!(
            cluster.get(i, "forwarded").await,
            None,
            "{} still has the key",
            cluster.agents[i].name
        );
    }
}

/// SIGTERM stops an agent with exit code 0, whether it leads, follows, or is left
/// alone without a quorum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly() {
    let (mut cluster, leader) = started().await;
    let follower = others(&ALL, leader)[0];
    let last = others(&others(&ALL, leader), follower)[0];
    write_keys(&cluster, &ALL, "before-stop", 3).await;

    for (i, what) in [
        (leader, "leader"),
        (follower, "follower"),
        (last, "last node, no quorum"),
    ] {
        let (status, took) = cluster.terminate(i);
        println!(
            "{} ({what}) stopped after SIGTERM in {took:?} (goal: < 5s)",
            cluster.agents[i].name
        );
        assert_eq!(
            status.code(),
            Some(0),
            "{} exited with {status}\n{}",
            cluster.agents[i].name,
            cluster.logs()
        );
        assert!(
            took < Duration::from_secs(15),
            "{} took {took:?} to stop",
            cluster.agents[i].name
        );
        let log = std::fs::read_to_string(&cluster.agents[i].log).unwrap_or_default();
        assert!(
            log.contains("stopped"),
            "{} did not log its clean stop:\n{log}",
            cluster.agents[i].name
        );
    }
}

/// `failoverd status` shows each node's name and Raft state as a table and as JSON,
/// and `/health` answers 200 "OK" on every node of a cluster with a leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_cli_and_health_on_a_healthy_cluster() {
    let (cluster, _) = started().await;
    wait_members(&cluster, &ALL, &ALL).await;
    let leader = cluster.wait_leader(&ALL).await;

    for i in ALL {
        let agent = &cluster.agents[i];
        let state = if i == leader { "Leader" } else { "Follower" };
        let api = agent.api();

        let (code, out, err) = cli(&["status", "--api", &api]).await;
        assert_eq!(code, 0, "status failed:\n{out}\n{err}");
        assert!(
            out.contains(&agent.name),
            "status of {} does not name it:\n{out}",
            agent.name
        );
        let raft_line = out.lines().find(|l| l.starts_with("raft")).unwrap_or("");
        assert!(raft_line.contains(state), "{} should be {state}:\n{out}", agent.name);
        for other in &cluster.agents {
            assert!(
                out.contains(&other.name),
                "member {} missing from the table:\n{out}",
                other.name
            );
        }

        let (code, out, err) = cli(&["status", "--api", &api, "--json"]).await;
        assert_eq!(code, 0, "status --json failed:\n{out}\n{err}");
        let json: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"));
        assert_eq!(json["raft_state"], state, "{json}");
        assert_eq!(json["name"], agent.name.as_str(), "{json}");
        assert_eq!(json["leader_id"], cluster.agents[leader].id, "{json}");

        let resp = cluster
            .http
            .get(format!("{api}/health"))
            .send()
            .await
            .expect("/health answered");
        assert_eq!(resp.status().as_u16(), 200, "{} /health", agent.name);
        assert_eq!(resp.text().await.expect("body").trim(), "OK");

        let resp = cluster
            .http
            .get(format!("{api}/metrics"))
            .send()
            .await
            .expect("/metrics answered");
        assert_eq!(resp.status().as_u16(), 200, "{} /metrics", agent.name);
        let text = resp.text().await.expect("body");
        assert!(text.contains("failoverd_raft_term"), "{} /metrics:\n{text}", agent.name);
    }
}

/// A node started alone (1 of 3 initial members) cannot elect a leader, and its
/// `/health` says so with 503 and a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_without_a_leader() {
    let mut cluster = Cluster::new(&ROLES);
    cluster.start(0);
    // Wait until it has campaigned at least once: it has had its chance to elect.
    let status = eventually(&cluster, "the lone node campaigns", |c| async move {
        let status = c.status(0).await.ok_or("no answer".to_string())?;
        match status["term"].as_u64() {
            Some(term) if term >= 1 => Ok(status),
            _ => Err(format!("{status}")),
        }
    })
    .await;
    assert!(status["leader_id"].is_null(), "a lone node found a leader: {status}");

    let resp = cluster
        .http
        .get(format!("{}/health", cluster.agents[0].api()))
        .send()
        .await
        .expect("/health answered");
    assert_eq!(resp.status().as_u16(), 503);
    let why = resp.text().await.expect("body");
    assert!(why.contains("no leader"), "503 without a reason: {why:?}");
    println!("lone node /health: 503 {}", why.trim());

    let (code, out, err) = cli(&["status", "--api", &cluster.agents[0].api()]).await;
    assert_eq!(code, 0, "status failed:\n{out}\n{err}");
    assert!(out.contains("leader none"), "status should show no leader:\n{out}");
}
