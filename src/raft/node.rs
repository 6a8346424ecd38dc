//! A running Raft voter: openraft plus the cluster behaviour failoverd adds.
//!
//! ```text
//!            write / add / remove                      ┌─────────────┐
//!  api ────► RaftNode ── leader? ──yes──► openraft ───►│ log + state │
//!                 │                                    └─────────────┘
//!                 └──── no ──► Cluster gRPC ──► leader's RaftNode (*_local)
//!
//!  housekeeping task: bootstrap on first start, set the cluster id once as
//!  the first leader, register this node's name and role.
//! ```

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::ClientWriteError;
use openraft::error::InitializeError;
use openraft::error::RaftError;
use openraft::ChangeMembers;
use openraft::ServerState;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use super::command::NodeMeta;
use super::data_dir::DataDir;
use super::log_store::LogStore;
use super::network::Network;
use super::pb;
use super::peers::Peers;
use super::state_machine::SharedState;
use super::state_machine::StateMachine;
use super::Command;
use super::CommandResult;
use super::Member;
use super::NodeId;
use super::Raft;
use super::Role;
use crate::config::Config;

/// How long a write or membership call waits for a leader before giving up.
const CLUSTER_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new member may take to catch up before it is made a voter.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause between attempts while no leader is known.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Who this node is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    /// Node id.
    pub node_id: NodeId,
    /// Human name.
    pub name: String,
    /// Validator or arbiter.
    pub role: Role,
    /// Address peers dial.
    pub advertise: String,
}

/// Why a cluster operation failed, and whether trying again may help.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No leader is known (election in progress, or no quorum).
    #[error("no cluster leader")]
    NoLeader,
    /// A peer could not be reached.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The leader did not answer in time.
    #[error("timed out after {0:?} waiting for the cluster")]
    Timeout(Duration),
    /// The request cannot succeed as asked.
    #[error("{0}")]
    Rejected(String),
    /// Raft has stopped on this node.
    #[error("raft stopped: {0}")]
    Fatal(String),
}

impl ClusterError {
    /// True if the same request may succeed later.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ClusterError::NoLeader | ClusterError::Unreachable(_) | ClusterError::Timeout(_)
        )
    }
}

/// One member as shown by `status` and `members`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Node id.
    pub id: NodeId,
    /// Name as the node registered it ("" until it has).
    pub name: String,
    /// Address peers dial.
    pub addr: String,
    /// Role as the node registered it.
    pub role: Option<Role>,
    /// Voter (true) or learner.
    pub voter: bool,
    /// Whether it is the current leader.
    pub leader: bool,
    /// Milliseconds since this node last heard from it; 0 for itself.
    pub last_contact_ms: Option<u64>,
}

/// A node's view of itself and the cluster, served as `/v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node id.
    pub node_id: NodeId,
    /// Human name.
    pub name: String,
    /// Validator or arbiter.
    pub role: Role,
    /// Leader, Follower, Candidate, Learner or Shutdown.
    pub raft_state: String,
    /// Current term.
    pub term: u64,
    /// Current leader, if known.
    pub leader_id: Option<NodeId>,
    /// Last log index.
    pub last_log_index: Option<u64>,
    /// Last applied index.
    pub applied_index: Option<u64>,
    /// Index of the last snapshot.
    pub snapshot_index: Option<u64>,
    /// The cluster id, once formed.
    pub cluster_id: Option<String>,
    /// Digest of the applied state (hex).
    pub state_digest: String,
    /// All members, voters and learners.
    pub members: Vec<MemberStatus>,
}

/// A Raft voter with failoverd's cluster behaviour.
pub struct RaftNode {
    raft: Raft,
    peers: Peers,
    state: SharedState,
    me: Identity,
    /// Started fresh with no `initial_members`: answers Raft traffic only once
    /// a leader has claimed it. A node whose data dir was wiped while it was a
    /// member cannot sneak back in (and confuse the leader) that way.
    unclaimed: std::sync::atomic::AtomicBool,
}

