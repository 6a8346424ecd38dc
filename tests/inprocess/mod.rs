//! `TestCluster`: N openraft voters in one process, each on the real sled
//! `LogStore` + `StateMachine` in its own data dir, wired by an in-memory
//! `Router` instead of gRPC.
//!
//! ```text
//!  node 1 ── Link(1→2) ──► Router ── is 1→2 cut? ──no──► node 2's Raft::append_entries / vote / install_snapshot
//!                                  └─────────yes──► RPCError::Unreachable
//! ```
//!
//! Faults are cuts between node pairs (`isolate`, `partition`, `heal`) and
//! whole-node stops that keep the data dir (`crash`, `restart`). Every wait is
//! bounded by `PATIENCE` and panics with what it was waiting for.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::time::Duration;

use failoverd::raft::data_dir::DataDir;
use failoverd::raft::data_dir::StoreError;
use failoverd::raft::log_store::LogStore;
use failoverd::raft::state_machine::SharedState;
use failoverd::raft::state_machine::StateMachine;
use failoverd::raft::Command;
use failoverd::raft::Member;
use failoverd::raft::Metrics;
use failoverd::raft::NodeId;
use failoverd::raft::Raft;
use failoverd::raft::TypeConfig;
use openraft::error::ClientWriteError;
use openraft::error::InstallSnapshotError;
use openraft::error::RPCError;
use openraft::error::RaftError;
use openraft::error::RemoteError;
use openraft::error::Timeout;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::network::RPCTypes;
use openraft::network::RaftNetwork;
use openraft::network::RaftNetworkFactory;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::ClientWriteResponse;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::InstallSnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::ServerState;
use tempfile::TempDir;
use tokio::time::Instant;

/// Upper bound for anything cluster-wide to happen on a loaded CI box.
pub const PATIENCE: Duration = Duration::from_secs(30);
/// Pause between polls of a bounded wait.
const POLL: Duration = Duration::from_millis(20);

/// openraft's config as `node.rs` builds it, with test-speed timings.
pub fn fast_config() -> openraft::Config {
    openraft::Config {
        cluster_name: "failoverd-test".to_string(),
        heartbeat_interval: 50,
        election_timeout_min: 300,
        election_timeout_max: 600,
        install_snapshot_timeout: 10_000,
        snapshot_max_chunk_size: 1024 * 1024,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
        max_in_snapshot_log_to_keep: 100,
        purge_batch_size: 256,
        ..Default::default()
    }
}

/// Prints openraft's tracing when `RUST_LOG` is set; idempotent.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

type RpcResult<T, E = openraft::error::Infallible> = Result<T, RPCError<NodeId, Member, RaftError<NodeId, E>>>;

/// Who is reachable: running nodes and the directed links that are cut.
#[derive(Default)]
struct Links {
    nodes: BTreeMap<NodeId, Raft>,
    cut: BTreeSet<(NodeId, NodeId)>,
    /// install_snapshot RPCs delivered, by target.
    snapshot_rpcs: BTreeMap<NodeId, u64>,
}

/// The in-memory transport: delivers an RPC by calling the target's `Raft` directly.
#[derive(Clone, Default)]
pub struct Router {
    links: Arc<Mutex<Links>>,
}

impl Router {
    fn links(&self) -> MutexGuard<'_, Links> {
        self.links.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The target's handle if `from → to` is up and `to` is running.
    fn route(&self, from: NodeId, to: NodeId) -> Option<Raft> {
        let links = self.links();
        if links.cut.contains(&(from, to)) {
            return None;
        }
        links.nodes.get(&to).cloned()
    }

    /// Whether a reply from `to` can still reach `from`.
    fn reply_path_up(&self, from: NodeId, to: NodeId) -> bool {
        let links = self.links();
        !links.cut.contains(&(to, from)) && links.nodes.contains_key(&to)
    }

    /// Delivers one RPC. A reply is lost too if the link was cut (or the
    /// target stopped) while the call was in flight.
    async fn deliver<Resp, E, Fut>(
        &self,
        (from, to): (NodeId, NodeId),
        action: RPCTypes,
        option: &RPCOption,
        call: impl FnOnce(Raft) -> Fut,
    ) -> RpcResult<Resp, E>
    where
        E: std::error::Error,
        Fut: Future<Output = Result<Resp, RaftError<NodeId, E>>>,
    {
        let down = || {
            RPCError::Unreachable(Unreachable::new(&std::io::Error::other(format!(
                "link {from}->{to} is down"
            ))))
        };
        let raft = self.route(from, to).ok_or_else(down)?;
        let timeout = option.hard_ttl();
        let reply = tokio::time::timeout(timeout, call(raft)).await.map_err(|_| {
            RPCError::Timeout(Timeout {
                action,
                id: from,
                target: to,
                timeout,
            })
        })?;
        if !self.reply_path_up(from, to) {
            return Err(down());
        }
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(to, e)))
    }
}

/// One node's view of the router: creates its outgoing links.
pub struct NodeNetwork {
    from: NodeId,
    router: Router,
}

