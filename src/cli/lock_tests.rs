//! Tests of `failoverd lock` over an in-memory fake `LockBackend`, with real child processes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use clap::Parser;

use super::*;
use crate::lock::backend::KeyState;
use crate::lock::backend::Watched;

#[derive(Default)]
struct Data {
    next_id: u64,
    index: u64,
    sessions: HashMap<String, Duration>,
    keys: HashMap<String, KeyState>,
    acquires: usize,
    /// Refuse this many acquires on a free key (a lock-delay).
    refuse: usize,
    fail_renew: bool,
}

/// An in-memory lock service with Consul's rules (no TTL timers: tests
/// invalidate sessions by hand).
struct FakeLock {
    data: Mutex<Data>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl FakeLock {
    fn new() -> Self {
        Self {
            data: Mutex::new(Data::default()),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Data) -> R) -> R {
        f(&mut self.data.lock().unwrap())
    }

    /// Bumps the index and wakes watchers.
    fn bump(&self, data: &mut Data) -> u64 {
        data.index += 1;
        self.changed.send_replace(data.index);
        data.index
    }

    /// Invalidates a session as a TTL expiry would (behavior release).
    fn invalidate(&self, id: &str) {
        let mut data = self.data.lock().unwrap();
        data.sessions.remove(id);
        let index = data.index + 1;
        for entry in data.keys.values_mut().filter(|e| e.session.as_deref() == Some(id)) {
            entry.session = None;
            entry.modify_index = index;
        }
        self.bump(&mut data);
    }

    fn holder(&self, key: &str) -> Option<String> {
        self.with(|d| d.keys.get(key).and_then(|e| e.session.clone()))
    }
}

impl LockBackend for FakeLock {
    async fn create_session(&self, spec: &SessionSpec) -> Result<String, LockError> {
        let mut data = self.data.lock().unwrap();
        data.next_id += 1;
        let id = format!("s{}", data.next_id);
        data.sessions.insert(id.clone(), spec.ttl);
        Ok(id)
    }

    async fn renew_session(&self, id: &str) -> Result<Duration, LockError> {
        let data = self.data.lock().unwrap();
        if data.fail_renew {
            return Err(LockError::Unavailable("renews are failing".into()));
        }
        data.sessions
            .get(id)
            .copied()
            .ok_or_else(|| LockError::SessionNotFound(id.into()))
    }

    async fn destroy_session(&self, id: &str) -> Result<(), LockError> {
        self.invalidate(id);
        Ok(())
    }

    async fn acquire(&self, key: &str, session: &str, value: &[u8]) -> Result<bool, LockError> {
        let mut data = self.data.lock().unwrap();
        data.acquires += 1;
        if !data.sessions.contains_key(session) {
            return Err(LockError::SessionNotFound(session.into()));
        }
        let mut entry = data.keys.get(key).cloned().unwrap_or_default();
        match entry.session.as_deref() {
            Some(holder) if holder != session => return Ok(false),
            Some(_) => {}
            None if data.refuse > 0 => {
                data.refuse -= 1;
                return Ok(false);
            }
            None => entry.lock_index += 1,
        }
        entry.session = Some(session.into());
        entry.value = value.to_vec();
        entry.modify_index = self.bump(&mut data);
        data.keys.insert(key.into(), entry);
        Ok(true)
    }

    async fn release(&self, key: &str, session: &str, value: &[u8]) -> Result<bool, LockError> {
        let mut data = self.data.lock().unwrap();
        let index = data.index + 1;
        let Some(entry) = data.keys.get_mut(key).filter(|e| e.session.as_deref() == Some(session)) else {
            return Ok(false);
        };
        entry.session = None;
        entry.value = value.to_vec();
        entry.modify_index = index;
        self.bump(&mut data);
        Ok(true)
    }

    async fn list(&self, _prefix: &str) -> Result<Vec<(String, crate::lock::backend::KeyState)>, LockError> {
        Ok(Vec::new())
    }

