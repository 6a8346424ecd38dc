//! Lock semantics with Consul's rules, served from the Raft group.
//!
//! ```text
//!   supervisor / `failoverd lock` ──► LockBackend ──┬─► RaftBackend ──► LockService ──► Raft log
//!   Consul-compatible HTTP API ───────────────────────┼──────────────────┘     (leader: TTL timers,
//!                                                     └─► ConsulBackend ──► a real Consul  lock-delay)
//! ```
//!
//! * `state`: the replicated, deterministic sessions + KV.
//! * `leader`: what only the Raft leader does: session TTL timers and lock-delay.
//! * `service`: requests routed to the leader, reads with consistency modes,
//!   blocking queries.
//! * `backend`: the `LockBackend` trait; `raft_backend`, `consul_backend`.

pub mod backend;
pub mod consul_backend;
pub mod leader;
pub mod raft_backend;
pub mod service;
pub mod state;