impl RaftNetworkFactory<TypeConfig> for NodeNetwork {
    type Network = Link;

    async fn new_client(&mut self, target: NodeId, _node: &Member) -> Link {
        Link {
            from: self.from,
            to: target,
            router: self.router.clone(),
        }
    }
}

/// The directed link `from → to`.
pub struct Link {
    from: NodeId,
    to: NodeId,
    router: Router,
}

impl RaftNetwork<TypeConfig> for Link {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.router
            .deliver(
                (self.from, self.to),
                RPCTypes::AppendEntries,
                &option,
                |raft| async move { raft.append_entries(rpc).await },
            )
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let (router, to) = (self.router.clone(), self.to);
        self.router
            .deliver(
                (self.from, self.to),
                RPCTypes::InstallSnapshot,
                &option,
                |raft| async move {
                    *router.links().snapshot_rpcs.entry(to).or_default() += 1;
                    raft.install_snapshot(rpc).await
                },
            )
            .await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        self.router
            .deliver((self.from, self.to), RPCTypes::Vote, &option, |raft| async move {
                raft.vote(rpc).await
            })
            .await
    }
}

/// A running node: the Raft handle and a read handle on its state machine.
struct Running {
    raft: Raft,
    state: SharedState,
}

/// N voters in one process. Node ids are 1..=N.
pub struct TestCluster {
    router: Router,
    config: Arc<openraft::Config>,
    data_dirs: BTreeMap<NodeId, PathBuf>,
    running: BTreeMap<NodeId, Running>,
    root: TempDir,
}

impl TestCluster {
    /// Starts `n` nodes with `fast_config` and initialises them as one cluster.
    pub async fn new(n: u64) -> Self {
        Self::with_config(n, fast_config()).await
    }

    /// Starts `n` nodes with `config` and initialises them as one cluster.
    pub async fn with_config(n: u64, config: openraft::Config) -> Self {
        init_tracing();
        let config = Arc::new(config.validate().expect("valid raft config"));
        let root = tempfile::tempdir().expect("temp dir");
        let mut cluster = TestCluster {
            router: Router::default(),
            config,
            data_dirs: BTreeMap::new(),
            running: BTreeMap::new(),
            root,
        };
        for id in 1..=n {
            let dir = cluster.root.path().join(format!("node-{id}"));
            cluster.data_dirs.insert(id, dir);
            cluster.start(id).await;
        }
        let members: BTreeMap<NodeId, Member> = (1..=n)
            .map(|id| {
                let addr = format!("node-{id}");
                (id, Member { addr })
            })
            .collect();
        cluster
            .raft(1)
            .initialize(members)
            .await
            .expect("initialize the cluster");
        cluster
    }

    /// Every node id, running or not.
    pub fn ids(&self) -> Vec<NodeId> {
        self.data_dirs.keys().copied().collect()
    }

    /// Every node id except `id`.
    pub fn others(&self, id: NodeId) -> Vec<NodeId> {
        self.ids().into_iter().filter(|&other| other != id).collect()
    }

    async fn start(&mut self, id: NodeId) {
        let dir = open_retrying(&self.data_dirs[&id], id).await;
        let machine = StateMachine::open(dir.clone()).expect("state machine opens");
        let state = machine.shared();
        let network = NodeNetwork {
            from: id,
            router: self.router.clone(),
        };
        let raft = Raft::new(id, self.config.clone(), network, LogStore::new(dir), machine)
            .await
            .unwrap_or_else(|e| panic!("node {id} starts: {e}"));
        self.router.links().nodes.insert(id, raft.clone());
        self.running.insert(id, Running { raft, state });
    }

    /// Node `id`'s Raft handle. Panics if it is crashed.
    pub fn raft(&self, id: NodeId) -> Raft {
        self.node(id).raft.clone()
    }

    /// Node `id`'s applied state. Panics if it is crashed.
    pub fn state(&self, id: NodeId) -> SharedState {
        self.node(id).state.clone()
    }

    /// Node `id`'s latest metrics. Panics if it is crashed.
    pub fn metrics(&self, id: NodeId) -> Metrics {
        self.node(id).raft.metrics().borrow().clone()
    }

    fn node(&self, id: NodeId) -> &Running {
        self.running
            .get(&id)
            .unwrap_or_else(|| panic!("node {id} is not running"))
    }

    /// Node `id`'s last applied index and state digest.
    pub fn applied(&self, id: NodeId) -> (u64, u64) {
        let state = self.node(id).state.read();
        (state.last_applied.map_or(0, |l| l.index), state.state.digest())
    }

    /// The value of `key` in node `id`'s applied state.
    pub fn value(&self, id: NodeId, key: &str) -> Option<Vec<u8>> {
        self.node(id)
            .state
            .read()
            .state
            .lock
            .kv
            .get(key)
            .map(|e| e.value.clone())
    }

    /// How many install_snapshot RPCs have been delivered to `id`.
    pub fn snapshot_rpcs(&self, id: NodeId) -> u64 {
        self.router.links().snapshot_rpcs.get(&id).copied().unwrap_or(0)
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&self, id: NodeId) {
        self.partition(&[id], &self.others(id));
    }

