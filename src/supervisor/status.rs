//! What the supervisor shows: its state, the lock holder, the lease, neard,
//! plus the metrics (failoverd's and kuutamod's names).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde::Serialize;

/// kuutamod's states, with kuutamod's meaning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// (Re)starting neard as a voter; waiting for its RPC.
    #[default]
    Startup,
    /// Waiting for neard to finish syncing.
    Syncing,
    /// Creating a lock session.
    Registering,
    /// A synced standby: renewing its session, ready to take the lock.
    Voting,
    /// Holding the lock: neard runs with the validator key.
    Validating,
    /// Stopped.
    Shutdown,
}

impl State {
    /// Every state, for the metrics.
    pub const ALL: [State; 6] = [
        State::Startup,
        State::Syncing,
        State::Registering,
        State::Voting,
        State::Validating,
        State::Shutdown,
    ];

    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Startup => "Startup",
            State::Syncing => "Syncing",
            State::Registering => "Registering",
            State::Voting => "Voting",
            State::Validating => "Validating",
            State::Shutdown => "Shutdown",
        }
    }
}

/// Who holds the validator lock, from the key's value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The holder's node name.
    #[serde(rename = "Name", default)]
    pub name: String,
    /// The holder's node id (0 with the consul backend).
    #[serde(rename = "NodeId", default)]
    pub node_id: u64,
    /// The holder's hostname.
    #[serde(rename = "Hostname", default)]
    pub hostname: String,
}

/// The supervisor's view, served in `/v1/status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SupervisorStatus {
    /// Current state.
    pub state: State,
    /// The lock key.
    pub key: String,
    /// Our session, if any.
    pub session: Option<String>,
    /// The current holder, if the key is held.
    pub holder: Option<Holder>,
    /// The holder's session, if held.
    pub holder_session: Option<String>,
    /// LockIndex of the current tenure.
    pub lock_index: u64,
    /// While validating: milliseconds until the fence deadline.
    pub lease_remaining_ms: Option<u64>,
    /// neard's pid, if running.
    pub neard_pid: Option<u32>,
    /// neard's last health answer.
    pub neard_health: String,
    /// Key files readable by others (reported loudly).
    pub exposed_keys: Vec<String>,
    /// Times this node became the validator.
    pub promotions: u64,
    /// neard stops so far.
    pub neard_restarts: u64,
}

type Labels = Vec<(&'static str, String)>;

/// The supervisor's metrics.
pub struct SupervisorMetrics {
    state: Family<Labels, Gauge>,
    kuutamod_state: Family<Labels, Gauge>,
    active: Gauge,
    neard_restarts: Counter,
    /// A gauge, not a counter: kuutamod's name has no `_total` suffix.
    kuutamod_restarts: Gauge,
    promotions: Counter,
    lease_remaining: Gauge<f64, AtomicU64>,
    /// Renew round trips.
    pub renew_duration: Histogram,
    uptime: Gauge,
    started: Instant,
}

impl SupervisorMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let buckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
        let m = SupervisorMetrics {
            state: Family::default(),
            kuutamod_state: Family::default(),
            active: Gauge::default(),
            neard_restarts: Counter::default(),
            kuutamod_restarts: Gauge::default(),
            promotions: Counter::default(),
            lease_remaining: Gauge::default(),
            renew_duration: Histogram::new(buckets),
            uptime: Gauge::default(),
            started: Instant::now(),
        };
        registry.register(
            "failoverd_supervisor_state",
            "1 for the supervisor's state, 0 for the others",
            m.state.clone(),
        );
        registry.register(
            "failoverd_validator_active",
            "1 while this node runs neard with the validator key",
            m.active.clone(),
        );
        registry.register("failoverd_neard_restarts", "neard stops", m.neard_restarts.clone());
        registry.register(
            "failoverd_promotions",
            "Times this node became the validator",
            m.promotions.clone(),
        );
        registry.register(
            "failoverd_lease_remaining_seconds",
            "Seconds until the fence deadline (0 when not validating)",
            m.lease_remaining.clone(),
        );
        registry.register(
            "failoverd_session_renew_duration_seconds",
            "Session renew round trips",
            m.renew_duration.clone(),
        );
        registry.register(
            "kuutamod_state",
            "kuutamod-compatible: 1 for the current state",
            m.kuutamod_state.clone(),
        );
        registry.register(
            "kuutamod_neard_restarts",
            "kuutamod-compatible: neard stops",
            m.kuutamod_restarts.clone(),
        );
        registry.register(
            "kuutamod_uptime",
            "kuutamod-compatible: milliseconds since start",
            m.uptime.clone(),
        );
        let m = Arc::new(m);
        m.set_state(State::Startup);
        m
    }

    /// Records the current state (one gauge at 1).
    pub fn set_state(&self, state: State) {
        for s in State::ALL {
            let v = i64::from(s == state);
            self.state
                .get_or_create(&vec![("state", s.as_str().to_string())])
                .set(v);
            self.kuutamod_state
                .get_or_create(&vec![("type", s.as_str().to_string())])
                .set(v);
        }
        self.active.set(i64::from(state == State::Validating));
    }

    /// Counts a neard stop.
    pub fn neard_restarted(&self) {
        self.neard_restarts.inc();
        self.kuutamod_restarts.inc();
    }

    /// Counts a promotion.
    pub fn promoted(&self) {
        self.promotions.inc();
    }

    /// Records the lease left.
    pub fn lease(&self, seconds: f64) {
        self.lease_remaining.set(seconds);
    }

    /// Refreshes time-based gauges before a scrape.
    pub fn refresh(&self) {
        self.uptime.set(self.started.elapsed().as_millis() as i64);
    }
}

/// Shared between the supervisor task, the API and `handover`.
#[derive(Clone)]
pub struct SupervisorHandle {
    /// The status.
    pub status: Arc<Mutex<SupervisorStatus>>,
    /// The metrics.
    pub metrics: Arc<SupervisorMetrics>,
    /// Handover requests.
    pub handover: tokio::sync::mpsc::Sender<HandoverRequest>,
}

impl SupervisorHandle {
    /// A copy of the status.
    pub fn snapshot(&self) -> SupervisorStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// `failoverd handover [--to NAME] [--force]`.
#[derive(Debug)]
pub struct HandoverRequest {
    /// Leave this node a window to take the lock.
    pub to: Option<String>,
    /// Hand over even with no synced standby.
    pub force: bool,
    /// The answer.
    pub reply: tokio::sync::oneshot::Sender<Result<String, String>>,
}
