//! The sled store (`LogStore` + `StateMachine` over a `DataDir`) checked three ways:
//! openraft's own storage conformance suite, durability across a reopen of the same
//! directory, and refusal of directories that are not ours or do not decode.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use failoverd::raft::data_dir::DataDir;
use failoverd::raft::data_dir::StoreError;
use failoverd::raft::log_store::LogStore;
use failoverd::raft::state_machine::StateMachine;
use failoverd::raft::Command;
use failoverd::raft::Member;
use failoverd::raft::NodeId;
use failoverd::raft::Raft;
use failoverd::raft::StorageError;
use failoverd::raft::TypeConfig;
use openraft::error::InstallSnapshotError;
use openraft::error::RPCError;
use openraft::error::RaftError;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::network::RaftNetwork;
use openraft::network::RaftNetworkFactory;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::InstallSnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::storage::RaftLogStorage;
use openraft::testing::StoreBuilder;
use openraft::testing::Suite;
use openraft::AnyError;
use openraft::StorageIOError;
use openraft::Vote;
use tempfile::TempDir;

/// Upper bound for anything asynchronous to happen on a loaded CI box.
const PATIENCE: Duration = Duration::from_secs(30);

/// Builds a fresh store in its own temp dir for each case of openraft's suite.
struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let tmp = tempfile::tempdir().map_err(|e| setup_failed(&e))?;
        // The suite writes everything as node 0.
        let dir = DataDir::open(tmp.path(), 0, None).map_err(|e| setup_failed(&e))?;
        let sm = StateMachine::open(dir.clone()).map_err(|e| setup_failed(&e))?;
        Ok((tmp, LogStore::new(dir), sm))
    }
}

fn setup_failed<E: std::error::Error + 'static>(e: &E) -> StorageError {
    StorageIOError::write(AnyError::new(e)).into()
}

/// The sled log store and state machine pass openraft's storage conformance suite.
#[test]
fn passes_openraft_storage_suite() {
    Suite::test_all(SledBuilder).expect("openraft storage suite");
}

/// A transport for a single-node cluster: there is nobody to call.
struct NoPeers;

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeers;

    async fn new_client(&mut self, _target: NodeId, _node: &Member) -> NoPeers {
        NoPeers
    }
}

fn unreachable<E: std::error::Error>() -> RPCError<NodeId, Member, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
        "single-node test has no peers",
    )))
}