impl RaftNode {
    /// Starts openraft on an opened data directory. Ports are bound elsewhere.
    pub async fn start(
        cfg: &Config,
        dir: DataDir,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Result<Arc<Self>, ClusterError> {
        let raft_config = openraft_config(cfg)?;
        let peers = Peers::new(cfg.node_id, dir.clone(), tls);
        let machine = StateMachine::open(dir.clone()).map_err(|e| ClusterError::Fatal(e.to_string()))?;
        let state = machine.shared();
        let raft = Raft::new(
            cfg.node_id,
            raft_config,
            Network::new(peers.clone()),
            LogStore::new(dir),
            machine,
        )
        .await
        .map_err(|e| ClusterError::Fatal(e.to_string()))?;
        let me = Identity {
            node_id: cfg.node_id,
            name: cfg.name.clone(),
            role: cfg.role,
            advertise: cfg.cluster.advertise.clone(),
        };
        let unclaimed = peers.cluster_id().is_none() && cfg.cluster.initial_members.is_empty();
        Ok(Arc::new(RaftNode {
            raft,
            peers,
            state,
            me,
            unclaimed: unclaimed.into(),
        }))
    }

    /// The openraft handle.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Peer connections.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// The applied state.
    pub fn state(&self) -> &SharedState {
        &self.state
    }

    /// This node's identity.
    pub fn identity(&self) -> &Identity {
        &self.me
    }

    /// Forms the cluster from `initial_members` on a node with no Raft state.
    /// Safe on every initial member: they all propose the same membership.
    /// A member that starts late, after the others formed the cluster, does
    /// not initialise (which would make it campaign and disturb the leader): it
    /// waits for the leader's replication instead.
    pub async fn bootstrap(&self, initial: &[crate::config::InitialMember]) -> Result<(), ClusterError> {
        if let Some((peer, cluster_id)) = self.formed_elsewhere(initial).await {
            tracing::info!(%peer, %cluster_id, "the cluster has already formed: waiting for the leader to replicate to us");
            return Ok(());
        }
        let members: BTreeMap<NodeId, Member> = initial
            .iter()
            .map(|m| (m.id, Member { addr: m.addr.clone() }))
            .collect();
        match self.raft.initialize(members).await {
            Ok(()) => {
                tracing::info!(members = initial.len(), "initialised the cluster from initial_members");
                Ok(())
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(ClusterError::Fatal(e.to_string())),
        }
    }

    /// Asks the other initial members, briefly, whether one of them already
    /// belongs to a cluster; returns that member's address and cluster id.
    async fn formed_elsewhere(&self, initial: &[crate::config::InitialMember]) -> Option<(String, String)> {
        let timeout = Duration::from_secs(1);
        for m in initial.iter().filter(|m| m.id != self.me.node_id) {
            let Ok(mut client) = self.peers.cluster_client(&m.addr) else {
                continue;
            };
            let req = self.peers.request(pb::NodeInfoRequest {}, timeout, None);
            if let Ok(info) = call(timeout, client.get_node_info(req)).await {
                if !info.cluster_id.is_empty() {
                    return Some((m.addr.clone(), info.cluster_id));
                }
            }
        }
        None
    }

    /// Commits `cmd`, forwarding it to the leader if needed. Retries while no
    /// leader is known, for up to ten seconds.
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, ClusterError> {
        let deadline = Instant::now() + CLUSTER_CALL_TIMEOUT;
        loop {
            let attempt = match self.raft.client_write(cmd.clone()).await {
                Ok(resp) => return Ok(resp.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(fwd))) => match fwd.leader_node {
                    Some(leader) => match fwd.leader_id {
                        Some(id) if id != self.me.node_id => self.forward_write(id, &leader, &cmd).await,
                        _ => Err(ClusterError::NoLeader),
                    },
                    _ => Err(ClusterError::NoLeader),
                },
                Err(e) => Err(write_error(e)),
            };
            match attempt {
                Err(e) if e.retryable() && Instant::now() + RETRY_PAUSE < deadline => {
                    tokio::time::sleep(RETRY_PAUSE).await
                }
                Err(e) if e.retryable() => return Err(ClusterError::Timeout(CLUSTER_CALL_TIMEOUT)),
                other => return other,
            }
        }
    }

    /// Commits `cmd` only if this node is the leader (a forwarded write).
    pub async fn write_local(&self, cmd: Command) -> Result<CommandResult, ClusterError> {
        self.raft
            .client_write(cmd)
            .await
            .map(|resp| resp.data)
            .map_err(write_error)
    }

    async fn forward_write(
        &self,
        leader_id: NodeId,
        leader: &Member,
        cmd: &Command,
    ) -> Result<CommandResult, ClusterError> {
        let json = serde_json::to_vec(cmd).map_err(|e| ClusterError::Rejected(e.to_string()))?;
        let mut client = self
            .peers
            .cluster_client(&leader.addr)
            .map_err(|e| ClusterError::Rejected(e.to_string()))?;
        let req = self
            .peers
            .request(pb::RaftPayload { json }, CLUSTER_CALL_TIMEOUT, Some(leader_id));
        let reply = call(CLUSTER_CALL_TIMEOUT, client.client_write(req)).await?;
        serde_json::from_slice(&reply.json).map_err(|e| ClusterError::Rejected(format!("bad reply from leader: {e}")))
    }

    /// Adds node `id` at `addr`: as a learner, then, once caught up, a voter.
    pub async fn add_member(&self, id: NodeId, addr: String) -> Result<Vec<MemberStatus>, ClusterError> {
        self.change_members(MembershipOp::Add { id, addr }).await
    }

    /// Removes node `id` from the cluster, whether alive or not.
    pub async fn remove_member(&self, id: NodeId) -> Result<Vec<MemberStatus>, ClusterError> {
        self.change_members(MembershipOp::Remove { id }).await
    }

    /// Runs `op` here if this node leads, otherwise on the leader.
    async fn change_members(&self, op: MembershipOp) -> Result<Vec<MemberStatus>, ClusterError> {
        let deadline = Instant::now() + CLUSTER_CALL_TIMEOUT;
        loop {
            let metrics = self.raft.metrics().borrow().clone();
            let leader = metrics.current_leader;
            let leader_addr = leader.and_then(|l| metrics.membership_config.membership().get_node(&l).cloned());
            let attempt = match (leader, leader_addr) {
                (Some(leader), _) if leader == self.me.node_id => {
                    return match &op {
                        MembershipOp::Add { id, addr } => self.add_member_local(*id, addr.clone()).await,
                        MembershipOp::Remove { id } => self.remove_member_local(*id).await,
                    }
                }
                (Some(id), Some(leader)) => self.forward_membership(id, &leader, &op).await,
                _ => Err(ClusterError::NoLeader),
            };
            match attempt {
                Err(e) if e.retryable() && Instant::now() < deadline => tokio::time::sleep(RETRY_PAUSE).await,
                other => return other,
            }
        }
    }

    async fn forward_membership(
        &self,
        leader_id: NodeId,
        leader: &Member,
        op: &MembershipOp,
    ) -> Result<Vec<MemberStatus>, ClusterError> {
        let mut client = self
            .peers
            .cluster_client(&leader.addr)
            .map_err(|e| ClusterError::Rejected(e.to_string()))?;
        let reply = match op {
            MembershipOp::Add { id, addr } => {
                let req = pb::AddMemberRequest {
                    node_id: *id,
                    addr: addr.clone(),
                };
                call(
                    CATCH_UP_TIMEOUT,
                    client.add_member(self.peers.request(req, CATCH_UP_TIMEOUT, Some(leader_id))),
                )
                .await?
            }
            MembershipOp::Remove { id } => {
                let req = pb::RemoveMemberRequest { node_id: *id };
                call(
                    CLUSTER_CALL_TIMEOUT,
                    client.remove_member(self.peers.request(req, CLUSTER_CALL_TIMEOUT, Some(leader_id))),
                )
                .await?
            }
        };
        serde_json::from_slice(&reply.json).map_err(|e| ClusterError::Rejected(format!("bad reply from leader: {e}")))
    }

    /// `add_member` on the leader.
    pub async fn add_member_local(&self, id: NodeId, addr: String) -> Result<Vec<MemberStatus>, ClusterError> {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        if membership.membership().voter_ids().any(|v| v == id) {
            return Err(ClusterError::Rejected(format!("node {id} is already a voter")));
        }
        // Ask the node who it is before trusting the operator's id.
        let mut client = self
            .peers
            .cluster_client(&addr)
            .map_err(|e| ClusterError::Rejected(e.to_string()))?;
        let req = self.peers.request(pb::NodeInfoRequest {}, Duration::from_secs(5), None);
        let info = call(Duration::from_secs(5), client.get_node_info(req))
            .await
            .map_err(|e| ClusterError::Rejected(format!("cannot reach node {id} at {addr}: {e}")))?;
        if info.node_id != id {
            return Err(ClusterError::Rejected(format!(
                "the node at {addr} is node {}, not {id}",
                info.node_id
            )));
        }
        let ours = self.peers.cluster_id().unwrap_or_default();
        if !info.cluster_id.is_empty() && info.cluster_id != ours {
            return Err(ClusterError::Rejected(format!(
                "node {id} at {addr} belongs to cluster {}; only a node with an empty data dir can join",
                info.cluster_id
            )));
        }
        let mut client = self
            .peers
            .cluster_client(&addr)
            .map_err(|e| ClusterError::Rejected(e.to_string()))?;
        let req = self
            .peers
            .request(pb::ClaimRequest { cluster_id: ours }, Duration::from_secs(5), Some(id));
        call(Duration::from_secs(5), client.claim(req))
            .await
            .map_err(|e| ClusterError::Rejected(format!("node {id} at {addr} did not accept this cluster: {e}")))?;
        tracing::info!(node = id, %addr, name = %info.name, "adding member: catching up as a learner");
        let learner = self.raft.add_learner(id, Member { addr }, true);
        tokio::time::timeout(CATCH_UP_TIMEOUT, learner)
            .await
            .map_err(|_| ClusterError::Timeout(CATCH_UP_TIMEOUT))?
            .map_err(write_error)?;
        tracing::info!(node = id, "adding member: promoting to voter");
        let change = self
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false);
        tokio::time::timeout(CLUSTER_CALL_TIMEOUT, change)
            .await
            .map_err(|_| ClusterError::Timeout(CLUSTER_CALL_TIMEOUT))?
            .map_err(write_error)?;
        Ok(self.status().members)
    }

