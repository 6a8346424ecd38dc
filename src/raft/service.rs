//! The server half of the peer transport: the `Raft` and `Cluster` gRPC
//! services. Only cluster peers should reach this port (it carries no client
//! API); with `[cluster.tls]` only holders of a CA-signed certificate can.
//!
//! Every call is first admitted: a caller that names a cluster id other than
//! ours is refused with `PermissionDenied`, and the refusal is logged with its
//! address. A caller with no id yet is heard only if it is a member (a late
//! initial member, or one being added) and refused otherwise. A call meant for
//! another node id (the caller's membership names a different node at our
//! address) is refused too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::raft::AppendEntriesRequest;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::VoteRequest;
use serde::Serialize;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::node::ClusterError;
use super::node::RaftNode;
use super::pb;
use super::pb::cluster_server::Cluster;
use super::pb::raft_server::Raft as RaftRpc;
use super::pb::RaftPayload;
use super::peers::CLUSTER_HEADER;
use super::peers::FROM_HEADER;
use super::peers::TO_HEADER;
use super::Command;
use super::NodeId;
use super::TypeConfig;
use crate::lock::service::LeaderRequest;
use crate::lock::service::LockService;

/// Largest message a peer may send: snapshot chunks and entry batches.
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Serves peers on behalf of one node.
#[derive(Clone)]
pub struct PeerService {
    node: Arc<RaftNode>,
    lock: Arc<LockService>,
}

impl PeerService {
    /// A service for `node` and its lock service.
    pub fn new(node: Arc<RaftNode>, lock: Arc<LockService>) -> Self {
        PeerService { node, lock }
    }

    /// Admits a call from a peer of our cluster; refuses and logs any other.
    fn admit<T>(&self, req: &Request<T>) -> Result<Option<NodeId>, Status> {
        let header = |key| req.metadata().get(key).and_then(|v| v.to_str().ok()).unwrap_or("");
        let theirs = header(CLUSTER_HEADER);
        let from = header(FROM_HEADER).parse::<NodeId>().ok();
        if let Some(ours) = self.node.peers().cluster_id() {
            // A member that has not learned the id yet (a late initial member)
            // is heard: refusing its votes would keep it campaigning with ever
            // higher terms, and it cannot win with its empty log anyway.
            let member_without_id = theirs.is_empty() && from.is_some_and(|id| self.node.is_member(id));
            if theirs != ours && !member_without_id {
                let peer = req
                    .remote_addr()
                    .map_or_else(|| "unknown".to_string(), |a: SocketAddr| a.to_string());
                let theirs = if theirs.is_empty() { "none yet" } else { theirs };
                tracing::warn!(peer = %peer, from = ?from, their_cluster = theirs, our_cluster = %ours, "refused peer: cluster id mismatch");
                return Err(Status::permission_denied(format!(
                    "cluster id mismatch: this node is in cluster {ours}, caller is in {theirs}"
                )));
            }
        }
        // A peer that dials an address now held by another node (a reused
        // address, a stale membership) must not be answered as if we were it.
        let me = self.node.identity().node_id;
        if let Some(to) = header(TO_HEADER).parse::<NodeId>().ok().filter(|to| *to != me) {
            let peer = req
                .remote_addr()
                .map_or_else(|| "unknown".to_string(), |a: SocketAddr| a.to_string());
            tracing::warn!(peer = %peer, from = ?from, expected = to, "refused peer: it wants another node at this address");
            return Err(Status::permission_denied(format!(
                "wrong node: this is node {me}, not node {to}"
            )));
        }
        if let Some(from) = from {
            self.node.peers().note_contact(from);
        }
        Ok(from)
    }
}

fn decode<T: serde::de::DeserializeOwned>(payload: &RaftPayload) -> Result<T, Status> {
    serde_json::from_slice(&payload.json).map_err(|e| Status::invalid_argument(format!("undecodable payload: {e}")))
}

fn reply<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    let json = serde_json::to_vec(value).map_err(|e| Status::internal(format!("cannot encode reply: {e}")))?;
    Ok(Response::new(RaftPayload { json }))
}