    async fn watch(&self, key: &str, index: u64, wait: Duration) -> Result<Watched, LockError> {
        if index > 0 {
            let mut changed = self.changed.subscribe();
            let _ = tokio::time::timeout(wait, changed.wait_for(|i| *i > index)).await;
        }
        let data = self.data.lock().unwrap();
        Ok(Watched {
            index: data.index.max(1),
            key: data.keys.get(key).cloned(),
        })
    }
}

const KEY: &str = "svc/.lock";
/// Upper bound of every test.
const BOUND: Duration = Duration::from_secs(30);

fn opts() -> LockOpts {
    LockOpts {
        ttl: Duration::from_secs(2),
        lock_delay: Duration::ZERO,
        grace: Duration::from_secs(1),
        wait: Duration::from_secs(1),
        retry: Duration::from_millis(100),
        ..LockOpts::default()
    }
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

fn never() -> std::future::Pending<&'static str> {
    std::future::pending()
}

async fn wait_for_file(path: &Path) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !path.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} never appeared", path.display()));
}

async fn bounded<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, fut).await.expect("test took too long")
}

/// The command sees FAILOVERD_LOCK_HELD=1, its exit code comes back, and the key and session are cleaned up.
#[tokio::test]
async fn child_exit_code_propagates_and_lock_is_cleaned_up() {
    let fake = FakeLock::new();
    let cmd = sh(r#"test "$FAILOVERD_LOCK_HELD" = 1 || exit 99; exit 7"#);
    let code = bounded(run_locked_until(&fake, "/svc/", &cmd, &opts(), never()))
        .await
        .unwrap();
    assert_eq!(code, 7);
    assert_eq!(fake.holder(KEY), None);
    assert!(fake.with(|d| d.sessions.is_empty()));
    assert_eq!(fake.with(|d| d.keys[KEY].lock_index), 1);
}

/// A second contender blocks (on watches, not polling) until the first releases; the commands never overlap.
#[tokio::test]
async fn second_contender_waits_until_the_first_releases() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let script = |name: &str, code: i32| {
        let log = log.display();
        sh(&format!(
            "echo {name}-start-$FAILOVERD_LOCK_HELD >> {log}; sleep 0.7; echo {name}-end >> {log}; exit {code}"
        ))
    };
    let (a_cmd, b_cmd) = (script("a", 0), script("b", 3));
    let fake = FakeLock::new();
    let o = opts();
    let first = run_locked_until(&fake, "svc", &a_cmd, &o, never());
    let second = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        run_locked_until(&fake, "svc", &b_cmd, &o, never()).await
    };
    let observer = async {
        let lines = || std::fs::read_to_string(&log).unwrap_or_default();
        while !lines().contains("a-start") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let a_holder = fake.holder(KEY).expect("a holds the key while its command runs");
        while !lines().contains("b-start") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let b_holder = fake.holder(KEY).expect("b holds the key while its command runs");
        assert_ne!(a_holder, b_holder);
    };
    let (a, b, ()) = bounded(async { tokio::join!(first, second, observer) }).await;
    assert_eq!((a.unwrap(), b.unwrap()), (0, 3));
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(lines, "a-start-1\na-end\nb-start-1\nb-end\n");
    assert!(
        fake.with(|d| d.acquires) <= 4,
        "acquires: {}",
        fake.with(|d| d.acquires)
    );
    assert_eq!(fake.holder(KEY), None);
}

/// Losing the session stops a command that ignores SIGTERM with SIGKILL after the grace period.
#[tokio::test]
async fn lost_session_kills_a_child_that_ignores_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let cmd = sh(&format!("trap '' TERM; touch {}; sleep 30", ready.display()));
    let fake = FakeLock::new();
    let o = opts();
    let run = run_locked_until(&fake, "svc", &cmd, &o, never());
    let lose = async {
        wait_for_file(&ready).await;
        let session = fake.holder(KEY).unwrap();
        fake.invalidate(&session);
        Instant::now()
    };
    let (code, lost_at) = bounded(async { tokio::join!(run, lose) }).await;
    let took = lost_at.elapsed();
    assert_eq!(code.unwrap(), EXIT_LOCK_LOST);
    assert!(took >= o.grace, "SIGKILL must wait for the grace period: {took:?}");
    assert!(took < o.grace + Duration::from_secs(3), "{took:?}");
}

