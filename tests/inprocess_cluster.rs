//! Cluster behaviour of the real sled stores under openraft, with faults
//! injected through the in-memory `TestCluster` (see `inprocess/mod.rs`):
//! elections, partitions, crashes and snapshot catch-up. Checks are
//! invariants (one leader, no lost or phantom writes, equal state digests).

mod inprocess;

use std::time::Duration;

use inprocess::put;
use inprocess::TestCluster;

/// How long a write to a leader cut off from its quorum is given to (wrongly) commit.
const MINORITY_WRITE_WINDOW: Duration = Duration::from_secs(3);

/// A 3-node cluster elects exactly one leader: every node names the same leader
/// in the same term, and only that node is in the Leader state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_exactly_one_leader() {
    let cluster = TestCluster::new(3).await;
    let ids = cluster.ids();
    let leader = cluster.wait_for_leader(&ids).await;
    let metrics: Vec<_> = ids.iter().map(|&id| cluster.metrics(id)).collect();
    let leaders: Vec<_> = metrics
        .iter()
        .filter(|m| m.state == openraft::ServerState::Leader)
        .map(|m| (m.id, m.current_term))
        .collect();
    assert_eq!(
        leaders,
        vec![(leader, metrics[0].current_term)],
        "metrics: {metrics:#?}"
    );
    assert_eq!(cluster.leader(), Some(leader));
    cluster.shutdown().await;
}

/// An isolated leader cannot commit a write, while the majority elects a new
/// leader in a later term and commits without the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_cannot_commit_and_majority_moves_on() {
    let cluster = TestCluster::new(3).await;
    let ids = cluster.ids();
    let old = cluster.wait_for_leader(&ids).await;
    let old_term = cluster.metrics(old).current_term;
    cluster.write_committed(&ids, put("before", "1")).await;

    cluster.isolate(old);
    let majority = cluster.others(old);
    let minority_write = tokio::time::timeout(MINORITY_WRITE_WINDOW, cluster.write(old, put("minority", "lost"))).await;
    assert!(
        !matches!(minority_write, Ok(Ok(_))),
        "an isolated leader committed a write: {minority_write:?}"
    );

    let new = cluster.wait_for_leader(&majority).await;
    assert_ne!(new, old);
    assert!(cluster.metrics(new).current_term > old_term);
    let index = cluster
        .write_committed(&majority, put("majority", "kept"))
        .await
        .log_id
        .index;
    cluster.wait_converged(&majority, index).await;
    for &id in &majority {
        assert_eq!(
            cluster.value(id, "majority").as_deref(),
            Some(&b"kept"[..]),
            "node {id}"
        );
        assert_eq!(
            cluster.value(id, "minority"),
            None,
            "node {id} applied the minority write"
        );
        assert_eq!(cluster.value(id, "before").as_deref(), Some(&b"1"[..]), "node {id}");
    }
    cluster.shutdown().await;
}

/// After a partition heals, all nodes reach the same applied index and state
/// digest, and the write the minority leader accepted but never committed is
/// gone everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healed_partition_converges_without_the_minority_write() {
    let cluster = TestCluster::new(3).await;
    let ids = cluster.ids();
    let old = cluster.wait_for_leader(&ids).await;
    let majority = cluster.others(old);
    cluster.partition(&[old], &majority);
    let minority_write = tokio::time::timeout(MINORITY_WRITE_WINDOW, cluster.write(old, put("minority", "lost"))).await;
    assert!(
        !matches!(minority_write, Ok(Ok(_))),
        "minority committed: {minority_write:?}"
    );
    // The old leader holds the write in its log, uncommitted.
    let old_metrics = cluster.metrics(old);
    assert!(
        old_metrics.last_log_index > old_metrics.last_applied.map(|l| l.index),
        "{old_metrics:?}"
    );

    cluster.wait_for_leader(&majority).await;
    cluster.write_many(&majority, "majority-", 5).await;

    cluster.heal();
    cluster.wait_for_leader(&ids).await;
    // A write after the heal gives a log index every node must reach.
    let index = cluster.write_committed(&ids, put("after-heal", "1")).await.log_id.index;
    let (applied, digest) = cluster.wait_converged(&ids, index).await;
    for &id in &ids {
        assert_eq!(cluster.applied(id), (applied, digest), "node {id}");
        assert_eq!(
            cluster.value(id, "minority"),
            None,
            "node {id} kept the uncommitted write"
        );
        assert!(
            cluster.value(id, "majority-4").is_some(),
            "node {id} lacks a committed write"
        );
    }
    cluster.shutdown().await;
}