    /// `remove_member` on the leader.
    pub async fn remove_member_local(&self, id: NodeId) -> Result<Vec<MemberStatus>, ClusterError> {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let membership = membership.membership();
        let change = if membership.voter_ids().any(|v| v == id) {
            if membership.voter_ids().count() == 1 {
                return Err(ClusterError::Rejected(format!("node {id} is the last voter")));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else if membership.get_node(&id).is_some() {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            return Err(ClusterError::Rejected(format!("node {id} is not a member")));
        };
        tracing::info!(node = id, "removing member");
        let change = self.raft.change_membership(change, false);
        tokio::time::timeout(CLUSTER_CALL_TIMEOUT, change)
            .await
            .map_err(|_| ClusterError::Timeout(CLUSTER_CALL_TIMEOUT))?
            .map_err(write_error)?;
        Ok(self.status().members)
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow().clone();
        let applied = self.state.read();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let meta: Option<&NodeMeta> = applied.state.nodes.get(id);
                let last_contact_ms = if *id == self.me.node_id {
                    Some(0)
                } else {
                    self.peers.since_contact(*id).map(|d| d.as_millis() as u64)
                };
                MemberStatus {
                    id: *id,
                    name: meta.map(|m| m.name.clone()).unwrap_or_default(),
                    addr: node.addr.clone(),
                    role: meta.map(|m| m.role),
                    voter: voters.contains(id),
                    leader: m.current_leader == Some(*id),
                    last_contact_ms,
                }
            })
            .collect();
        NodeStatus {
            node_id: self.me.node_id,
            name: self.me.name.clone(),
            role: self.me.role,
            raft_state: format!("{:?}", m.state),
            term: m.current_term,
            leader_id: m.current_leader,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|id| id.index),
            snapshot_index: m.snapshot.map(|id| id.index),
            cluster_id: applied.state.cluster_id.clone(),
            state_digest: format!("{:016x}", applied.state.digest()),
            members,
        }
    }

    /// Keeps the cluster described: the first leader sets the cluster id, and
    /// every node registers its own name and role. Ends on `shutdown`.
    pub async fn housekeeping(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut metrics = self.raft.metrics();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = metrics.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let (is_leader, has_leader) = {
                let m = metrics.borrow();
                (m.state == ServerState::Leader, m.current_leader.is_some())
            };
            let work = async {
                if is_leader && self.state.cluster_id().is_none() {
                    let cluster_id = uuid::Uuid::new_v4().to_string();
                    match self.write_local(Command::SetClusterId { cluster_id }).await {
                        Ok(CommandResult::ClusterId(id)) => tracing::info!(cluster_id = %id, "cluster formed"),
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "could not set the cluster id yet"),
                    }
                }
                let registered = self.state.read().state.nodes.get(&self.me.node_id).cloned();
                let wanted = NodeMeta {
                    name: self.me.name.clone(),
                    role: self.me.role,
                };
                if has_leader && registered.as_ref() != Some(&wanted) && self.is_member(self.me.node_id) {
                    let cmd = Command::RegisterNode {
                        node_id: self.me.node_id,
                        name: wanted.name,
                        role: wanted.role,
                    };
                    if let Err(e) = self.write(cmd).await {
                        tracing::debug!(error = %e, "could not register this node yet");
                    }
                }
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = work => {}
            }
        }
    }

    /// True while this node waits to be claimed by `members add`.
    pub fn unclaimed(&self) -> bool {
        self.unclaimed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Accepts a leader's claim: from now on this node belongs to `cluster_id`.
    pub async fn claim(&self, cluster_id: &str) -> Result<(), ClusterError> {
        match self.peers.cluster_id() {
            Some(ours) if ours != cluster_id => Err(ClusterError::Rejected(format!(
                "this node already belongs to cluster {ours}"
            ))),
            Some(_) => Ok(()),
            None if cluster_id.is_empty() => Err(ClusterError::Rejected("the claim names no cluster".into())),
            None => {
                self.peers
                    .set_cluster_id(cluster_id)
                    .await
                    .map_err(|e| ClusterError::Fatal(e.to_string()))?;
                self.unclaimed.store(false, std::sync::atomic::Ordering::SeqCst);
                tracing::info!(%cluster_id, "claimed by a cluster leader: joining");
                Ok(())
            }
        }
    }

    /// Whether `id` is in the membership (as voter or learner).
    pub fn is_member(&self, id: NodeId) -> bool {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .is_some()
    }
}