/// When another session takes the key, the command gets SIGTERM first and may exit cleanly before the grace ends.
#[tokio::test]
async fn lock_taken_by_another_session_sends_sigterm_first() {
    let dir = tempfile::tempdir().unwrap();
    let (ready, termed) = (dir.path().join("ready"), dir.path().join("termed"));
    let cmd = sh(&format!(
        "trap 'touch {}; exit 0' TERM; touch {}; sleep 30 & wait",
        termed.display(),
        ready.display()
    ));
    let fake = FakeLock::new();
    let o = LockOpts {
        grace: Duration::from_secs(10),
        lock_delay: Duration::from_secs(10),
        ..opts()
    };
    let run = run_locked_until(&fake, "svc", &cmd, &o, never());
    let steal = async {
        wait_for_file(&ready).await;
        fake.with(|d| {
            d.keys.get_mut(KEY).unwrap().session = Some("intruder".into());
            fake.bump(d);
        });
        Instant::now()
    };
    let (code, stolen_at) = bounded(async { tokio::join!(run, steal) }).await;
    assert_eq!(code.unwrap(), EXIT_LOCK_LOST);
    assert!(stolen_at.elapsed() < Duration::from_secs(3));
    assert!(termed.exists(), "the command got SIGTERM");
    assert_eq!(
        fake.holder(KEY).as_deref(),
        Some("intruder"),
        "someone else's lock is not released"
    );
}

/// Renews failing for TTL - TTL/5 stop the command even though the service never said the session is gone.
#[tokio::test]
async fn renew_failures_past_the_deadline_stop_the_child() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let cmd = sh(&format!("touch {}; exec sleep 30", ready.display()));
    let fake = FakeLock::new();
    let o = opts();
    let run = run_locked_until(&fake, "svc", &cmd, &o, never());
    let fail = async {
        wait_for_file(&ready).await;
        fake.with(|d| d.fail_renew = true);
        Instant::now()
    };
    let (code, failing_since) = bounded(async { tokio::join!(run, fail) }).await;
    assert_eq!(code.unwrap(), EXIT_LOCK_LOST);
    assert!(failing_since.elapsed() < o.ttl + Duration::from_secs(2));
}

/// SIGTERM/SIGINT to `failoverd lock` stops the command, releases the key and destroys the session.
#[tokio::test]
async fn shutdown_stops_the_child_and_releases() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let cmd = sh(&format!("touch {}; sleep 30", ready.display()));
    let fake = FakeLock::new();
    let signal = async {
        wait_for_file(&ready).await;
        "SIGTERM"
    };
    let code = bounded(run_locked_until(&fake, "svc", &cmd, &opts(), signal))
        .await
        .unwrap();
    assert_eq!(code, 128 + 15);
    assert_eq!(fake.holder(KEY), None);
    assert!(fake.with(|d| d.sessions.is_empty()));
}

/// A signal while waiting for the lock exits 128+signal without running the command, leaving the holder alone.
#[tokio::test]
async fn shutdown_while_waiting_never_runs_the_child() {
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    let fake = FakeLock::new();
    let other = fake.create_session(&opts().spec()).await.unwrap();
    assert!(fake.acquire(KEY, &other, b"").await.unwrap());
    let cmd = sh(&format!("touch {}", ran.display()));
    let signal = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        "SIGINT"
    };
    let code = bounded(run_locked_until(&fake, "svc", &cmd, &opts(), signal))
        .await
        .unwrap();
    assert_eq!(code, 130);
    assert!(!ran.exists());
    assert_eq!(fake.holder(KEY), Some(other.clone()));
    assert_eq!(
        fake.with(|d| d.sessions.keys().cloned().collect::<Vec<_>>()),
        vec![other]
    );
}

