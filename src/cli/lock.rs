//! `failoverd lock PREFIX -- CMD ARGS...`: run a command only while holding
//! the lock `PREFIX/.lock`, like `consul lock`.
//!
//! ```text
//!   create session ──► acquire PREFIX/.lock ──true──► spawn CMD (FAILOVERD_LOCK_HELD=1, own process group)
//!        ▲                  │ false                          │
//!        │ session gone     ▼                                ▼ first of:
//!        └──────── blocking watch until the key   ┌─ CMD exits ────────────► release, destroy, exit with its code
//!                  has no holder (renewing the    ├─ lock lost ─┐
//!                  session every TTL/2)           └─ SIGTERM/   ├─ SIGTERM to the group, SIGKILL after --grace,
//!                                                    SIGINT ────┘  release, destroy; exit 75 (lost) or CMD's code
//! ```
//!
//! The lock is lost when a renew says the session is gone, when a watch shows
//! the key without our session, or when no renew has succeeded for
//! TTL - TTL/5. The session's TTL and the lock-delay (both 15 s by default, as
//! `consul lock`) give the stopped command time to die before anyone else can
//! take the lock: keep `--grace` at most `--lock-delay`.
//!
//! The command's stdin is /dev/null (it runs in its own process group, so
//! reading the terminal would stop it). Works with any [`LockBackend`];
//! [`run`] uses [`ConsulBackend`], which also talks to a failoverd agent's
//! Consul-compatible API.

use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::killpg;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use rand::Rng;
use tokio::process::Child;
use tokio::time::Instant;

use crate::config::EXIT_CONFIG;
use crate::lock::backend::Behavior;
use crate::lock::backend::LockBackend;
use crate::lock::backend::LockError;
use crate::lock::backend::SessionSpec;
use crate::lock::consul_backend::read_token_file;
use crate::lock::consul_backend::ConsulBackend;
use crate::lock::consul_backend::DEFAULT_CONSUL_URL;

/// Exit code after the lock was lost and the command stopped (`EX_TEMPFAIL`).
pub const EXIT_LOCK_LOST: i32 = 75;
/// Set to `1` in the command's environment.
pub const HELD_ENV: &str = "FAILOVERD_LOCK_HELD";
/// Blocking watches that return sooner than this are spaced out to it.
const MIN_WATCH_INTERVAL: Duration = Duration::from_millis(100);
/// The longest pause between retries after errors.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Arguments of `failoverd lock`.
#[derive(Debug, clap::Args)]
pub struct LockArgs {
    /// KV prefix; the lock is the key PREFIX/.lock.
    pub prefix: String,
    /// Consul-compatible HTTP API: a Consul agent or a failoverd agent.
    #[arg(long, env = "FAILOVERD_LOCK_CONSUL_URL", default_value = DEFAULT_CONSUL_URL)]
    pub consul_url: String,
    /// File with the ACL token (X-Consul-Token); re-read on SIGHUP.
    #[arg(long, env = "FAILOVERD_LOCK_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Session name.
    #[arg(long, default_value = "failoverd lock")]
    pub name: String,
    /// Session TTL; renewed every TTL/2 (Consul accepts 10s to 24h).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// After the session is invalidated, nobody may take the lock for this long (0 to 60s).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub lock_delay: Duration,
    /// Time between SIGTERM and SIGKILL when the command must stop.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

/// How `run_locked` takes and keeps the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOpts {
    /// Session name.
    pub session_name: String,
    /// Session TTL (at least 1 s); renewed every TTL/2.
    pub ttl: Duration,
    /// Lock-delay of the session.
    pub lock_delay: Duration,
    /// SIGTERM to SIGKILL.
    pub grace: Duration,
    /// Longest blocking wait of one watch (Consul's `api.Lock` uses 15 s).
    pub wait: Duration,
    /// Pause before retrying an acquire refused on a free key (a lock-delay),
    /// and the first pause after an error (doubling up to 5 s).
    pub retry: Duration,
    /// The key's value while held.
    pub value: Vec<u8>,
}

