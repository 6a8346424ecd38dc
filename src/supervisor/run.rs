//! The supervisor: kuutamod's state machine on a `LockBackend`, with a lease
//! enforced by the fence.
//!
//! ```text
//!  Startup ──rpc up──► Syncing ──synced──► Registering ──session──► Voting ──acquired──► Validating
//!     ▲                   ▲                      ▲                    │  ▲                     │
//!     └── neard exits ────┴── unhealthy/syncing ─┴── session lost ────┘  └── step down / handover
//! ```
//!
//! All I/O with the lock service runs in tasks that report [`Event`]s: the
//! renew loop, the blocking watch of the key, neard's health. The loop reacts.
//! Safety does not depend on the loop running: the fence kills validator neard
//! at `last renew sent + session_ttl - fence_margin` unless the loop moves the
//! deadline after each acknowledged renew.

use std::path::PathBuf;

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::lease;
use super::neard::health;
use super::neard::Health;
use super::neard::NeardHome;
use super::neard::NeardProcess;
use super::status::HandoverRequest;
use super::status::Holder;
use super::status::State;
use super::status::SupervisorHandle;
use crate::config::LeaseConfig;
use crate::lock::backend::Behavior;
use crate::lock::backend::LockBackend;
use crate::lock::backend::LockError;
use crate::lock::backend::SessionSpec;
use crate::lock::backend::Watched;

/// How long neard may take to answer its RPC after a start.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
/// How often neard's health is polled.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// The longest blocking watch of the key.
const WATCH_WAIT: Duration = Duration::from_secs(30);
/// neard that exits sooner than this after its start is restarted after a
/// backoff (doubling from 1 s up to `MAX_RESTART_BACKOFF`).
const MIN_NEARD_UPTIME: Duration = Duration::from_secs(30);
/// The longest wait before restarting a crash-looping neard.
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);

/// Something the supervisor reacts to.
#[derive(Debug)]
enum Event {
    /// A renew of `session` finished: when it was sent (CLOCK_BOOTTIME ns), its result.
    Renewed {
        session: String,
        sent_ns: u64,
        took: Duration,
        result: Result<Duration, LockError>,
    },
    /// The key changed (or the watch failed).
    Watched(Result<Watched, LockError>),
    /// neard's health.
    Health(Result<Health, String>),
}

/// What woke the loop.
enum Step {
    Handover(HandoverRequest),
    Event(Event),
    Exited(String),
}

/// Who this node is, as the supervisor needs it.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Node name.
    pub name: String,
    /// Node id (0 with the consul backend).
    pub node_id: u64,
}

/// The supervisor of one validator host.
pub struct Supervisor<B: LockBackend + Clone> {
    backend: B,
    home: NeardHome,
    lease: LeaseConfig,
    key: String,
    me: Identity,
    fence: PathBuf,
    handle: SupervisorHandle,
    http: reqwest::Client,
    state: State,
    session: Option<String>,
    neard: Option<NeardProcess>,
    events_tx: mpsc::Sender<Event>,
    events: Option<mpsc::Receiver<Event>>,
    tasks: Vec<JoinHandle<()>>,
    /// Fence deadline while validating (CLOCK_BOOTTIME ns).
    deadline_ns: u64,
    /// Since when neard has been unhealthy or syncing.
    unhealthy_since: Option<Instant>,
    /// Do not contend before this (after handing over, or leaving a window to the named node).
    hold_off_until: Option<Instant>,
    /// The last view of the key.
    last_key: Option<Watched>,
    /// When the last acknowledged renew (or the session's creation) was sent.
    last_renew_ns: Option<u64>,
    /// When neard was last started, and the wait before the next start after
    /// it exited on its own.
    neard_started: Option<Instant>,
    restart_backoff: Duration,
    next_start: Option<Instant>,
}

