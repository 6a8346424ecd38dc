//! The lock service on one node: routes requests to the Raft leader, runs the
//! leader's TTL timers and lock-delays, and answers reads in Consul's three
//! consistency modes, blocking when asked.
//!
//! ```text
//!  request ──► on the leader? ──yes──► on_leader: guard (renew/lock-delay) ──► Raft write or read
//!                  │ no
//!                  └──► Cluster.Lock gRPC ──► the leader's LockService::on_leader
//!  stale reads: answered from this node's applied state, no forwarding.
//! ```

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use openraft::ServerState;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use super::backend::Behavior;
use super::backend::LockError;
use super::leader::LeaderClock;
use super::state::KvEntry;
use super::state::LockCommand;
use super::state::LockResult;
use super::state::LockState;
use super::state::Session;
use crate::raft::node::ClusterError;
use crate::raft::node::RaftNode;
use crate::raft::pb;
use crate::raft::Command;
use crate::raft::CommandResult;

/// How long a forwarded request (other than a blocking read) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between attempts while no leader is known.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Which reads Consul clients may ask for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Served by the leader while its lease (a recent quorum contact) holds.
    #[default]
    Default,
    /// Served by the leader after a quorum confirms it still leads.
    Consistent,
    /// Served by any node from its applied state.
    Stale,
}

impl Consistency {
    /// Consul's `X-Consul-Effective-Consistency` value.
    pub fn header(self) -> &'static str {
        match self {
            Consistency::Default => "leader",
            Consistency::Consistent => "consistent",
            Consistency::Stale => "stale",
        }
    }
}

/// A read of the lock state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// One key.
    Kv {
        /// The key.
        key: String,
    },
    /// Every entry under a prefix.
    KvList {
        /// The prefix.
        prefix: String,
    },
    /// Keys under a prefix, folded at a separator.
    KvKeys {
        /// The prefix.
        prefix: String,
        /// The separator, if any.
        separator: Option<String>,
    },
    /// One session.
    Session {
        /// Its id.
        id: Uuid,
    },
    /// All sessions.
    Sessions,
    /// Sessions of one node.
    NodeSessions {
        /// The node name.
        node: String,
    },
}

/// What a read found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryData {
    /// KV entries (possibly none).
    Kv(Vec<KvEntry>),
    /// Keys.
    Keys(Vec<String>),
    /// Sessions (possibly none).
    Sessions(Vec<Session>),
}

impl Query {
    /// The index a blocking query on this read waits to see change.
    pub fn index(&self, state: &LockState) -> u64 {
        match self {
            Query::Kv { key } => state.key_index(key),
            Query::KvList { .. } | Query::KvKeys { .. } => state.prefix_index(),
            Query::Session { .. } | Query::Sessions | Query::NodeSessions { .. } => state.sessions_index.max(1),
        }
    }

    /// Runs the read on `state`.
    pub fn run(&self, state: &LockState) -> QueryData {
        match self {
            Query::Kv { key } => QueryData::Kv(state.kv.get(key).cloned().into_iter().collect()),
            Query::KvList { prefix } => QueryData::Kv(state.list(prefix).cloned().collect()),
            Query::KvKeys { prefix, separator } => QueryData::Keys(state.keys(prefix, separator.as_deref())),
            Query::Session { id } => QueryData::Sessions(state.sessions.get(id).cloned().into_iter().collect()),
            Query::Sessions => QueryData::Sessions(state.sessions.values().cloned().collect()),
            Query::NodeSessions { node } => QueryData::Sessions(state.sessions_on(node).cloned().collect()),
        }
    }
}

/// A read request: what, how consistent, and how long to block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Read {
    /// What to read.
    pub query: Query,
    /// How consistent.
    pub consistency: Consistency,
    /// Block until the query's index passes this (0: do not block).
    pub index: u64,
    /// The longest time to block.
    pub wait: Duration,
}

/// A read's answer with the metadata Consul puts in headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadResult {
    /// `X-Consul-Index`.
    pub index: u64,
    /// The data.
    pub data: QueryData,
    /// `X-Consul-KnownLeader`.
    pub known_leader: bool,
    /// `X-Consul-LastContact`, in ms (0 on the leader).
    pub last_contact_ms: u64,
    /// `X-Consul-Effective-Consistency`.
    pub consistency: Consistency,
}

/// A session to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewSession {
    /// Name.
    pub name: String,
    /// Node.
    pub node: String,
    /// TTL, if any (the caller has checked its bounds).
    pub ttl: Option<Duration>,
    /// Lock-delay.
    pub lock_delay: Duration,
    /// Behavior.
    pub behavior: Behavior,
}