impl Default for LockOpts {
    fn default() -> Self {
        Self {
            session_name: "failoverd lock".into(),
            ttl: Duration::from_secs(15),
            lock_delay: Duration::from_secs(15),
            grace: Duration::from_secs(5),
            wait: Duration::from_secs(15),
            retry: Duration::from_secs(1),
            value: Vec::new(),
        }
    }
}

impl LockOpts {
    /// Rules between the fields.
    pub fn validate(&self) -> Result<(), String> {
        if self.ttl < Duration::from_secs(1) {
            return Err(format!("--ttl {:?}: must be at least 1s", self.ttl));
        }
        if self.wait.is_zero() || self.retry.is_zero() {
            return Err("the watch wait and the retry pause must be positive".into());
        }
        Ok(())
    }

    fn spec(&self) -> SessionSpec {
        SessionSpec {
            name: self.session_name.clone(),
            ttl: self.ttl,
            lock_delay: self.lock_delay,
            behavior: Behavior::Release,
        }
    }
}

/// Runs `failoverd lock` on its own small runtime; returns the exit code.
pub fn main(args: LockArgs) -> i32 {
    let (backend, opts) = match prepare(&args) {
        Ok(prepared) => prepared,
        Err(message) => {
            eprintln!("failoverd: {message}");
            return EXIT_CONFIG;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("failoverd: cannot start the runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(run_prepared(&args, backend, opts)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("failoverd: {e:#}");
            1
        }
    }
}

/// Runs `failoverd lock`: the command's exit code, or [`EXIT_LOCK_LOST`].
pub async fn run(args: LockArgs) -> anyhow::Result<i32> {
    let (backend, opts) = prepare(&args).map_err(anyhow::Error::msg)?;
    run_prepared(&args, backend, opts).await
}

/// Everything checked before contacting the lock service.
fn prepare(args: &LockArgs) -> Result<(ConsulBackend, LockOpts), String> {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into());
    let opts = LockOpts {
        session_name: args.name.clone(),
        ttl: args.ttl,
        lock_delay: args.lock_delay,
        grace: args.grace,
        value: serde_json::json!({ "Hostname": host, "Pid": std::process::id() })
            .to_string()
            .into_bytes(),
        ..LockOpts::default()
    };
    opts.validate()?;
    let token = match &args.token_file {
        Some(path) => read_token_file(path)?,
        None => None,
    };
    let backend = ConsulBackend::new(&args.consul_url, token, host).map_err(|e| format!("--consul-url: {e}"))?;
    Ok((backend, opts))
}

async fn run_prepared(args: &LockArgs, backend: ConsulBackend, opts: LockOpts) -> anyhow::Result<i32> {
    let reload = args
        .token_file
        .clone()
        .map(|path| tokio::spawn(reload_token_on_sighup(backend.clone(), path)));
    let result = run_locked(&backend, &args.prefix, &args.command, &opts).await;
    if let Some(task) = reload {
        task.abort();
    }
    result
}

/// Re-reads the token file on every SIGHUP; a bad file keeps the old token.
async fn reload_token_on_sighup(backend: ConsulBackend, path: PathBuf) {
    use tokio::signal::unix::signal;
    use tokio::signal::unix::SignalKind;
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot handle SIGHUP: the token file will not be re-read");
        return;
    };
    while hup.recv().await.is_some() {
        match read_token_file(&path) {
            Ok(token) => {
                backend.set_token(token);
                tracing::info!(file = %path.display(), "token file re-read");
            }
            Err(e) => tracing::warn!("{e}; keeping the old token"),
        }
    }
}

/// Holds the lock `prefix/.lock` while `cmd` runs, until SIGTERM/SIGINT.
pub async fn run_locked<B: LockBackend>(
    backend: &B,
    prefix: &str,
    cmd: &[String],
    opts: &LockOpts,
) -> anyhow::Result<i32> {
    run_locked_until(backend, prefix, cmd, opts, crate::signal::shutdown()).await
}

