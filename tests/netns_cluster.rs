//! Agents on separate hosts (network namespaces, see `tests/netns/mod.rs`):
//! formation across a real network, a cut-off leader, and a degraded link.
//!
//! Run as root; elsewhere each test prints why it skips, unless
//! `FAILOVERD_REQUIRE_NETNS=1`. The degraded-link test uses netem when the kernel
//! has it and otherwise random loss plus a rate limit (no added delay), unless
//! `FAILOVERD_REQUIRE_NETEM=1`, which makes a missing netem a failure.

mod netns;

use std::time::Duration;
use std::time::Instant;

use netns::NetCluster;

/// Two validators and an arbiter, the shape failoverd is deployed in.
const ROLES: [&str; 3] = ["validator", "validator", "arbiter"];
/// Indexes of the three hosts.
const ALL: [usize; 3] = [0, 1, 2];

/// A write the cluster acknowledged: it must never be lost.
#[derive(Debug)]
struct Acked {
    key: String,
    value: String,
    index: u64,
}

/// A cluster of `ROLES` with every agent started and an agreed leader, or `None` to skip.
async fn started() -> Option<(NetCluster, usize)> {
    let mut cluster = NetCluster::new(&ROLES)?;
    cluster.start_all();
    let leader = cluster.wait_leader(&ALL).await;
    println!("leader: {} ({})", cluster.hosts[leader].name, cluster.ip(leader));
    Some((cluster, leader))
}

/// Writes `n` keys `{prefix}-K` round-robin through `via`, each retried until acknowledged.
async fn write_keys(c: &NetCluster, via: &[usize], prefix: &str, n: usize) -> Vec<Acked> {
    let mut acked = Vec::with_capacity(n);
    for k in 0..n {
        let key = format!("{prefix}-{k}");
        let value = format!("{prefix}-value-{k}");
        let index = c.put_eventually(via[k % via.len()], &key, &value).await;
        acked.push(Acked { key, value, index });
    }
    acked
}

/// Waits until `among` have applied every acknowledged write and agree on the
/// state digest, then reads every write back on every one of them.
async fn assert_has_writes(c: &NetCluster, among: &[usize], acked: &[Acked]) -> (u64, String) {
    let min_index = acked.iter().map(|a| a.index).max().unwrap_or(0);
    let converged = c.wait_converged(among, min_index).await;
    for &i in among {
        for a in acked {
            let got = c.get(i, &a.key).await;
            assert_eq!(
                got.as_deref(),
                Some(a.value.as_str()),
                "{} lost the acknowledged write {a:?}",
                c.hosts[i].name
            );
        }
    }
    converged
}

/// Indexes in `ALL` other than `not`.
fn others(not: usize) -> Vec<usize> {
    ALL.iter().copied().filter(|&i| i != not).collect()
}