/// A request that must be executed by the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaderRequest {
    /// Create a session (the leader generates its id).
    CreateSession(NewSession),
    /// Renew a session: acknowledged only once a quorum confirms the leader.
    Renew(Uuid),
    /// Any other state change (destroy, KV writes).
    Write(LockCommand),
    /// A `default` or `consistent` read.
    Read(Read),
}

/// The leader's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaderResponse {
    /// A session was created.
    Created(Uuid),
    /// A session was renewed; its current definition.
    Renewed(Session),
    /// A write was applied (or refused before proposing, with index 0).
    Written {
        /// Log index of the write (0 when refused before proposing).
        index: u64,
        /// Its result.
        result: LockResult,
    },
    /// A read.
    Read(ReadResult),
}

/// The lock service of one node.
pub struct LockService {
    node: Arc<RaftNode>,
    clock: Mutex<Option<LeaderClock>>,
    lease: Duration,
}

impl LockService {
    /// A service over `node`. `lease` bounds how stale a `default` read may be
    /// on the leader before it confirms its leadership with a quorum instead.
    pub fn new(node: Arc<RaftNode>, lease: Duration) -> Arc<Self> {
        Arc::new(LockService {
            node,
            clock: Mutex::new(None),
            lease,
        })
    }

    /// The node underneath.
    pub fn node(&self) -> &Arc<RaftNode> {
        &self.node
    }

    /// Executes `req` on the leader (here, or forwarded), retrying while no
    /// leader is known. Stale reads are answered locally.
    pub async fn request(&self, req: LeaderRequest) -> Result<LeaderResponse, LockError> {
        if let LeaderRequest::Read(read) = &req {
            if read.consistency == Consistency::Stale {
                return Ok(LeaderResponse::Read(self.read_local(read).await));
            }
        }
        let budget = match &req {
            LeaderRequest::Read(read) => read.wait + CALL_TIMEOUT,
            _ => CALL_TIMEOUT,
        };
        let deadline = Instant::now() + budget;
        loop {
            let attempt = if self.is_leader() {
                self.on_leader(req.clone()).await
            } else {
                self.forward(&req, deadline).await
            };
            match attempt {
                Err(e) if e.retryable() && Instant::now() + RETRY_PAUSE < deadline => {
                    tokio::time::sleep(RETRY_PAUSE).await
                }
                other => return other,
            }
        }
    }

    fn is_leader(&self) -> bool {
        self.node.raft().metrics().borrow().state == ServerState::Leader
    }

    fn term(&self) -> u64 {
        self.node.raft().metrics().borrow().current_term
    }

    async fn forward(&self, req: &LeaderRequest, deadline: Instant) -> Result<LeaderResponse, LockError> {
        let metrics = self.node.raft().metrics().borrow().clone();
        let Some(leader) = metrics.current_leader else {
            return Err(LockError::NoLeader);
        };
        let Some(member) = metrics.membership_config.membership().get_node(&leader).cloned() else {
            return Err(LockError::NoLeader);
        };
        let peers = self.node.peers();
        let mut client = peers
            .cluster_client(&member.addr)
            .map_err(|e| LockError::Unavailable(e.to_string()))?;
        let json = serde_json::to_vec(req).map_err(|e| LockError::Rejected(e.to_string()))?;
        // One attempt must not eat the whole budget: a leader that vanished
        // (its host cut off) would hold every request until the deadline,
        // while a new leader is elected within seconds.
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        let timeout = match req {
            LeaderRequest::Read(read) if read.index > 0 => remaining,
            _ => remaining.min((self.lease * 2).max(Duration::from_secs(2))),
        };
        let call = client.lock(peers.request(pb::RaftPayload { json }, timeout, Some(leader)));
        // A call (a blocking read above all) must not stay with a leader this
        // node has seen replaced: the old one may be cut off, and the call
        // would wait there until HTTP/2 keepalive gives up (~15 s) while the
        // new leader already has the answer. The caller retries it there.
        let mut metrics = self.node.raft().metrics();
        let replaced = async move {
            while metrics.changed().await.is_ok() {
                if metrics.borrow().current_leader != Some(leader) {
                    return;
                }
            }
            std::future::pending().await
        };
        let reply = tokio::select! {
            reply = tokio::time::timeout(timeout, call) => match reply {
                Err(_) => {
                    return Err(LockError::Unavailable(format!(
                        "leader {leader} did not answer in {timeout:?}"
                    )))
                }
                Ok(Err(status)) => {
                    return Err(LockError::Unavailable(format!("leader {leader}: {}", status.message())))
                }
                Ok(Ok(reply)) => reply.into_inner(),
            },
            () = replaced => {
                tracing::info!(leader, "leader replaced while it had a forwarded call: retrying with the new one");
                return Err(LockError::Unavailable(format!("leader {leader} was replaced")));
            }
        };
        serde_json::from_slice::<Result<LeaderResponse, LockError>>(&reply.json)
            .map_err(|e| LockError::Unavailable(format!("bad reply from leader {leader}: {e}")))?
    }