/// Acquires refused on a free key (lock-delay) are retried after a pause, not in a hot loop.
#[tokio::test]
async fn lock_delay_refusals_are_retried_after_a_pause() {
    let fake = FakeLock::new();
    fake.with(|d| d.refuse = 2);
    let started = Instant::now();
    let code = bounded(run_locked_until(&fake, "svc", &sh("exit 0"), &opts(), never()))
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert_eq!(fake.with(|d| d.acquires), 3);
    assert!(started.elapsed() >= 2 * opts().retry);
}

/// A session that vanished while waiting is replaced by a new one.
#[tokio::test]
async fn a_session_lost_while_waiting_is_recreated() {
    let fake = FakeLock::new();
    let other = fake.create_session(&opts().spec()).await.unwrap();
    assert!(fake.acquire(KEY, &other, b"").await.unwrap());
    let release = async {
        // Our session is s2; drop it while we wait, then free the key.
        tokio::time::sleep(Duration::from_millis(300)).await;
        fake.invalidate("s2");
        tokio::time::sleep(Duration::from_millis(300)).await;
        fake.invalidate(&other);
    };
    let (cmd, o) = (sh("exit 0"), opts());
    let run = run_locked_until(&fake, "svc", &cmd, &o, never());
    let (code, ()) = bounded(async { tokio::join!(run, release) }).await;
    assert_eq!(code.unwrap(), 0);
    assert_eq!(fake.with(|d| d.keys[KEY].lock_index), 2);
    assert!(fake.with(|d| d.next_id) >= 3, "a new session was created");
}

/// A command that cannot be started is an error, and the lock is not left behind.
#[tokio::test]
async fn unstartable_command_is_an_error_and_releases() {
    let fake = FakeLock::new();
    let cmd = vec!["/nonexistent/failoverd-test-binary".to_string()];
    let err = bounded(run_locked_until(&fake, "svc", &cmd, &opts(), never()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot run"), "{err:#}");
    assert_eq!(fake.holder(KEY), None);
    assert!(fake.with(|d| d.sessions.is_empty()));
}

/// Bad inputs are refused before any session is made.
#[tokio::test]
async fn bad_inputs_are_refused() {
    let fake = FakeLock::new();
    assert!(run_locked_until(&fake, "svc", &[], &opts(), never()).await.is_err());
    assert!(run_locked_until(&fake, "/", &sh("true"), &opts(), never())
        .await
        .is_err());
    let short = LockOpts {
        ttl: Duration::from_millis(10),
        ..opts()
    };
    assert!(run_locked_until(&fake, "svc", &sh("true"), &short, never())
        .await
        .is_err());
    assert_eq!(fake.with(|d| d.next_id), 0);
}

#[derive(Debug, Parser)]
struct TestCli {
    #[command(flatten)]
    args: LockArgs,
}

/// The command line: prefix, durations, defaults, and the command after `--`.
#[test]
fn args_parse_like_consul_lock() {
    let cli = TestCli::try_parse_from([
        "t", "svc", "--ttl", "20s", "--grace", "500ms", "--", "sh", "-c", "exit 3",
    ])
    .unwrap();
    let a = cli.args;
    assert_eq!(a.prefix, "svc");
    assert_eq!(a.command, ["sh", "-c", "exit 3"]);
    assert_eq!((a.ttl, a.grace), (Duration::from_secs(20), Duration::from_millis(500)));
    assert_eq!(a.lock_delay, Duration::from_secs(15));
    assert_eq!(a.name, "failoverd lock");
    if std::env::var_os("FAILOVERD_LOCK_CONSUL_URL").is_none() {
        assert_eq!(a.consul_url, DEFAULT_CONSUL_URL);
    }
    assert!(TestCli::try_parse_from(["t", "svc"]).is_err(), "a command is required");
    let (_, opts) = prepare(&a).unwrap();
    assert_eq!(opts.ttl, Duration::from_secs(20));
    let value: serde_json::Value = serde_json::from_slice(&opts.value).unwrap();
    assert_eq!(value["Pid"], std::process::id());
}

/// Exit statuses map like a shell's `$?`.
#[test]
fn exit_codes_follow_the_shell() {
    assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
    assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    assert_eq!(signal_exit_code("SIGTERM"), 143);
    assert_eq!(signal_exit_code("SIGINT"), 130);
}