/// Three agents on three hosts form one cluster over the bridge: one leader, one
/// cluster id, every member at its host's address, writes replicated to every host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_form_one_cluster_over_the_network() {
    let Some((cluster, leader)) = started().await else {
        return;
    };
    let mut cluster_ids = Vec::new();
    for i in ALL {
        let status = cluster.status(i).await.expect("status");
        assert_eq!(status["node_id"].as_u64(), Some(cluster.hosts[i].id));
        cluster_ids.push(status["cluster_id"].as_str().map(str::to_string));
        let mut addrs: Vec<(u64, String)> = status["members"]
            .as_array()
            .expect("members")
            .iter()
            .map(|m| {
                (
                    m["id"].as_u64().unwrap_or(0),
                    m["addr"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        addrs.sort();
        let want: Vec<(u64, String)> = cluster.hosts.iter().map(|h| (h.id, h.peer_addr.clone())).collect();
        assert_eq!(addrs, want, "{} sees other member addresses", cluster.hosts[i].name);
    }
    assert!(cluster_ids[0].is_some(), "no cluster id: {cluster_ids:?}");
    assert!(cluster_ids.iter().all(|id| *id == cluster_ids[0]), "{cluster_ids:?}");
    let leader_status = cluster.status(leader).await.expect("leader status");
    assert_eq!(leader_status["raft_state"].as_str(), Some("Leader"));

    // Through the arbiter (a follower or the leader) and both validators.
    let acked = write_keys(&cluster, &[2, 0, 1], "formed", 6).await;
    let (index, digest) = assert_has_writes(&cluster, &ALL, &acked).await;
    println!("converged at index {index}, digest {digest}");
}

/// A leader cut off the network cannot commit; the other two elect a new leader
/// and commit; after healing all three converge and the minority write is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_cannot_commit_and_majority_moves_on() {
    let Some((cluster, old)) = started().await else {
        return;
    };
    let mut acked = write_keys(&cluster, &ALL, "before", 3).await;
    assert_has_writes(&cluster, &ALL, &acked).await;
    let old_term = cluster.status(old).await.expect("status")["term"].as_u64().unwrap_or(0);

    cluster.isolate(old);
    println!("isolated {} ({})", cluster.hosts[old].name, cluster.ip(old));
    let majority = others(old);
    let new = cluster.wait_leader(&majority).await;
    let new_status = cluster.status(new).await.expect("status");
    assert!(new_status["term"].as_u64().unwrap_or(0) > old_term, "{new_status}");
    println!("new leader {} in term {}", cluster.hosts[new].name, new_status["term"]);

    let applied_before = cluster.status(old).await.expect("status")["applied_index"].as_u64();
    let tried = Instant::now();
    let minority = cluster
        .put_within(old, "minority", "must-not-commit", Duration::from_secs(5))
        .await;
    assert!(
        minority.is_err(),
        "the isolated old leader committed a write: {minority:?}"
    );
    println!("minority write after {:?}: {}", tried.elapsed(), minority.unwrap_err());

    acked.extend(write_keys(&cluster, &majority, "during", 5).await);
    assert_has_writes(&cluster, &majority, &acked).await;
    let old_status = cluster.status(old).await.expect("status");
    assert_eq!(
        old_status["applied_index"].as_u64(),
        applied_before,
        "the isolated host applied entries: {old_status}"
    );
    assert_eq!(cluster.get(old, "during-0").await, None);

    // The minority write is in the old leader's log, uncommitted: the heal must
    // discard it. (The agent dropped the request when curl gave up, so nothing
    // re-sends it to the new leader after the heal.)
    assert!(
        old_status["last_log_index"].as_u64() > applied_before,
        "the minority write never reached the old leader's log: {old_status}"
    );
    cluster.heal();
    println!("healed");
    cluster.wait_leader(&ALL).await;
    let (index, digest) = assert_has_writes(&cluster, &ALL, &acked).await;
    for i in ALL {
        assert_eq!(
            cluster.get(i, "minority").await,
            None,
            "{} applied the uncommitted minority write",
            cluster.hosts[i].name
        );
    }
    println!("converged at index {index}, digest {digest}");
}

/// One host's link delays and drops packets (netem, or random loss and a rate
/// limit where the kernel lacks netem): the cluster still commits every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_commits_through_a_lossy_slow_link() {
    let Some((cluster, leader)) = started().await else {
        return;
    };
    // The leader's link: every heartbeat and append crosses it.
    match cluster.netem_supported() {
        Ok(()) => {
            cluster.netem(leader, "delay 50ms 10ms loss 5%").expect("netem");
            println!("netem on {}: delay 50ms 10ms loss 5%", cluster.hosts[leader].name);
        }
        Err(why) => {
            assert!(
                !std::env::var("FAILOVERD_REQUIRE_NETEM").is_ok_and(|v| v == "1"),
                "FAILOVERD_REQUIRE_NETEM=1 but {why}"
            );
            cluster.lossy(leader, 5.0, "1mbit").expect("lossy link");
            netns::topology::say(&format!(
                "{why}; degrading {} with 5% random loss each way and 1mbit instead (no added delay)",
                cluster.hosts[leader].name
            ));
        }
    }

    // At least 20 writes, and at least 5 s of traffic over the impaired link;
    // at most 60 writes, each bounded by `put_eventually`.
    let started = Instant::now();
    let mut acked = Vec::new();
    while acked.len() < 20 || (started.elapsed() < Duration::from_secs(5) && acked.len() < 60) {
        let k = acked.len();
        let (key, value) = (format!("lossy-{k}"), format!("lossy-value-{k}"));
        let index = cluster.put_eventually(ALL[k % ALL.len()], &key, &value).await;
        acked.push(Acked { key, value, index });
    }
    let dropped = cluster.dropped(leader);
    println!(
        "{} writes acknowledged in {:?}; the impaired link dropped {dropped} frames",
        acked.len(),
        started.elapsed()
    );
    assert!(dropped > 0, "the impairment dropped nothing: the test proved nothing");

    cluster.clear_netem(leader);
    let (index, digest) = assert_has_writes(&cluster, &ALL, &acked).await;
    println!("converged at index {index}, digest {digest}");
}

/// A deposed leader cut off together with a lock holder never acknowledges the
/// holder's renews, while the majority elects a new leader that expires the
/// session no sooner than its TTL after the cut (hence after it took office).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposed_leader_never_acknowledges_a_renew() {
    let Some(mut cluster) = NetCluster::new(&ROLES) else {
        return;
    };
    for i in ALL {
        cluster.set_extra_toml(i, "[consul_api]\nsession_ttl_min = \"2s\"\n");
    }
    cluster.start_all();
    let old = cluster.wait_leader(&ALL).await;
    let consul = |path: &str| format!("http://127.0.0.1:8500{path}");
    let t = Duration::from_secs(5);
    const TTL: Duration = Duration::from_secs(4);
    // The holder lives on the leader's host and talks to the leader's API.
    let created = cluster
        .request(
            old,
            "PUT",
            &consul("/v1/session/create"),
            Some(r#"{"Name":"holder","TTL":"4s","LockDelay":"1s"}"#),
            t,
        )
        .await
        .expect("create");
    let id = serde_json::from_str::<serde_json::Value>(&created.body).expect("json")["ID"]
        .as_str()
        .expect("ID")
        .to_string();
    let acquired = cluster
        .request(
            old,
            "PUT",
            &consul(&format!("/v1/kv/validator?acquire={id}")),
            Some("x"),
            t,
        )
        .await;
    assert_eq!(acquired.expect("acquire").body, "true");

    cluster.isolate(old);
    let cut = Instant::now();
    println!("--- isolated the leader {} with the holder", cluster.hosts[old].name);
    // Renews through the deposed leader: none may be acknowledged.
    let majority: Vec<usize> = ALL.into_iter().filter(|&i| i != old).collect();
    let mut attempts = 0;
    while cut.elapsed() < TTL * 2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let renew = cluster
            .request(
                old,
                "PUT",
                &consul(&format!("/v1/session/renew/{id}")),
                None,
                Duration::from_secs(2),
            )
            .await;
        if let Ok(reply) = &renew {
            assert!(
                !reply.ok(),
                "the deposed leader acknowledged a renew {:?} after the cut: {}",
                cut.elapsed(),
                reply.body
            );
        }
        attempts += 1;
    }
    println!("{attempts} renews through the deposed leader, none acknowledged");

    // The majority's new leader expires the session, but not before TTL after the cut.
    let new = cluster.wait_leader(&majority).await;
    let info = format!("/v1/session/info/{id}?stale");
    let deadline = Instant::now() + Duration::from_secs(60);
    let expired = loop {
        let reply = cluster
            .request(new, "GET", &consul(&info), None, t)
            .await
            .expect("info");
        if reply.body.trim() == "[]" {
            break cut.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "the session never expired on the majority side"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("session expired on the majority side {expired:?} after the cut (TTL {TTL:?})");
    assert!(expired >= TTL, "expired only {expired:?} after the cut");

    cluster.heal();
    let (index, _) = cluster.wait_converged(&ALL, 1).await;
    println!("healed and converged at index {index}");
}

/// An agent whose data disk fills up exits (code 1, "raft stopped") instead of
/// lingering without Raft, and once there is space again and it is started
/// again, it rejoins and catches up. Found by the nemesis (`disk-full`): sled
/// keeps failing after its first I/O error, so agents stayed broken after the
/// disk was freed, and with two of them so the cluster lost its quorum for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_on_a_full_disk_exits_and_rejoins_once_restarted_with_space() {
    let Some(mut c) = NetCluster::new(&ROLES) else {
        return;
    };
    c.small_disk(0, 16).expect("a small data disk for host1");
    c.start_all();
    c.wait_leader(&ALL).await;
    c.put_eventually(1, "before", "full").await;
    let filled = c.fill_disk(0).expect("fill host1's disk");
    println!("host1's disk filled with {} KiB", filled / 1024);

    // The others are a majority: writes go on, and host1 must store them too.
    let deadline = Instant::now() + netns::PATIENCE;
    let mut n = 0;
    while c.running(0) {
        assert!(
            Instant::now() < deadline,
            "host1 still runs {:?} after its disk filled up\n{}",
            netns::PATIENCE,
            c.logs()
        );
        let _ = c
            .put_within(1, &format!("while-full-{n}"), "x", Duration::from_secs(5))
            .await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = c.exit_status(0).expect("host1 exited");
    assert_eq!(status.code(), Some(1), "host1's exit: {status:?}");
    let log = std::fs::read_to_string(&c.hosts[0].log).unwrap_or_default();
    assert!(
        log.contains("raft stopped"),
        "host1's log does not say why it stopped:\n{}",
        c.logs()
    );

    c.free_disk(0);
    c.kill9(0);
    c.start(0);
    let index = c.put_eventually(1, "after", "space").await;
    c.wait_converged(&ALL, index).await;
    assert_eq!(c.get(0, "after").await.as_deref(), Some("space"));
}

/// A leader that can send but not receive (every frame to it dropped) is
/// replaced by the other two while the one-way cut lasts, and writes commit:
/// its heartbeats stop reaching the followers once TCP, hearing no
/// acknowledgements, stops sending new data, long before HTTP/2 keepalive
/// (~15 s) would drop the connections. The window is well under that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_that_cannot_hear_its_followers_is_replaced_while_the_cut_lasts() {
    let Some((c, leader)) = started().await else {
        return;
    };
    let others: Vec<usize> = ALL.into_iter().filter(|&i| i != leader).collect();
    let old_id = c.hosts[leader].id;
    c.cut_one_way(leader, false).expect("one-way cut");
    let window = Duration::from_secs(12);
    let deadline = Instant::now() + window;
    let replaced = loop {
        let mut ids = Vec::new();
        for &i in &others {
            ids.push(c.status(i).await.and_then(|s| s["leader_id"].as_u64()));
        }
        if let [Some(a), Some(b)] = ids[..] {
            if a == b && a != old_id {
                break true;
            }
        }
        if Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        replaced,
        "the followers of {} (which hears nobody) elected no other leader within {window:?}\n{}",
        c.hosts[leader].name,
        c.logs()
    );
    let index = c
        .put_within(others[0], "during-one-way-cut", "committed", Duration::from_secs(10))
        .await
        .expect("a write during the one-way cut");
    c.clear_netem(leader);
    c.wait_converged(&ALL, index).await;
}