    /// Executes `req` if this node leads; `NoLeader` (retryable) if not.
    pub async fn on_leader(&self, req: LeaderRequest) -> Result<LeaderResponse, LockError> {
        match req {
            LeaderRequest::CreateSession(new) => {
                let id = Uuid::new_v4();
                let cmd = LockCommand::SessionCreate {
                    id,
                    name: new.name,
                    node: new.node,
                    ttl: new.ttl,
                    lock_delay: new.lock_delay,
                    behavior: new.behavior,
                };
                self.propose(cmd).await?;
                Ok(LeaderResponse::Created(id))
            }
            LeaderRequest::Renew(id) => self.renew(id).await.map(LeaderResponse::Renewed),
            LeaderRequest::Write(cmd) => {
                if let LockCommand::KvAcquire { key, .. } = &cmd {
                    if let Some(left) = self.lock_delay_left(key).await? {
                        tracing::info!(%key, ?left, "rejecting lock of key due to lock-delay");
                        return Ok(LeaderResponse::Written {
                            index: 0,
                            result: LockResult::Bool(false),
                        });
                    }
                }
                let (index, result) = self.propose(cmd).await?;
                Ok(LeaderResponse::Written { index, result })
            }
            LeaderRequest::Read(read) => self.read_on_leader(&read).await.map(LeaderResponse::Read),
        }
    }

    async fn propose(&self, cmd: LockCommand) -> Result<(u64, LockResult), LockError> {
        match self.node.write_local(Command::Lock(cmd)).await {
            Ok(CommandResult::Lock { index, result }) => Ok((index, result)),
            Ok(other) => Err(LockError::Rejected(format!("unexpected result {other:?}"))),
            Err(e) => Err(cluster_error(e)),
        }
    }

    /// Confirms with a quorum that this node still leads, and waits until it
    /// has applied everything committed before now.
    async fn confirm_leadership(&self) -> Result<(), LockError> {
        // A leader cut off from the majority never gets the confirmation;
        // give up after two lease periods rather than hang.
        match tokio::time::timeout(self.lease * 2, self.node.raft().ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(LockError::NoLeader),
        }
    }

    /// Renew: reset the timer, then get a quorum's confirmation that this
    /// node still leads, then check nothing expired the session meanwhile.
    async fn renew(&self, id: Uuid) -> Result<Session, LockError> {
        let term = self.term();
        let known = self.node.state().read().state.lock.sessions.contains_key(&id);
        if !known {
            // Maybe created but not applied here yet.
            self.confirm_leadership().await?;
        }
        let session = self.session(&id)?;
        if let Some(ttl) = session.ttl {
            let mut clock = self.clock.lock().unwrap_or_else(|p| p.into_inner());
            let clock = clock.as_mut().filter(|c| c.term == term).ok_or(LockError::NoLeader)?;
            if !clock.renew(id, ttl, Instant::now()) {
                return Err(LockError::SessionNotFound(id.to_string()));
            }
        }
        self.confirm_leadership().await?;
        {
            let clock = self.clock.lock().unwrap_or_else(|p| p.into_inner());
            let clock = clock.as_ref().filter(|c| c.term == term).ok_or(LockError::NoLeader)?;
            if !clock.is_live(&id) {
                return Err(LockError::SessionNotFound(id.to_string()));
            }
        }
        self.session(&id)
    }

    fn session(&self, id: &Uuid) -> Result<Session, LockError> {
        let applied = self.node.state().read();
        applied
            .state
            .lock
            .sessions
            .get(id)
            .cloned()
            .ok_or_else(|| LockError::SessionNotFound(id.to_string()))
    }

    /// The lock-delay left on `key`, after catching up with everything
    /// committed (so an invalidation just committed is not missed).
    async fn lock_delay_left(&self, key: &str) -> Result<Option<Duration>, LockError> {
        self.confirm_leadership().await?;
        let term = self.term();
        let now = Instant::now();
        let applied = self.node.state().read();
        let mut clock = self.clock.lock().unwrap_or_else(|p| p.into_inner());
        let clock = clock.as_mut().filter(|c| c.term == term).ok_or(LockError::NoLeader)?;
        clock.observe(&applied.state.lock, now);
        Ok(clock.lock_delay_left(key, now))
    }