/// A membership change, run on the leader.
enum MembershipOp {
    Add { id: NodeId, addr: String },
    Remove { id: NodeId },
}

/// Awaits a gRPC call with a deadline, mapping failures to `ClusterError`.
async fn call<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(ClusterError::Timeout(timeout)),
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                Err(ClusterError::Unreachable(status.message().to_string()))
            }
            _ => Err(ClusterError::Rejected(status.message().to_string())),
        },
    }
}

fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> ClusterError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => ClusterError::NoLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => ClusterError::Rejected(e.to_string()),
        RaftError::Fatal(e) => ClusterError::Fatal(e.to_string()),
    }
}

/// openraft's config from ours. The leader lease is openraft's
/// `election_timeout_max`, twice the configured minimum.
fn openraft_config(cfg: &Config) -> Result<Arc<openraft::Config>, ClusterError> {
    let millis = |d: Duration| d.as_millis() as u64;
    let raft = openraft::Config {
        cluster_name: "failoverd".to_string(),
        heartbeat_interval: millis(cfg.cluster.heartbeat_interval),
        election_timeout_min: millis(cfg.cluster.election_timeout),
        election_timeout_max: millis(cfg.cluster.election_timeout) * 2,
        install_snapshot_timeout: 10_000,
        snapshot_max_chunk_size: 1024 * 1024,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
        max_in_snapshot_log_to_keep: 100,
        purge_batch_size: 256,
        ..Default::default()
    };
    raft.validate()
        .map(Arc::new)
        .map_err(|e| ClusterError::Fatal(format!("raft config: {e}")))
}
