//! failoverd: failover for NEAR validators without a Consul cluster.
//!
//! Every agent embeds one voter of a Raft group (`raft`), serves a local HTTP
//! API (`api`), and is driven by the `failoverd` binary (`cli`).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod api;
pub mod cli;
pub mod config;
pub mod consul_api;
pub mod fake_neard;
pub mod ledger;
pub mod local_cluster;
pub mod lock;
pub mod raft;
pub mod signal;
pub mod supervisor;
