//! Connections to peers: one long-lived gRPC channel per address, the metadata
//! every call carries, and when each peer was last heard from.
//!
//! Channels are created lazily and reconnect by themselves; a call to a peer that
//! is down fails fast with `Unavailable` and openraft backs off (see
//! `network::backoff`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::transport::ClientTlsConfig;
use tonic::transport::Endpoint;

use super::data_dir::DataDir;
use super::pb::cluster_client::ClusterClient;
use super::pb::raft_client::RaftClient;
use super::NodeId;

/// Metadata key carrying the sender's cluster id ("" before it has one).
pub const CLUSTER_HEADER: &str = "x-failoverd-cluster";
/// Metadata key carrying the sender's node id.
pub const FROM_HEADER: &str = "x-failoverd-from";
/// Metadata key carrying the node id the sender means to reach.
pub const TO_HEADER: &str = "x-failoverd-to";

/// How long to wait for a TCP (and TLS) connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Shared by the Raft network, write forwarding and membership calls.
#[derive(Clone)]
pub struct Peers {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: NodeId,
    dir: DataDir,
    tls: Option<ClientTlsConfig>,
    channels: Mutex<HashMap<String, Channel>>,
    contacts: Mutex<HashMap<NodeId, Instant>>,
}

/// A call could not be set up (bad address or TLS settings).
#[derive(Debug, thiserror::Error)]
#[error("peer {addr}: {reason}")]
pub struct PeerError {
    /// The peer address.
    pub addr: String,
    /// What is wrong.
    pub reason: String,
}

impl Peers {
    /// Peers of node `node_id`, whose cluster id is read from `dir`.
    pub fn new(node_id: NodeId, dir: DataDir, tls: Option<ClientTlsConfig>) -> Self {
        let inner = Inner {
            node_id,
            dir,
            tls,
            channels: Mutex::default(),
            contacts: Mutex::default(),
        };
        Peers { inner: Arc::new(inner) }
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// The cluster id this node belongs to, if it has learned one.
    pub fn cluster_id(&self) -> Option<String> {
        self.inner.dir.cluster_id().ok().flatten()
    }

    /// Records the cluster id durably (a node being claimed by a leader).
    pub async fn set_cluster_id(&self, cluster_id: &str) -> Result<(), super::data_dir::StoreError> {
        self.inner.dir.set_cluster_id(cluster_id).await
    }

    /// The channel to `addr`, created on first use and then reused.
    pub fn channel(&self, addr: &str) -> Result<Channel, PeerError> {
        let mut channels = self.inner.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let err = |reason: String| PeerError {
            addr: addr.to_string(),
            reason,
        };
        let scheme = if self.inner.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| err(format!("not a valid address: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.inner.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(|e| err(format!("TLS: {e}")))?;
        }
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// A Raft-service client for `addr`.
    pub fn raft_client(&self, addr: &str) -> Result<RaftClient<Channel>, PeerError> {
        Ok(RaftClient::new(self.channel(addr)?).max_decoding_message_size(64 * 1024 * 1024))
    }

    /// A Cluster-service client for `addr`.
    pub fn cluster_client(&self, addr: &str) -> Result<ClusterClient<Channel>, PeerError> {
        Ok(ClusterClient::new(self.channel(addr)?).max_decoding_message_size(64 * 1024 * 1024))
    }

    /// Wraps `msg` with our identity, the node we mean to reach (if we know
    /// it), and a deadline the server also honours.
    pub fn request<T>(&self, msg: T, timeout: Duration, to: Option<NodeId>) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(timeout);
        let cluster = self.cluster_id().unwrap_or_default();
        if let Ok(value) = MetadataValue::try_from(cluster.as_str()) {
            req.metadata_mut().insert(CLUSTER_HEADER, value);
        }
        req.metadata_mut()
            .insert(FROM_HEADER, MetadataValue::from(self.inner.node_id));
        if let Some(to) = to {
            req.metadata_mut().insert(TO_HEADER, MetadataValue::from(to));
        }
        req
    }

    /// Records that `peer` answered or called us just now.
    pub fn note_contact(&self, peer: NodeId) {
        self.inner
            .contacts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, Instant::now());
    }

    /// Time since `peer` was last heard from, if ever.
    pub fn since_contact(&self, peer: NodeId) -> Option<Duration> {
        let contacts = self.inner.contacts.lock().unwrap_or_else(|p| p.into_inner());
        contacts.get(&peer).map(Instant::elapsed)
    }
}
