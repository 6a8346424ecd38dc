//! The embedded Raft group: openraft glue for failoverd.
//!
//! ```text
//!  api / cli ──► RaftNode ──► openraft::Raft ──► LogStore (sled: logs, vote, committed, purged)
//!                   │              │       └───► StateMachine (in memory, snapshots in sled)
//!                   │              └──► Network (tonic client, one channel per peer)
//!                   └── PeerService (tonic server: Raft + Cluster) ◄── peers
//! ```
//!
//! Types here are the vocabulary shared by every other module: node ids, the
//! per-node metadata kept in the membership (`Member`), and the type config.

pub mod command;
pub mod data_dir;
pub mod log_store;
pub mod network;
pub mod node;
pub mod peers;
pub mod service;
pub mod state_machine;
pub mod tls;

pub(crate) mod pb {
    //! Generated protobuf types; they do not leave the transport modules.
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("failoverd.v1");
}

use std::fmt;
use std::io::Cursor;

use serde::Deserialize;
use serde::Serialize;

pub use command::Command;
pub use command::CommandResult;

/// A node's id: unique in a cluster and never reused.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// openraft's type configuration for failoverd.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The openraft handle specialised for failoverd.
pub type Raft = openraft::Raft<TypeConfig>;
/// Raft metrics with failoverd's node types.
pub type Metrics = openraft::RaftMetrics<NodeId, Member>;
/// A log id with failoverd's node id.
pub type LogId = openraft::LogId<NodeId>;
/// openraft's storage error with failoverd's node id.
pub type StorageError = openraft::StorageError<NodeId>;

/// What a node is for. Stored in the Raft membership, so every node knows every role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs neard and may hold the validator lock.
    #[default]
    Validator,
    /// Votes in Raft only: never runs neard, never contends for the lock.
    Arbiter,
}

impl Role {
    /// The lower-case name used in config, status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Validator => "validator",
            Role::Arbiter => "arbiter",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "validator" => Ok(Role::Validator),
            "arbiter" => Ok(Role::Arbiter),
            other => Err(format!(
                "unknown role {other:?} (expected \"validator\" or \"arbiter\")"
            )),
        }
    }
}

/// A cluster member as recorded in the Raft membership config: where to dial it.
///
/// A node's name and role live in the replicated state machine instead
/// (`Command::RegisterNode`), written by the node itself, so that members listed
/// only by address in `initial_members` still end up fully described.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Address peers dial for gRPC, `host:port`.
    pub addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}