    async fn read_on_leader(&self, read: &Read) -> Result<ReadResult, LockError> {
        self.block(read).await;
        let fresh = match read.consistency {
            Consistency::Default => {
                let since_ack = self.node.raft().metrics().borrow().millis_since_quorum_ack;
                since_ack.is_some_and(|ms| Duration::from_millis(ms) < self.lease)
            }
            _ => false,
        };
        if !fresh {
            self.confirm_leadership().await?;
        }
        let mut result = self.compute(read);
        result.last_contact_ms = 0;
        Ok(result)
    }

    /// A stale read: this node's applied state, after blocking if asked.
    async fn read_local(&self, read: &Read) -> ReadResult {
        self.block(read).await;
        self.compute(read)
    }

    /// Waits until the query's index passes `read.index`, or `read.wait`.
    async fn block(&self, read: &Read) {
        if read.index == 0 {
            return;
        }
        let mut applied: watch::Receiver<u64> = self.node.state().subscribe();
        let deadline = Instant::now() + read.wait;
        loop {
            if read.query.index(&self.node.state().read().state.lock) > read.index {
                return;
            }
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    fn compute(&self, read: &Read) -> ReadResult {
        let metrics = self.node.raft().metrics().borrow().clone();
        let last_contact_ms = match metrics.current_leader {
            Some(leader) if leader == metrics.id => 0,
            Some(leader) => self
                .node
                .peers()
                .since_contact(leader)
                .map_or(u64::MAX, |d| d.as_millis() as u64),
            None => u64::MAX,
        };
        let applied = self.node.state().read();
        let lock = &applied.state.lock;
        ReadResult {
            index: read.query.index(lock),
            data: read.query.run(lock),
            known_leader: metrics.current_leader.is_some(),
            last_contact_ms: last_contact_ms.min(i64::MAX as u64),
            consistency: read.consistency,
        }
    }

    /// Runs the leader's clock while this node leads: arms timers, proposes
    /// the invalidation of sessions whose TTL ran out. Ends on `shutdown`.
    pub async fn run_clock(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut metrics = self.node.raft().metrics();
        let mut applied = self.node.state().subscribe();
        loop {
            let next = self.tick();
            let sleep = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = metrics.changed() => {}
                _ = applied.changed() => {}
                _ = tokio::time::sleep_until(sleep) => {}
            }
            let (expired, ended) = {
                let mut clock = self.clock.lock().unwrap_or_else(|p| p.into_inner());
                match clock.as_mut() {
                    Some(c) => (c.take_expired(Instant::now()), c.take_ended_delays(Instant::now())),
                    None => Default::default(),
                }
            };
            for (key, index) in ended {
                let service = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = service.propose(LockCommand::LockDelayEnded { key, index }).await {
                        tracing::debug!(error = %e, "could not record the end of a lock-delay");
                    }
                });
            }
            for id in expired {
                tracing::info!(session = %id, "session TTL expired: invalidating");
                let service = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = service.propose(LockCommand::SessionExpire { id }).await {
                        tracing::warn!(session = %id, error = %e, "could not invalidate an expired session");
                    }
                });
            }
        }
    }

    /// Brings the clock in line with leadership and the applied state; returns
    /// the next timer.
    fn tick(&self) -> Option<Instant> {
        let (leading, term) = {
            let m = self.node.raft().metrics().borrow().clone();
            (m.state == ServerState::Leader, m.current_term)
        };
        let now = Instant::now();
        let applied = self.node.state().read();
        let mut clock = self.clock.lock().unwrap_or_else(|p| p.into_inner());
        match clock.as_mut() {
            _ if !leading => *clock = None,
            Some(c) if c.term == term => c.observe(&applied.state.lock, now),
            _ => {
                tracing::info!(
                    term,
                    sessions = applied.state.lock.sessions.len(),
                    "leader: arming session timers"
                );
                *clock = Some(LeaderClock::take_office(term, &applied.state.lock, now));
            }
        }
        clock.as_ref().and_then(LeaderClock::next_deadline)
    }
}

fn cluster_error(e: ClusterError) -> LockError {
    match e {
        ClusterError::NoLeader => LockError::NoLeader,
        ClusterError::Unreachable(m) => LockError::Unavailable(m),
        ClusterError::Timeout(d) => LockError::Unavailable(format!("timed out after {d:?}")),
        ClusterError::Rejected(m) | ClusterError::Fatal(m) => LockError::Rejected(m),
    }
}