impl<B: LockBackend + Clone> Supervisor<B> {
    /// A supervisor; `fence` is the failoverd binary (which runs `fence`).
    pub fn new(
        backend: B,
        home: NeardHome,
        lease: LeaseConfig,
        key: String,
        me: Identity,
        fence: PathBuf,
        handle: SupervisorHandle,
    ) -> Self {
        let (events_tx, events) = mpsc::channel(64);
        Supervisor {
            backend,
            home,
            lease,
            key,
            me,
            fence,
            handle,
            http: reqwest::Client::new(),
            state: State::Startup,
            session: None,
            neard: None,
            events_tx,
            events: Some(events),
            tasks: Vec::new(),
            deadline_ns: 0,
            unhealthy_since: None,
            hold_off_until: None,
            last_key: None,
            last_renew_ns: None,
            neard_started: None,
            restart_backoff: Duration::ZERO,
            next_start: None,
        }
    }

    fn set_state(&mut self, state: State) {
        if self.state != state {
            tracing::info!(from = self.state.as_str(), to = state.as_str(), "supervisor state");
        }
        self.state = state;
        self.handle.metrics.set_state(state);
        self.update(|s| s.state = state);
    }

    fn update(&self, f: impl FnOnce(&mut super::status::SupervisorStatus)) {
        f(&mut self.handle.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Runs until `shutdown`; then stops neard first and releases the lock.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>, mut handovers: mpsc::Receiver<HandoverRequest>) {
        let exposed = self.home.exposed_keys();
        for warning in &exposed {
            tracing::error!("KEY FILE EXPOSED: {warning}");
        }
        self.update(|s| {
            s.exposed_keys = exposed;
            s.key = self.key.clone();
        });
        self.spawn_watch();
        self.spawn_health();
        let Some(mut events) = self.events.take() else { return };
        loop {
            if *shutdown.borrow() {
                break;
            }
            if self.state == State::Startup && self.neard.is_none() {
                if let Some(wait) = self
                    .next_start
                    .take()
                    .map(|t| t.saturating_duration_since(Instant::now()))
                {
                    tokio::select! {
                        _ = shutdown.changed() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                if let Err(e) = self.start_voter() {
                    tracing::error!(error = %e, "cannot start neard as a voter; retrying in 5s");
                    tokio::select! {
                        _ = shutdown.changed() => break,
                        _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    }
                }
            }
            let step = tokio::select! {
                _ = shutdown.changed() => break,
                Some(req) = handovers.recv() => Step::Handover(req),
                Some(event) = events.recv() => Step::Event(event),
                how = exited(&mut self.neard) => Step::Exited(how),
            };
            match step {
                Step::Handover(req) => self.handover(req).await,
                Step::Event(event) => self.handle_event(event).await,
                Step::Exited(how) => self.neard_exited(how).await,
            }
        }
        self.shutdown().await;
    }

    fn start_voter(&mut self) -> Result<(), super::neard::NeardError> {
        self.home.setup_voter()?;
        let neard = NeardProcess::spawn(&self.fence, &self.home, &self.me.name, None)?;
        let pid = neard.neard_pid();
        self.neard = Some(neard);
        self.neard_started = Some(Instant::now());
        self.unhealthy_since = Some(Instant::now());
        self.update(|s| s.neard_pid = pid);
        tracing::info!("neard started as a voter");
        Ok(())
    }

    async fn neard_exited(&mut self, how: String) {
        tracing::warn!(how, state = self.state.as_str(), "neard exited");
        self.neard = None;
        if self.neard_started.is_some_and(|t| t.elapsed() < MIN_NEARD_UPTIME) {
            self.restart_backoff = (self.restart_backoff * 2).clamp(Duration::from_secs(1), MAX_RESTART_BACKOFF);
            tracing::warn!(backoff = ?self.restart_backoff, "neard exited soon after its start: restarting it after a backoff");
            self.next_start = Some(Instant::now() + self.restart_backoff);
        } else {
            self.restart_backoff = Duration::ZERO;
        }
        self.handle.metrics.neard_restarted();
        self.update(|s| {
            s.neard_restarts += 1;
            s.neard_pid = None;
        });
        let was_validating = self.state == State::Validating;
        // Back to Startup first: nothing signs from now on, and status and
        // metrics must say so while the release below waits for a leader.
        // No longer a synced standby, so no session either (`register`
        // creates a new one).
        self.set_state(State::Startup);
        if was_validating {
            // neard is dead, so releasing is safe; no lock-delay for the next holder.
            self.release(b"").await;
        }
        self.end_session().await;
    }

    async fn handle_event(&mut self, event: Event) {
        match event {
            Event::Health(result) => self.on_health(result).await,
            // A renew of an older session must neither move the fence deadline nor end this one.
            Event::Renewed { session, .. } if self.session.as_ref() != Some(&session) => {}
            Event::Renewed {
                sent_ns, took, result, ..
            } => self.on_renewed(sent_ns, took, result).await,
            Event::Watched(result) => self.on_watched(result).await,
        }
    }

    async fn on_health(&mut self, result: Result<Health, String>) {
        let healthy_synced = matches!(result, Ok(h) if !h.syncing);
        let pid = self.neard.as_ref().and_then(NeardProcess::neard_pid);
        self.update(|s| {
            s.neard_pid = pid;
            s.neard_health = match &result {
                Ok(h) if h.syncing => format!("syncing (height {})", h.height),
                Ok(h) => format!("synced (height {})", h.height),
                Err(e) => format!("unreachable: {e}"),
            }
        });
        if healthy_synced {
            self.unhealthy_since = None;
        } else if self.unhealthy_since.is_none() {
            self.unhealthy_since = Some(Instant::now());
        }
        let bad_for = self.unhealthy_since.map(|t| t.elapsed()).unwrap_or_default();
        match self.state {
            State::Startup if result.is_ok() => self.set_state(State::Syncing),
            State::Startup if bad_for > STARTUP_TIMEOUT => {
                tracing::error!("neard did not answer its RPC in {STARTUP_TIMEOUT:?}; restarting it");
                self.stop_neard(true).await;
            }
            State::Syncing if healthy_synced => {
                self.set_state(State::Registering);
                self.register().await;
            }
            State::Voting if !healthy_synced => {
                // An unsynced standby must never acquire: leave the race.
                tracing::info!("neard is not synced: no longer a standby");
                self.end_session().await;
                self.set_state(State::Syncing);
            }
            State::Validating if bad_for > self.home.config().unhealthy_limit => {
                tracing::warn!(?bad_for, "validator neard unhealthy or syncing too long: stepping down");
                self.step_down(b"").await;
            }
            _ => {}
        }
    }

    /// Creates a session and starts renewing it, then votes.
    async fn register(&mut self) {
        let spec = SessionSpec {
            name: self.me.name.clone(),
            ttl: self.lease.session_ttl,
            lock_delay: self.lease.lock_delay,
            behavior: Behavior::Release,
        };
        let sent_ns = lease::monotonic_ns();
        match self.backend.create_session(&spec).await {
            Ok(id) => {
                self.last_renew_ns = Some(sent_ns);
                tracing::info!(session = %id, "session created");
                self.update(|s| s.session = Some(id.clone()));
                self.session = Some(id);
                self.spawn_renew();
                self.set_state(State::Voting);
                self.try_acquire().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot create a session yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
                // Stay in Registering; the next health event retries.
                self.set_state(State::Syncing);
            }
        }
    }

    async fn on_renewed(&mut self, sent_ns: u64, took: Duration, result: Result<Duration, LockError>) {
        self.handle.metrics.renew_duration.observe(took.as_secs_f64());
        if result.is_ok() {
            self.last_renew_ns = Some(self.last_renew_ns.unwrap_or(0).max(sent_ns));
        }
        match result {
            Ok(_) if self.state == State::Voting => self.try_acquire().await,
            Ok(_) if self.state == State::Validating => {
                self.deadline_ns = self.deadline_ns.max(lease::deadline_ns(&self.lease, sent_ns));
                if let Some(neard) = &mut self.neard {
                    neard.set_deadline(self.deadline_ns).await;
                }
                self.publish_lease();
            }
            Ok(_) => {}
            Err(LockError::SessionNotFound(_)) => {
                tracing::warn!("our session is gone");
                if self.state == State::Validating {
                    self.lost_lock("session invalidated").await;
                } else {
                    self.end_session().await;
                    self.set_state(State::Syncing);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "renew failed");
                if self.state == State::Validating {
                    self.publish_lease();
                    if lease::monotonic_ns() >= self.deadline_ns {
                        // The fence has killed neard already.
                        self.lost_lock("lease deadline passed without a renew").await;
                    }
                }
            }
        }
    }

    fn publish_lease(&self) {
        let left = lease::remaining(self.deadline_ns, lease::monotonic_ns());
        self.handle.metrics.lease(left.as_secs_f64());
        self.update(|s| s.lease_remaining_ms = Some(left.as_millis() as u64));
    }

    async fn on_watched(&mut self, result: Result<Watched, LockError>) {
        let Ok(mut watched) = result else {
            // A failed watch (or a hold-off ending): contend on what we last saw.
            self.try_acquire().await;
            return;
        };
        if self.state == State::Validating
            && watched.key.as_ref().and_then(|k| k.session.as_ref()) != self.session.as_ref()
        {
            // An answer read before our acquire can arrive after it (the watch
            // was under way): read afresh before believing the key is lost.
            // The lease and the fence bound this holder whatever the answer.
            let bound = self.lease.renew_interval.max(Duration::from_secs(1));
            if let Ok(Ok(fresh)) = tokio::time::timeout(bound, self.backend.watch(&self.key, 0, Duration::ZERO)).await {
                watched = fresh;
            }
        }
        let holder_session = watched.key.as_ref().and_then(|k| k.session.clone());
        let holder: Option<Holder> = match (&watched.key, &holder_session) {
            (Some(k), Some(_)) => serde_json::from_slice(&k.value).ok(),
            _ => None,
        };
        let lock_index = watched.key.as_ref().map_or(0, |k| k.lock_index);
        self.update(|s| {
            s.holder = holder;
            s.holder_session = holder_session.clone();
            s.lock_index = lock_index;
        });
        let released_value = watched
            .key
            .as_ref()
            .filter(|k| k.session.is_none())
            .map(|k| k.value.clone());
        self.last_key = Some(watched);
        match self.state {
            State::Validating if holder_session != self.session => {
                self.lost_lock("the key is no longer ours").await;
            }
            State::Voting if holder_session.is_none() => {
                // A handover to another node: leave it a window first.
                if let Some(value) = released_value {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&value) {
                        if let Some(to) = v.get("handover_to").and_then(|t| t.as_str()) {
                            if to != self.me.name {
                                let window = (self.lease.renew_interval * 4).max(Duration::from_secs(2));
                                self.hold_off_until = Some(Instant::now() + window);
                                let events = self.events_tx.clone();
                                tokio::spawn(async move {
                                    tokio::time::sleep(window).await;
                                    let _ = events.send(Event::Watched(Err(LockError::NoLeader))).await;
                                });
                            }
                        }
                    }
                }
                self.try_acquire().await;
            }
            _ => {}
        }
    }

    /// Acquires the key if it is free and this node may contend.
    async fn try_acquire(&mut self) {
        if self.state != State::Voting || self.hold_off_until.is_some_and(|t| Instant::now() < t) {
            return;
        }
        // Only a healthy, synced standby contends (as of neard's last answer).
        if self.unhealthy_since.is_some() {
            return;
        }
        if self
            .last_key
            .as_ref()
            .and_then(|w| w.key.as_ref())
            .is_some_and(|k| k.session.is_some())
        {
            return;
        }
        let Some(session) = self.session.clone() else { return };
        let holder = Holder {
            name: self.me.name.clone(),
            node_id: self.me.node_id,
            hostname: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        let value = serde_json::to_vec(&holder).unwrap_or_default();
        // The lease counts from the last renew the server acknowledged: an
        // acquire does not extend the session.
        let Some(renewed_ns) = self.last_renew_ns else { return };
        match self.backend.acquire(&self.key, &session, &value).await {
            Ok(true) => self.promote(renewed_ns).await,
            Ok(false) => {}
            Err(LockError::SessionNotFound(_)) => {
                self.end_session().await;
                self.set_state(State::Syncing);
            }
            Err(e) => tracing::warn!(error = %e, "acquire failed"),
        }
    }

    /// Became the lock holder: restart neard with the validator key, fenced.
    async fn promote(&mut self, renewed_ns: u64) {
        tracing::info!(key = %self.key, "acquired the validator lock: promoting");
        self.deadline_ns = lease::deadline_ns(&self.lease, renewed_ns);
        self.set_state(State::Validating);
        self.handle.metrics.promoted();
        self.update(|s| s.promotions += 1);
        // The voter neard holds no key; stopping it quickly is safe.
        self.stop_neard(true).await;
        if lease::monotonic_ns() >= self.deadline_ns {
            self.step_down(b"").await;
            return;
        }
        let started = self
            .home
            .setup_validator()
            .and_then(|()| NeardProcess::spawn(&self.fence, &self.home, &self.me.name, Some(self.deadline_ns)));
        match started {
            Ok(neard) => {
                let pid = neard.neard_pid();
                self.neard = Some(neard);
                self.neard_started = Some(Instant::now());
                self.unhealthy_since = None;
                self.update(|s| s.neard_pid = pid);
                self.publish_lease();
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start validator neard: stepping down");
                self.step_down(b"").await;
            }
        }
    }

    /// The lock is gone (or may be): kill the signer at once, start over.
    async fn lost_lock(&mut self, why: &str) {
        tracing::warn!(why, "lost the validator lock: killing validator neard");
        self.stop_neard(true).await;
        self.end_session().await;
        self.set_state(State::Startup);
    }

    /// Gives the lock up on purpose: neard first, then a plain release (no
    /// lock-delay), then back to voter mode.
    async fn step_down(&mut self, value: &[u8]) {
        self.stop_neard(true).await;
        self.release(value).await;
        // Released first, so destroying the session sets no lock-delay.
        self.end_session().await;
        self.set_state(State::Startup);
    }

    async fn release(&mut self, value: &[u8]) {
        if let Some(session) = self.session.clone() {
            // Within a TTL the session expires anyway: waiting longer (say, on a
            // lock service whose Raft has stopped) only delays a shutdown.
            let release = self.backend.release(&self.key, &session, value);
            match tokio::time::timeout(self.lease.session_ttl, release).await {
                Ok(Ok(_)) => tracing::info!("released the validator lock"),
                Ok(Err(e)) => tracing::warn!(error = %e, "release failed; the session will expire"),
                Err(_) => tracing::warn!("release timed out; the session will expire"),
            }
        }
        let _ = self.home.setup_voter();
        self.update(|s| s.lease_remaining_ms = None);
        self.handle.metrics.lease(0.0);
    }

    /// Stops neard: SIGKILL (`fast`) or SIGTERM with the configured timeout,
    /// never past the fence deadline.
    async fn stop_neard(&mut self, fast: bool) {
        if let Some(neard) = self.neard.take() {
            if fast {
                neard.kill().await;
            } else {
                neard.stop(self.home.config().stop_timeout).await;
            }
            self.handle.metrics.neard_restarted();
            self.update(|s| {
                s.neard_restarts += 1;
                s.neard_pid = None;
            });
        }
        if self.state != State::Validating {
            let _ = self.home.setup_voter();
        }
    }

    /// Destroys our session (best effort) and stops renewing it.
    async fn end_session(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        self.spawn_watch();
        self.spawn_health();
        if let Some(session) = self.session.take() {
            // Bounded like `release`: a session nobody renews expires anyway.
            let destroy = self.backend.destroy_session(&session);
            let _ = tokio::time::timeout(self.lease.session_ttl, destroy).await;
        }
        self.last_renew_ns = None;
        self.update(|s| s.session = None);
    }

    async fn handover(&mut self, req: HandoverRequest) {
        if self.state != State::Validating {
            let _ = req.reply.send(Err(format!(
                "this node is not the validator (state {})",
                self.state.as_str()
            )));
            return;
        }
        if !req.force {
            match self.synced_standbys().await {
                Ok(n) if n > 0 => {}
                Ok(_) => {
                    let _ = req
                        .reply
                        .send(Err("no synced standby is ready: refusing (use --force)".into()));
                    return;
                }
                Err(e) => {
                    let _ = req
                        .reply
                        .send(Err(format!("cannot check the standbys: {e} (use --force)")));
                    return;
                }
            }
        }
        tracing::info!(to = ?req.to, "handing over the validator lock");
        let value = match &req.to {
            Some(to) => serde_json::to_vec(&serde_json::json!({ "handover_to": to })).unwrap_or_default(),
            None => Vec::new(),
        };
        self.stop_neard(false).await;
        self.release(&value).await;
        self.end_session().await;
        // Let the others take it before contending again ourselves.
        self.hold_off_until = Some(Instant::now() + (self.lease.renew_interval * 4).max(Duration::from_secs(2)));
        self.set_state(State::Startup);
        let _ = req.reply.send(Ok("handed over".into()));
    }

    /// Standbys that are synced and voting: sessions other than ours named in
    /// the session list of standbys (`<key>/standby/<name>`).
    async fn synced_standbys(&self) -> Result<usize, LockError> {
        let entries = self.backend.list(&format!("{}/standby/", self.key)).await?;
        Ok(entries
            .iter()
            .filter(|(key, state)| state.session.is_some() && !key.ends_with(&format!("/{}", self.me.name)))
            .count())
    }

    async fn shutdown(&mut self) {
        tracing::info!(state = self.state.as_str(), "supervisor stopping");
        if self.state == State::Validating {
            // Planned stop: neard first, then release so the next holder starts at once.
            self.stop_neard(false).await;
            self.release(b"").await;
        } else {
            self.stop_neard(false).await;
        }
        for task in self.tasks.drain(..) {
            task.abort();
        }
        if let Some(session) = self.session.take() {
            let destroy = self.backend.destroy_session(&session);
            let _ = tokio::time::timeout(self.lease.session_ttl, destroy).await;
        }
        self.set_state(State::Shutdown);
    }

    fn spawn_renew(&mut self) {
        let (backend, events, interval) = (self.backend.clone(), self.events_tx.clone(), self.lease.renew_interval);
        // Half the holder's lease: long enough under load, short enough to try again in time.
        let lease_left = self.lease.session_ttl.saturating_sub(self.lease.fence_margin);
        let Some(session) = self.session.clone() else { return };
        let standby_key = format!("{}/standby/{}", self.key, self.me.name);
        self.tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut announced = false;
            loop {
                tick.tick().await;
                let sent_ns = lease::monotonic_ns();
                let started = std::time::Instant::now();
                // Each renew is bounded by the interval, so every tick sends a
                // fresh renew (with a fresh send time) to the current leader.
                let bound = (lease_left / 2).max(interval);
                let result = match tokio::time::timeout(bound, backend.renew_session(&session)).await {
                    Ok(result) => result,
                    Err(_) => Err(LockError::Unavailable(format!("renew timed out after {bound:?}"))),
                };
                let took = started.elapsed();
                if result.is_ok() && !announced {
                    // Say we are a standby: the holder counts these before a handover.
                    announced = backend.acquire(&standby_key, &session, b"{}").await.unwrap_or(false);
                }
                let renewed = Event::Renewed {
                    session: session.clone(),
                    sent_ns,
                    took,
                    result,
                };
                if events.send(renewed).await.is_err() {
                    return;
                }
            }
        }));
    }

