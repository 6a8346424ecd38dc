//! Prometheus metrics of the agent, refreshed from Raft metrics at each scrape.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::raft::node::NodeStatus;

type Labels = Vec<(&'static str, String)>;

/// The agent's metric set.
pub struct AgentMetrics {
    registry: Registry,
    term: Gauge,
    leader_id: Gauge,
    state: Family<Labels, Gauge>,
    applied_index: Gauge,
    last_log_index: Gauge,
    peer_last_contact: Family<Labels, Gauge<f64, AtomicU64>>,
}

/// Every state `failoverd_raft_state` reports, so all series always exist.
const STATES: [&str; 5] = ["Leader", "Follower", "Candidate", "Learner", "Shutdown"];

impl Default for AgentMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let build_info = Family::<Labels, Gauge>::default();
        build_info
            .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION").to_string())])
            .set(1);
        registry.register("failoverd_build_info", "Build information (always 1)", build_info);
        let m = AgentMetrics {
            registry,
            term: Gauge::default(),
            leader_id: Gauge::default(),
            state: Family::default(),
            applied_index: Gauge::default(),
            last_log_index: Gauge::default(),
            peer_last_contact: Family::default(),
        };
        let mut m = m;
        let r = &mut m.registry;
        r.register("failoverd_raft_term", "Current Raft term", m.term.clone());
        r.register(
            "failoverd_raft_leader_id",
            "Node id of the known leader, 0 when none",
            m.leader_id.clone(),
        );
        r.register(
            "failoverd_raft_state",
            "1 for this node's Raft state, 0 for the others",
            m.state.clone(),
        );
        r.register(
            "failoverd_raft_applied_index",
            "Last applied log index",
            m.applied_index.clone(),
        );
        r.register(
            "failoverd_raft_last_log_index",
            "Last log index",
            m.last_log_index.clone(),
        );
        r.register(
            "failoverd_raft_peer_last_contact_seconds",
            "Seconds since this node last heard from each peer",
            m.peer_last_contact.clone(),
        );
        m
    }
}

impl AgentMetrics {
    /// The registry, for other components' metrics.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Refreshes the Raft gauges from `status` (if there is a Raft node) and
    /// renders the text format.
    pub fn render(&self, status: Option<&NodeStatus>) -> String {
        if let Some(status) = status {
            self.refresh(status);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    fn refresh(&self, status: &NodeStatus) {
        self.term.set(status.term as i64);
        self.leader_id.set(status.leader_id.unwrap_or(0) as i64);
        for state in STATES {
            let value = i64::from(status.raft_state == state);
            self.state.get_or_create(&vec![("state", state.to_string())]).set(value);
        }
        self.applied_index.set(status.applied_index.unwrap_or(0) as i64);
        self.last_log_index.set(status.last_log_index.unwrap_or(0) as i64);
        self.peer_last_contact.clear();
        for member in status.members.iter().filter(|m| m.id != status.node_id) {
            if let Some(ms) = member.last_contact_ms {
                let labels = vec![("peer", member.id.to_string())];
                self.peer_last_contact.get_or_create(&labels).set(ms as f64 / 1000.0);
            }
        }
    }
}
