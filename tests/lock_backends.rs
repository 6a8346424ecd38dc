//! One contract, two `LockBackend`s: the same scenario runs against the raft
//! backend (in-process agents, the lock service called directly) and against
//! the consul backend (an HTTP client pointed at another failoverd cluster's
//! Consul-compatible API).

mod common;

use std::time::Duration;
use std::time::Instant;

use failoverd::agent::Agent;
use failoverd::config::ArgSource;
use failoverd::config::ConfigArgs;
use failoverd::lock::backend::Behavior;
use failoverd::lock::backend::LockBackend;
use failoverd::lock::backend::LockError;
use failoverd::lock::backend::SessionSpec;
use failoverd::lock::consul_backend::ConsulBackend;
use failoverd::lock::raft_backend::RaftBackend;

const KEY: &str = "failoverd/validator/pool.test";
const TTL: Duration = Duration::from_secs(2);
const DELAY: Duration = Duration::from_secs(2);

fn spec(name: &str) -> SessionSpec {
    SessionSpec {
        name: name.into(),
        ttl: TTL,
        lock_delay: DELAY,
        behavior: Behavior::Release,
    }
}

/// Acquire, contend, renew past the TTL, lose the lock by not renewing, honour
/// the lock-delay, hand over, release: the behaviour every backend must share.
async fn lock_contract<B: LockBackend>(backend: &B) {
    let a = backend.create_session(&spec("a")).await.expect("create a");
    let b = backend.create_session(&spec("b")).await.expect("create b");
    assert!(
        backend.acquire(KEY, &a, b"a").await.expect("acquire a"),
        "a takes the free lock"
    );
    assert!(
        !backend.acquire(KEY, &b, b"b").await.expect("acquire b"),
        "b cannot take a held lock"
    );
    let held = backend.watch(KEY, 0, Duration::ZERO).await.expect("watch");
    let state = held.key.expect("the key exists");
    assert_eq!(state.session.as_deref(), Some(a.as_str()));
    assert_eq!((state.lock_index, state.value.as_slice()), (1, b"a".as_slice()));

    // Renewed well inside its TTL, `a` keeps the lock for several TTLs.
    let until = Instant::now() + TTL * 3;
    let mut last_renew = Instant::now();
    while Instant::now() < until {
        last_renew = Instant::now();
        let ttl = backend.renew_session(&a).await.expect("renew a");
        assert!(ttl >= TTL, "the TTL in force is at least the one asked for: {ttl:?}");
        backend.renew_session(&b).await.expect("renew b");
        tokio::time::sleep(TTL / 4).await;
    }
    let still = backend
        .watch(KEY, 0, Duration::ZERO)
        .await
        .expect("watch")
        .key
        .expect("key");
    assert_eq!(
        still.session.as_deref(),
        Some(a.as_str()),
        "renewed in time, a still holds"
    );

    // `a` stops renewing: it loses the session and the lock, and the key waits
    // out the lock-delay before `b` may take it.
    backend.renew_session(&b).await.expect("renew b");
    // Watching the key (not renewing, which would keep `a` alive) until it is free.
    let lost = loop {
        let key = backend
            .watch(KEY, 0, Duration::ZERO)
            .await
            .expect("watch")
            .key
            .expect("key");
        if key.session.is_none() {
            break Instant::now();
        }
        assert_eq!(key.session.as_deref(), Some(a.as_str()));
        assert!(last_renew.elapsed() < TTL * 10, "a never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        matches!(backend.renew_session(&a).await, Err(LockError::SessionNotFound(_))),
        "a is gone"
    );
    assert!(
        lost.duration_since(last_renew) >= TTL,
        "a expired {:?} after its last renew",
        lost - last_renew
    );
    let mut taken = None;
    let deadline = Instant::now() + TTL * 10;
    while taken.is_none() {
        backend.renew_session(&b).await.expect("renew b");
        if backend.acquire(KEY, &b, b"b").await.expect("acquire b") {
            taken = Some(Instant::now());
        }
        assert!(Instant::now() < deadline, "b never got the lock");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let now = backend
        .watch(KEY, 0, Duration::ZERO)
        .await
        .expect("watch")
        .key
        .expect("key");
    assert_eq!(now.session.as_deref(), Some(b.as_str()));
    assert_eq!(now.lock_index, 2, "a new holder is a new LockIndex");

    // A blocking watch returns when the key changes: `b` releases (no delay).
    let index = now.modify_index;
    let watcher = async { backend.watch(KEY, index, Duration::from_secs(30)).await };
    let releaser = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        backend.release(KEY, &b, b"released").await
    };
    let (watched, released) = tokio::join!(watcher, releaser);
    assert!(released.expect("release"), "the holder releases");
    let watched = watched.expect("watch");
    assert!(watched.index > index, "the watch saw the release");
    let key = watched.key.expect("key");
    assert_eq!((key.session, key.value.as_slice()), (None, b"released".as_slice()));
    backend.destroy_session(&b).await.expect("destroy b");
    assert!(matches!(
        backend.renew_session(&b).await,
        Err(LockError::SessionNotFound(_))
    ));
}

struct NoArgs;

impl ArgSource for NoArgs {
    fn source(&self, _: &str) -> Option<String> {
        None
    }
}

/// The raft backend: three agents in this process over real gRPC on loopback;
/// the backend runs on a follower, so every call is forwarded to the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_backend_keeps_the_lock_contract() {
    let cluster = common::Cluster::new(&["validator", "validator", "arbiter"]);
    let mut agents = Vec::new();
    for a in &cluster.agents {
        let args = ConfigArgs {
            config: Some(a.config.clone()),
            ..Default::default()
        };
        let cfg = failoverd::config::load(&args, &NoArgs).expect("config");
        let prepared = failoverd::agent::prepare(cfg).expect("prepare");
        agents.push(Agent::start(prepared).await.expect("start"));
    }
    let deadline = Instant::now() + common::PATIENCE;
    let follower = loop {
        let metrics: Vec<_> = agents
            .iter()
            .map(|a| a.node.as_ref().expect("raft").raft().metrics().borrow().clone())
            .collect();
        let leaders: Vec<_> = metrics.iter().map(|m| m.current_leader).collect();
        if leaders.iter().all(|l| l.is_some() && *l == leaders[0]) {
            break metrics
                .iter()
                .position(|m| Some(m.id) != m.current_leader)
                .expect("a follower");
        }
        assert!(Instant::now() < deadline, "no leader: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let lock = agents[follower].lock.clone().expect("lock service");
    lock_contract(&RaftBackend::new(lock, "node".into())).await;
    for agent in agents {
        agent.stop().await;
    }
}

/// The consul backend: an HTTP client of another failoverd cluster's
/// Consul-compatible API (a follower's), exactly as it would use a real Consul.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_backend_keeps_the_lock_contract() {
    let mut cluster = common::Cluster::new(&["validator", "validator", "arbiter"]);
    for i in 0..3 {
        cluster.agents[i].extra_toml = String::new();
        cluster.write_config(i);
        // The contract uses a 2 s TTL; Consul's default minimum is 10 s.
        let text = std::fs::read_to_string(&cluster.agents[i].config).expect("config");
        let text = text.replace("[consul_api]\n", "[consul_api]\nsession_ttl_min = \"1s\"\n");
        std::fs::write(&cluster.agents[i].config, text).expect("config");
        cluster.start(i);
    }
    let leader = cluster.wait_leader(&[0, 1, 2]).await;
    let follower = (leader + 1) % 3;
    let url = format!("http://{}", cluster.agents[follower].consul_addr);
    let backend = ConsulBackend::new(&url, None, "node".into()).expect("backend");
    lock_contract(&backend).await;
}