fn cluster_status(e: ClusterError) -> Status {
    if e.retryable() {
        Status::unavailable(e.to_string())
    } else {
        Status::failed_precondition(e.to_string())
    }
}

impl PeerService {
    /// `admit`, plus: an unclaimed node takes no Raft traffic.
    fn admit_raft<T>(&self, req: &Request<T>) -> Result<(), Status> {
        self.admit(req)?;
        if self.node.unclaimed() {
            let peer = req
                .remote_addr()
                .map_or_else(|| "unknown".to_string(), |a: SocketAddr| a.to_string());
            tracing::warn!(peer = %peer, "refused peer: this node waits to be added with `failoverd members add`");
            return Err(Status::permission_denied(
                "this node waits to be added with `failoverd members add` and takes no Raft traffic until then",
            ));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl RaftRpc for PeerService {
    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.admit_raft(&req)?;
        let rpc: VoteRequest<NodeId> = decode(req.get_ref())?;
        reply(&self.node.raft().vote(rpc).await)
    }

    async fn append_entries(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.admit_raft(&req)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref())?;
        reply(&self.node.raft().append_entries(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.admit_raft(&req)?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(req.get_ref())?;
        reply(&self.node.raft().install_snapshot(rpc).await)
    }
}

#[tonic::async_trait]
impl Cluster for PeerService {
    async fn client_write(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.admit(&req)?;
        let cmd: Command = decode(req.get_ref())?;
        // Only the leader handles a forwarded write; one hop, no loops.
        let result = self.node.write_local(cmd).await.map_err(cluster_status)?;
        reply(&result)
    }

    async fn lock(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.admit(&req)?;
        let request: LeaderRequest = decode(req.get_ref())?;
        reply(&self.lock.on_leader(request).await)
    }

    async fn add_member(&self, req: Request<pb::AddMemberRequest>) -> Result<Response<pb::MembershipReply>, Status> {
        self.admit(&req)?;
        let pb::AddMemberRequest { node_id, addr } = req.into_inner();
        let members = self
            .node
            .add_member_local(node_id, addr)
            .await
            .map_err(cluster_status)?;
        let json = serde_json::to_vec(&members).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::MembershipReply { json }))
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        self.admit(&req)?;
        let members = self
            .node
            .remove_member_local(req.get_ref().node_id)
            .await
            .map_err(cluster_status)?;
        let json = serde_json::to_vec(&members).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::MembershipReply { json }))
    }

    async fn claim(&self, req: Request<pb::ClaimRequest>) -> Result<Response<pb::ClaimReply>, Status> {
        self.admit(&req)?;
        self.node
            .claim(&req.get_ref().cluster_id)
            .await
            .map_err(cluster_status)?;
        Ok(Response::new(pb::ClaimReply {}))
    }

    async fn get_node_info(&self, req: Request<pb::NodeInfoRequest>) -> Result<Response<pb::NodeInfo>, Status> {
        // Answered before admission: a node being added has no cluster id yet,
        // and the leader must be able to ask it who it is.
        let _ = req;
        let me = self.node.identity();
        Ok(Response::new(pb::NodeInfo {
            node_id: me.node_id,
            name: me.name.clone(),
            role: me.role.to_string(),
            cluster_id: self.node.peers().cluster_id().unwrap_or_default(),
            advertise: me.advertise.clone(),
        }))
    }
}

/// Serves both services on `incoming` until `shutdown` resolves.
pub async fn serve<IO, IE>(
    node: Arc<RaftNode>,
    lock: Arc<LockService>,
    incoming: impl tokio_stream::Stream<Item = Result<IO, IE>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + tonic::transport::server::Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let service = PeerService::new(node, lock);
    let raft = pb::raft_server::RaftServer::new(service.clone())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let cluster = pb::cluster_server::ClusterServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    tonic::transport::Server::builder()
        .timeout(Duration::from_secs(120))
        .tcp_nodelay(true)
        .add_service(raft)
        .add_service(cluster)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