/// [`run_locked`] with the stop request as a future resolving to a signal
/// name (`"SIGTERM"`, `"SIGINT"`): exits 128+signal while waiting, or with the
/// command's code after stopping it.
pub async fn run_locked_until<B: LockBackend>(
    backend: &B,
    prefix: &str,
    cmd: &[String],
    opts: &LockOpts,
    shutdown: impl Future<Output = &'static str>,
) -> anyhow::Result<i32> {
    opts.validate().map_err(anyhow::Error::msg)?;
    let Some((program, program_args)) = cmd.split_first() else {
        anyhow::bail!("no command to run");
    };
    let prefix = prefix.trim_matches('/');
    anyhow::ensure!(!prefix.is_empty(), "the lock prefix is empty");
    let key = format!("{prefix}/.lock");
    if opts.grace > opts.lock_delay {
        tracing::warn!(
            "--grace {:?} exceeds --lock-delay {:?}: after a lost lock the next holder may start before this command is killed",
            opts.grace,
            opts.lock_delay
        );
    }
    tokio::pin!(shutdown);

    let mut session = None;
    let waited = tokio::select! {
        r = acquire(backend, &key, opts, &mut session) => r.map_err(Waited::Failed),
        sig = &mut shutdown => Err(Waited::Signal(sig)),
    };
    let mut clock = match (waited, session) {
        (Ok(()), Some(clock)) => clock,
        (Ok(()), None) => anyhow::bail!("acquired {key} without a session"),
        (Err(waited), session) => {
            cleanup(backend, &key, session.as_ref()).await;
            return match waited {
                Waited::Failed(e) => Err(anyhow::Error::new(e).context(format!("acquiring {key}"))),
                Waited::Signal(sig) => {
                    tracing::info!(key, "{sig} while waiting for the lock");
                    Ok(signal_exit_code(sig))
                }
            };
        }
    };

    let mut command = tokio::process::Command::new(program);
    command
        .args(program_args)
        .env(HELD_ENV, "1")
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            cleanup(backend, &key, Some(&clock)).await;
            anyhow::bail!("cannot run {program:?}: {e}");
        }
    };
    let group = child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw);
    tracing::info!(key, session = %clock.id, pid = ?child.id(), "lock acquired; command started");

    let ended = tokio::select! {
        status = child.wait() => Ended::Exited(status),
        reason = monitor(backend, &key, &mut clock, opts) => Ended::Lost(reason),
        sig = &mut shutdown => Ended::Signal(sig),
    };
    let code = match ended {
        Ended::Exited(Ok(status)) => {
            tracing::info!(key, %status, "command exited");
            Ok(exit_code(status))
        }
        Ended::Exited(Err(e)) => {
            // Its state is unknown: make sure it is gone before the lock is released.
            signal_group(group, Signal::SIGKILL);
            Err(anyhow::Error::new(e).context("waiting for the command"))
        }
        Ended::Lost(reason) => {
            tracing::error!(key, "lock lost: {reason}; stopping the command");
            let status = terminate(&mut child, group, opts.grace).await;
            tracing::info!(key, status = ?status, "command stopped");
            Ok(EXIT_LOCK_LOST)
        }
        Ended::Signal(sig) => {
            tracing::info!(key, "{sig}: stopping the command");
            let status = terminate(&mut child, group, opts.grace).await;
            Ok(status.map_or(1, exit_code))
        }
    };
    cleanup(backend, &key, Some(&clock)).await;
    code
}

/// Why the wait for the lock ended early.
enum Waited {
    Failed(LockError),
    Signal(&'static str),
}

/// Why the command stopped running under the lock.
enum Ended {
    Exited(std::io::Result<ExitStatus>),
    Lost(String),
    Signal(&'static str),
}

/// A session and when it was last confirmed alive.
struct SessionClock {
    id: String,
    ttl: Duration,
    /// When the last successful create or renew was sent: the server will not
    /// invalidate the session before this + TTL.
    renewed_at: Instant,
}

impl SessionClock {
    fn next_renew(&self) -> Instant {
        self.renewed_at + self.ttl / 2
    }

    /// After this, the session may be gone without us being told.
    fn deadline(&self) -> Instant {
        self.renewed_at + self.ttl - self.ttl / 5
    }