/// In a 5-node cluster a leader partitioned with one follower still cannot
/// commit (2 of 5 is no quorum) even though its entry is replicated to that
/// follower; after the heal both drop it and all five converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_node_minority_cannot_commit_and_drops_its_entry() {
    let cluster = TestCluster::new(5).await;
    let ids = cluster.ids();
    let old = cluster.wait_for_leader(&ids).await;
    let buddy = cluster.others(old)[0];
    let minority = [old, buddy];
    let majority: Vec<_> = ids.iter().copied().filter(|id| !minority.contains(id)).collect();
    cluster.partition(&minority, &majority);
    let minority_write = tokio::time::timeout(MINORITY_WRITE_WINDOW, cluster.write(old, put("minority", "lost"))).await;
    assert!(
        !matches!(minority_write, Ok(Ok(_))),
        "minority committed: {minority_write:?}"
    );
    let old_last = cluster.metrics(old).last_log_index;
    inprocess::wait_until("the minority write reaches the buddy's log", || {
        (cluster.metrics(buddy).last_log_index == old_last).then_some(())
    })
    .await;

    cluster.wait_for_leader(&majority).await;
    cluster.write_many(&majority, "majority-", 3).await;
    cluster.heal();
    cluster.wait_for_leader(&ids).await;
    let index = cluster.write_committed(&ids, put("after-heal", "1")).await.log_id.index;
    cluster.wait_converged(&ids, index).await;
    for &id in &ids {
        assert_eq!(
            cluster.value(id, "minority"),
            None,
            "node {id} kept the uncommitted write"
        );
        assert!(
            cluster.value(id, "majority-2").is_some(),
            "node {id} lacks a committed write"
        );
    }
    cluster.shutdown().await;
}

/// A crashed follower restarted on its data dir catches up to the same applied
/// index and digest, including writes made while it was down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_follower_catches_up() {
    let mut cluster = TestCluster::new(3).await;
    let ids = cluster.ids();
    let leader = cluster.wait_for_leader(&ids).await;
    let index = cluster.write_many(&ids, "early-", 5).await;
    cluster.wait_converged(&ids, index).await;

    let follower = cluster.others(leader)[0];
    cluster.crash(follower).await;
    let alive = cluster.others(follower);
    let index = cluster.write_many(&alive, "while-down-", 10).await;

    cluster.restart(follower).await;
    // Its own log and snapshot come back before it hears from anyone.
    assert!(
        cluster.value(follower, "early-4").is_some(),
        "restart lost applied state"
    );
    let (applied, digest) = cluster.wait_converged(&ids, index).await;
    assert_eq!(cluster.applied(follower), (applied, digest));
    assert!(cluster.value(follower, "while-down-9").is_some());
    cluster.shutdown().await;
}

/// A follower that was down while the others snapshotted and purged the log it
/// needs catches up through install_snapshot to the same applied index and digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_follower_catches_up_from_a_snapshot() {
    let config = openraft::Config {
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(20),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..inprocess::fast_config()
    };
    let mut cluster = TestCluster::with_config(3, config).await;
    let ids = cluster.ids();
    let leader = cluster.wait_for_leader(&ids).await;
    let index = cluster.write_many(&ids, "early-", 3).await;
    cluster.wait_converged(&ids, index).await;

    let follower = cluster.others(leader)[0];
    let follower_last = cluster.metrics(follower).last_log_index.unwrap_or(0);
    cluster.crash(follower).await;
    let alive = cluster.others(follower);
    let index = cluster.write_many(&alive, "while-down-", 60).await;
    // The leader's log no longer holds what the follower needs next.
    let purged = inprocess::wait_until("the leader purges past the follower's log", || {
        let purged = cluster.metrics(leader).purged?.index;
        (purged > follower_last).then_some(purged)
    })
    .await;
    assert_eq!(cluster.snapshot_rpcs(follower), 0);

    cluster.restart(follower).await;
    let (applied, digest) = cluster.wait_converged(&ids, index).await;
    assert_eq!(cluster.applied(follower), (applied, digest));
    assert!(cluster.value(follower, "while-down-59").is_some());
    assert!(
        cluster.snapshot_rpcs(follower) > 0,
        "caught up without install_snapshot"
    );
    let snapshot = cluster.metrics(follower).snapshot.map(|l| l.index);
    assert!(
        snapshot >= Some(purged),
        "follower snapshot {snapshot:?}, leader purged to {purged}"
    );
    cluster.shutdown().await;
}