    /// Cuts every link between a node of `a` and a node of `b`, both ways.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        let mut links = self.router.links();
        for &x in a {
            for &y in b {
                links.cut.insert((x, y));
                links.cut.insert((y, x));
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.router.links().cut.clear();
    }

    /// Stops node `id` as a crash would look to its peers (unreachable from
    /// now on), shuts its Raft down and drops its stores; the data dir stays.
    pub async fn crash(&mut self, id: NodeId) {
        self.router.links().nodes.remove(&id);
        let node = self
            .running
            .remove(&id)
            .unwrap_or_else(|| panic!("node {id} is not running"));
        node.raft
            .shutdown()
            .await
            .unwrap_or_else(|e| panic!("node {id} shuts down: {e}"));
    }

    /// Starts node `id` again on its data dir.
    pub async fn restart(&mut self, id: NodeId) {
        assert!(!self.running.contains_key(&id), "node {id} is already running");
        self.start(id).await;
    }

    /// The leader every running node agrees on, if there is one now.
    pub fn leader(&self) -> Option<NodeId> {
        self.agreed_leader(&self.running.keys().copied().collect::<Vec<_>>())
    }

    /// The leader all of `among` name in the same term, if it is one of them and says it leads.
    fn agreed_leader(&self, among: &[NodeId]) -> Option<NodeId> {
        let metrics: Vec<Metrics> = among.iter().map(|&id| self.metrics(id)).collect();
        let first = metrics.first()?;
        let leader = first.current_leader?;
        let term = first.current_term;
        let agreed = metrics
            .iter()
            .all(|m| m.current_leader == Some(leader) && m.current_term == term);
        let leads = metrics.iter().any(|m| m.id == leader && m.state == ServerState::Leader);
        (agreed && leads).then_some(leader)
    }

    /// Waits until all of `among` agree on a leader among them; returns it.
    pub async fn wait_for_leader(&self, among: &[NodeId]) -> NodeId {
        wait_until(&format!("nodes {among:?} agree on a leader"), || {
            self.agreed_leader(among)
        })
        .await
    }

    /// Submits `cmd` to node `id` only (no forwarding, no retry, no timeout).
    pub fn write(
        &self,
        id: NodeId,
        cmd: Command,
    ) -> impl Future<Output = Result<ClientWriteResponse<TypeConfig>, RaftError<NodeId, ClientWriteError<NodeId, Member>>>>
    {
        let raft = self.raft(id);
        async move { raft.client_write(cmd).await }
    }

    /// Commits `cmd` through whichever of `among` leads, retrying across
    /// elections; panics if it has not committed within `PATIENCE`.
    pub async fn write_committed(&self, among: &[NodeId], cmd: Command) -> ClientWriteResponse<TypeConfig> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let last_error = match self.agreed_leader(among) {
                None => "no agreed leader".to_string(),
                Some(leader) => match tokio::time::timeout_at(deadline, self.write(leader, cmd.clone())).await {
                    Ok(Ok(resp)) => return resp,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("node {leader} did not commit"),
                },
            };
            if Instant::now() >= deadline {
                panic!("{cmd:?} not committed by {among:?} within {PATIENCE:?}: {last_error}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Writes `count` puts `{prefix}{i}` through the leader among `among`; returns the last log index.
    pub async fn write_many(&self, among: &[NodeId], prefix: &str, count: usize) -> u64 {
        let mut last = 0;
        for i in 0..count {
            last = self
                .write_committed(among, put(&format!("{prefix}{i}"), "v"))
                .await
                .log_id
                .index;
        }
        last
    }

    /// Waits until every node of `ids` has applied at least `index` and all are
    /// at the same applied index with the same state digest; returns both.
    pub async fn wait_converged(&self, ids: &[NodeId], index: u64) -> (u64, u64) {
        wait_until(&format!("nodes {ids:?} converge at or past index {index}"), || {
            let applied: Vec<(u64, u64)> = ids.iter().map(|&id| self.applied(id)).collect();
            let first = applied[0];
            (first.0 >= index && applied.iter().all(|&a| a == first)).then_some(first)
        })
        .await
    }

    /// Shuts every running node down.
    pub async fn shutdown(mut self) {
        for id in self.running.keys().copied().collect::<Vec<_>>() {
            self.crash(id).await;
        }
    }
}

/// A put of `value` under `key`.
pub fn put(key: &str, value: &str) -> Command {
    Command::Lock(failoverd::lock::state::LockCommand::KvSet {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        flags: 0,
        cas: None,
    })
}

/// Polls `check` until it yields a value; panics naming `what` after `PATIENCE`.
pub async fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {PATIENCE:?} waiting until {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Opens `path` as `id`, retrying while a previous instance's sled handle is
/// still releasing its file lock.
async fn open_retrying(path: &Path, id: NodeId) -> DataDir {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match DataDir::open(path, id, None) {
            Ok(dir) => return dir,
            Err(StoreError::Open { .. }) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
            Err(e) => panic!("node {id}: opening {}: {e}", path.display()),
        }
    }
}