impl RaftNetwork<TypeConfig> for NoPeers {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        Err(unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>>
    {
        Err(unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        Err(unreachable())
    }
}

/// Opens `path` as `node_id`, retrying while sled's file lock from a dropped
/// handle is still being released by its background threads.
async fn reopen(path: &Path, node_id: NodeId) -> DataDir {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match DataDir::open(path, node_id, None) {
            Ok(dir) => return dir,
            Err(StoreError::Open { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("reopening {}: {e}", path.display()),
        }
    }
}

fn raft_config() -> Arc<openraft::Config> {
    let config = openraft::Config {
        heartbeat_interval: 50,
        election_timeout_min: 300,
        election_timeout_max: 600,
        ..Default::default()
    };
    Arc::new(config.validate().expect("valid raft config"))
}

/// Starts a single-node Raft on `dir`.
async fn start(dir: DataDir) -> (Raft, failoverd::raft::state_machine::SharedState) {
    let sm = StateMachine::open(dir.clone()).expect("state machine opens");
    let shared = sm.shared();
    let raft = Raft::new(1, raft_config(), NoPeers, LogStore::new(dir), sm)
        .await
        .expect("raft starts");
    (raft, shared)
}

/// Waits until the single node has elected itself.
async fn wait_leader(raft: &Raft) {
    raft.wait(Some(PATIENCE))
        .current_leader(1, "node 1 leads")
        .await
        .expect("node 1 leads within patience");
}

fn put(key: &str, value: &str) -> Command {
    Command::Lock(failoverd::lock::state::LockCommand::KvSet {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        flags: 0,
        cas: None,
    })
}

/// Committed entries, the vote and the applied state all come back after a clean
/// shutdown and reopen of the same data dir, with the state re-applied from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_vote_and_state_survive_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let (raft, shared) = start(DataDir::open(tmp.path(), 1, None).unwrap()).await;
    let members = BTreeMap::from([(1, Member { addr: "n1".into() })]);
    raft.initialize(members).await.expect("initialize");
    wait_leader(&raft).await;
    let mut last_index = 0;
    for i in 0..5 {
        let cmd = put(&format!("k{i}"), &format!("v{i}"));
        let resp = tokio::time::timeout(PATIENCE, raft.client_write(cmd))
            .await
            .expect("write within patience")
            .expect("write commits");
        last_index = resp.log_id.index;
    }
    // Metrics are published after the fact; wait until they show the last write.
    let before = raft
        .wait(Some(PATIENCE))
        .applied_index(Some(last_index), "last write in metrics")
        .await
        .expect("metrics catch up");
    assert_eq!(before.last_log_index, Some(last_index));
    let state_before = shared.read().state.clone();
    raft.shutdown().await.expect("clean shutdown");
    drop(raft);
    drop(shared);

    let dir = reopen(tmp.path(), 1).await;
    let mut log = LogStore::new(dir.clone());
    assert_eq!(log.read_vote().await.unwrap(), Some(before.vote), "vote survives");
    let log_state = log.get_log_state().await.unwrap();
    assert_eq!(
        log_state.last_log_id.map(|id| id.index),
        Some(last_index),
        "log survives"
    );
    assert_eq!(log.read_committed().await.unwrap().map(|id| id.index), Some(last_index));
    drop(log);

    // No snapshot was taken, so whatever state exists once `Raft::new` returns
    // was re-applied from the committed log during start-up.
    let (raft, shared) = start(dir).await;
    {
        let applied = shared.read();
        assert_eq!(
            applied.last_applied.map(|id| id.index),
            Some(last_index),
            "re-applied on start"
        );
        assert_eq!(applied.state, state_before);
        assert_eq!(applied.state.lock.kv["k3"].value, b"v3");
    }
    // And the node carries on: it leads again (openraft restores a sole voter's
    // leadership in the same term) and accepts writes.
    wait_leader(&raft).await;
    tokio::time::timeout(PATIENCE, raft.client_write(put("after", "restart")))
        .await
        .expect("write within patience")
        .expect("write after reopen commits");
    assert_eq!(shared.read().state.lock.kv["after"].value, b"restart");
    raft.shutdown().await.expect("clean shutdown");
}

/// A vote saved through `RaftLogStorage` reads back, after the directory is closed and reopened.
#[tokio::test]
async fn saved_vote_survives_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let vote = Vote::new_committed(7, 3);
    {
        let mut log = LogStore::new(DataDir::open(tmp.path(), 3, None).unwrap());
        assert_eq!(log.read_vote().await.unwrap(), None);
        log.save_vote(&vote).await.unwrap();
    }
    let mut log = LogStore::new(reopen(tmp.path(), 3).await);
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
}

/// A data dir written by node 1 is refused when opened as node 2.
#[tokio::test]
async fn refuses_another_nodes_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    drop(DataDir::open(tmp.path(), 1, None).unwrap());
    let deadline = Instant::now() + PATIENCE;
    let err = loop {
        match DataDir::open(tmp.path(), 2, None) {
            Err(StoreError::Open { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => break e,
            Ok(_) => panic!("node 2 opened node 1's data dir"),
        }
    };
    match err {
        StoreError::WrongNode { found, expected, .. } => assert_eq!((found, expected), (1, 2)),
        other => panic!("expected WrongNode, got {other}"),
    }
    // The rightful owner still opens it.
    drop(reopen(tmp.path(), 1).await);
}

/// A log record that does not decode is refused at open, naming the record.
#[tokio::test]
async fn refuses_corrupt_log_record() {
    let tmp = tempfile::tempdir().unwrap();
    drop(DataDir::open(tmp.path(), 1, None).unwrap());
    let good = openraft::testing::blank_ent::<TypeConfig>(1, 1, 1);
    let deadline = Instant::now() + PATIENCE;
    loop {
        match sled::open(tmp.path().join("raft")) {
            Ok(db) => {
                let logs = db.open_tree("logs").unwrap();
                logs.insert(1u64.to_be_bytes(), serde_json::to_vec(&good).unwrap())
                    .unwrap();
                logs.insert(2u64.to_be_bytes(), &b"\x00not json"[..]).unwrap();
                db.flush().unwrap();
                break;
            }
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("raw sled open: {e}"),
        }
    }
    let deadline = Instant::now() + PATIENCE;
    let err = loop {
        match DataDir::open(tmp.path(), 1, None) {
            Err(StoreError::Open { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => break e,
            Ok(_) => panic!("a corrupt log opened"),
        }
    };
    match &err {
        StoreError::Corrupt { what, .. } => assert_eq!(what, "logs/2"),
        other => panic!("expected Corrupt, got {other}"),
    }
    assert!(err.to_string().contains("logs/2"), "message names the record: {err}");
}