    fn spawn_watch(&mut self) {
        let (backend, events, key) = (self.backend.clone(), self.events_tx.clone(), self.key.clone());
        self.tasks.push(tokio::spawn(async move {
            let mut index = 0;
            loop {
                let result = backend.watch(&key, index, WATCH_WAIT).await;
                match &result {
                    Ok(w) => index = if w.index < index { 0 } else { w.index },
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
                if events.send(Event::Watched(result)).await.is_err() {
                    return;
                }
            }
        }));
    }

    fn spawn_health(&mut self) {
        let (http, events) = (self.http.clone(), self.events_tx.clone());
        let home = self.home.clone();
        self.tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEALTH_INTERVAL);
            loop {
                tick.tick().await;
                let result = match home.rpc_addr() {
                    Ok(addr) => health(&http, &addr).await,
                    Err(e) => Err(e.to_string()),
                };
                if events.send(Event::Health(result)).await.is_err() {
                    return;
                }
            }
        }));
    }
}

/// Resolves when `neard` (if any) exits.
async fn exited(neard: &mut Option<NeardProcess>) -> String {
    match neard {
        Some(n) => n.exited().await,
        None => std::future::pending().await,
    }
}

/// The default lock key for a pool.
pub fn default_key(account_id: &str) -> String {
    format!("failoverd/validator/{account_id}")
}