    fn renewed(&mut self, sent: Instant, ttl: Duration) {
        self.renewed_at = sent;
        // The server may raise the TTL; zero means "no TTL", keep ours for pacing.
        if !ttl.is_zero() {
            self.ttl = ttl;
        }
    }
}

/// Takes the lock: creates (or re-creates) the session, acquires, and between
/// refused acquires waits on the key. Returns only non-retryable errors.
async fn acquire<B: LockBackend>(
    backend: &B,
    key: &str,
    opts: &LockOpts,
    session: &mut Option<SessionClock>,
) -> Result<(), LockError> {
    let mut backoff = Backoff::new(opts.retry);
    let mut announced = false;
    loop {
        match try_acquire(backend, key, opts, session, &mut announced).await {
            Ok(true) => return Ok(()),
            Ok(false) => backoff.reset(),
            Err(LockError::SessionNotFound(id)) => {
                tracing::warn!(session = %id, "session gone; creating a new one");
                *session = None;
            }
            Err(e) if e.retryable() => {
                let pause = backoff.next_pause();
                tracing::warn!(key, "{e}; retrying in {pause:?}");
                tokio::time::sleep(pause).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One acquire; if refused, waits until the key looks free. `Ok(true)`: held.
async fn try_acquire<B: LockBackend>(
    backend: &B,
    key: &str,
    opts: &LockOpts,
    session: &mut Option<SessionClock>,
    announced: &mut bool,
) -> Result<bool, LockError> {
    let id = ensure_session(backend, opts, session).await?;
    if backend.acquire(key, &id, &opts.value).await? {
        return Ok(true);
    }
    let mut index = 0;
    let mut saw_holder = false;
    loop {
        let id = ensure_session(backend, opts, session).await?;
        let until_renew = session
            .as_ref()
            .map_or(opts.wait, |c| c.next_renew().saturating_duration_since(Instant::now()));
        let started = Instant::now();
        let watched = backend
            .watch(key, index, opts.wait.min(until_renew).max(MIN_WATCH_INTERVAL))
            .await?;
        match watched.key.and_then(|k| k.session) {
            Some(holder) if holder != id => {
                if !*announced {
                    tracing::info!(key, holder, "lock held by another session; waiting");
                    *announced = true;
                }
                saw_holder = true;
                index = watched.index;
                pace(started).await;
            }
            _ => {
                // Free from the first look: the refusal was a lock-delay (or a
                // lost race); do not hot-loop on acquire.
                if !saw_holder {
                    tokio::time::sleep(opts.retry).await;
                }
                return Ok(false);
            }
        }
    }
}

/// The session id: creates a session if there is none, renews it when due.
async fn ensure_session<B: LockBackend>(
    backend: &B,
    opts: &LockOpts,
    session: &mut Option<SessionClock>,
) -> Result<String, LockError> {
    if let Some(clock) = session.as_mut() {
        if Instant::now() < clock.next_renew() {
            return Ok(clock.id.clone());
        }
        let sent = Instant::now();
        match backend.renew_session(&clock.id).await {
            Ok(ttl) => {
                clock.renewed(sent, ttl);
                return Ok(clock.id.clone());
            }
            Err(LockError::SessionNotFound(id)) => {
                tracing::warn!(session = %id, "session gone while waiting; creating a new one");
                *session = None;
            }
            Err(e) => return Err(e),
        }
    }
    let sent = Instant::now();
    let id = backend.create_session(&opts.spec()).await?;
    tracing::debug!(session = %id, "session created");
    *session = Some(SessionClock {
        id: id.clone(),
        ttl: opts.ttl,
        renewed_at: sent,
    });
    Ok(id)
}

/// Resolves with the reason once the lock is lost.
async fn monitor<B: LockBackend>(backend: &B, key: &str, clock: &mut SessionClock, opts: &LockOpts) -> String {
    let id = clock.id.clone();
    tokio::select! {
        reason = keep_renewed(backend, clock) => reason,
        reason = watch_holder(backend, key, &id, opts) => reason,
    }
}

/// Renews every TTL/2, retrying failures, until the session is gone or no
/// renew has succeeded for TTL - TTL/5.
async fn keep_renewed<B: LockBackend>(backend: &B, clock: &mut SessionClock) -> String {
    let mut next = clock.next_renew();
    loop {
        let deadline = clock.deadline();
        tokio::time::sleep_until(next.min(deadline)).await;
        if Instant::now() >= deadline {
            return format!(
                "no renew of session {} succeeded for {:?}",
                clock.id,
                clock.renewed_at.elapsed()
            );
        }
        let sent = Instant::now();
        match tokio::time::timeout_at(deadline, backend.renew_session(&clock.id)).await {
            Err(_) => {}
            Ok(Ok(ttl)) => {
                clock.renewed(sent, ttl);
                next = clock.next_renew();
            }
            Ok(Err(LockError::SessionNotFound(_))) => {
                return format!("session {} expired or was destroyed", clock.id);
            }
            Ok(Err(e)) if e.retryable() => {
                let pause = (clock.ttl / 10).min(Duration::from_secs(1));
                tracing::warn!(session = %clock.id, "renew failed: {e}; retrying in {pause:?}");
                next = Instant::now() + pause;
            }
            Ok(Err(e)) => return format!("renew of session {} refused: {e}", clock.id),
        }
    }
}

/// Watches the key until it is no longer held by `id`.
async fn watch_holder<B: LockBackend>(backend: &B, key: &str, id: &str, opts: &LockOpts) -> String {
    let mut index = 0;
    loop {
        let started = Instant::now();
        match backend.watch(key, index, opts.wait).await {
            Ok(watched) => {
                match watched.key.map(|k| k.session) {
                    None => return format!("{key} was deleted"),
                    Some(None) => return format!("{key} was released or its session {id} invalidated"),
                    Some(Some(holder)) if holder != id => return format!("{key} is now held by session {holder}"),
                    Some(Some(_)) => {}
                }
                index = watched.index;
                pace(started).await;
            }
            Err(e) if e.retryable() => {
                tracing::warn!(key, "watch failed: {e}; retrying in {:?}", opts.retry);
                tokio::time::sleep(opts.retry).await;
            }
            Err(e) => return format!("watching {key}: {e}"),
        }
    }
}

/// Spaces out watches that return at once (Consul asks clients to rate-limit).
async fn pace(started: Instant) {
    tokio::time::sleep_until(started + MIN_WATCH_INTERVAL).await;
}

/// Best effort: release the key (no lock-delay) and destroy the session.
async fn cleanup<B: LockBackend>(backend: &B, key: &str, session: Option<&SessionClock>) {
    let Some(clock) = session else {
        return;
    };
    match backend.release(key, &clock.id, b"").await {
        Ok(_) | Err(LockError::SessionNotFound(_)) => {}
        Err(e) => tracing::warn!(key, "release failed: {e}"),
    }
    if let Err(e) = backend.destroy_session(&clock.id).await {
        tracing::warn!(session = %clock.id, "destroy failed: {e}; the session ends with its TTL");
    }
}

/// SIGTERM to the command's process group, SIGKILL after `grace`; reaps the
/// command, then SIGKILLs whatever of its group is left.
async fn terminate(child: &mut Child, group: Option<Pid>, grace: Duration) -> std::io::Result<ExitStatus> {
    signal_group(group, Signal::SIGTERM);
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            tracing::warn!("command still running {grace:?} after SIGTERM; sending SIGKILL");
            signal_group(group, Signal::SIGKILL);
            child.wait().await
        }
    };
    signal_group(group, Signal::SIGKILL);
    status
}

fn signal_group(group: Option<Pid>, signal: Signal) {
    if let Some(group) = group {
        // ESRCH: the group is already gone.
        let _ = killpg(group, signal);
    }
}

/// The shell's convention: the exit code, or 128 + the killing signal.
fn exit_code(status: ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

fn signal_exit_code(name: &str) -> i32 {
    match name {
        "SIGINT" => 128 + Signal::SIGINT as i32,
        "SIGTERM" => 128 + Signal::SIGTERM as i32,
        _ => 1,
    }
}

/// Exponential pauses with ±20% jitter, from `first` doubling to [`MAX_BACKOFF`].
struct Backoff {
    first: Duration,
    next: Duration,
}

impl Backoff {
    fn new(first: Duration) -> Self {
        Self { first, next: first }
    }

    fn next_pause(&mut self) -> Duration {
        let pause = self.next.min(MAX_BACKOFF);
        self.next = (self.next * 2).min(MAX_BACKOFF);
        pause.mul_f64(rand::thread_rng().gen_range(0.8..1.2))
    }

    fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
#[path = "lock_tests.rs"]
mod tests;
