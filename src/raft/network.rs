//! The client half of the Raft transport: openraft's `RaftNetwork` over tonic.
//!
//! Each RPC is the JSON of openraft's request in a `RaftPayload`; the reply is
//! the JSON of `Result<Response, RaftError>`. Every call has a deadline (the
//! one openraft gives, or ours for snapshots). Failures map to openraft's error
//! kinds so it backs off from dead peers instead of spinning.

use std::time::Duration;

use openraft::error::InstallSnapshotError;
use openraft::error::NetworkError;
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
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::InstallSnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::pb::RaftPayload;
use super::peers::Peers;
use super::Member;
use super::NodeId;
use super::TypeConfig;

/// Creates one [`PeerClient`] per replication target.
#[derive(Clone)]
pub struct Network {
    peers: Peers,
}

impl Network {
    /// A network over the shared peer connections.
    pub fn new(peers: Peers) -> Self {
        Network { peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
            peers: self.peers.clone(),
            last_failure: None,
        }
    }
}

/// Raft RPCs to one peer.
pub struct PeerClient {
    target: NodeId,
    addr: String,
    peers: Peers,
    /// The last failure logged, so a down peer is reported once, not per retry.
    last_failure: Option<String>,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, Member, RaftError<NodeId, E>>>;

impl PeerClient {
    async fn call<Req, Resp, E>(&mut self, kind: RPCTypes, req: &Req, timeout: Duration) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result = self.exchange(kind, req, timeout).await;
        match &result {
            Ok(_) | Err(RPCError::RemoteError(_)) => {
                self.peers.note_contact(self.target);
                if self.last_failure.take().is_some() {
                    tracing::info!(peer = self.target, addr = %self.addr, "peer reachable again");
                }
            }
            Err(e) => {
                let message = e.to_string();
                if self.last_failure.as_deref() != Some(message.as_str()) {
                    tracing::warn!(peer = self.target, addr = %self.addr, rpc = ?kind, error = %message, "peer RPC failed");
                    self.last_failure = Some(message);
                }
            }
        }
        result
    }

    async fn exchange<Req, Resp, E>(&self, kind: RPCTypes, req: &Req, timeout: Duration) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut client = self
            .peers
            .raft_client(&self.addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let json = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let request = self.peers.request(RaftPayload { json }, timeout, Some(self.target));
        let call = async {
            match kind {
                RPCTypes::Vote => client.vote(request).await,
                RPCTypes::AppendEntries => client.append_entries(request).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(request).await,
            }
        };
        let reply = match tokio::time::timeout(timeout, call).await {
            Err(_) => {
                let timeout = Timeout {
                    action: kind,
                    id: self.peers.node_id(),
                    target: self.target,
                    timeout,
                };
                return Err(RPCError::Timeout(timeout));
            }
            Ok(Err(status)) => return Err(status_error(status)),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&reply.json).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// Maps a gRPC failure: a peer we cannot reach (or that refuses us) is
/// `Unreachable`, so openraft backs off; anything else is a network error.
fn status_error<E: std::error::Error>(status: tonic::Status) -> RPCError<NodeId, Member, RaftError<NodeId, E>> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
            RPCError::Unreachable(Unreachable::new(&status))
        }
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.call(RPCTypes::AppendEntries, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(RPCTypes::InstallSnapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call(RPCTypes::Vote, &rpc, option.hard_ttl()).await
    }

    /// Exponential backoff with jitter, 50 ms doubling to 1 s: a recovered peer
    /// gets heartbeats again well within one election timeout.
    fn backoff(&self) -> openraft::network::Backoff {
        let mut delay = Duration::from_millis(50);
        openraft::network::Backoff::new(std::iter::from_fn(move || {
            let jitter = rand::thread_rng().gen_range(0.8..1.2);
            let this = delay.mul_f64(jitter);
            delay = (delay * 2).min(Duration::from_secs(1));
            Some(this)
        }))
    }
}
