//! An existing Consul client library, used unmodified, against a real failoverd
//! cluster: py-consul (the maintained fork of python-consul, as Patroni uses)
//! runs `tests/consul_client/test_client.py` against the Consul-compatible API of
//! the raft leader and of a follower. The script creates sessions, acquires,
//! renews, watches with a blocking query on the follower, releases, destroys,
//! and reads status and `agent/self`; see its header for the full list.
//!
//! Needs `python3` with py-consul (`.ci/run` installs the pinned version). When
//! either is missing the test prints `skipping: <reason>` and passes, unless
//! `FAILOVERD_REQUIRE_CONSUL_CLIENT=1`, in which case it fails.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::PATIENCE;

/// Two validators and an arbiter, the shape failoverd is deployed in.
const ROLES: [&str; 3] = ["validator", "validator", "arbiter"];
/// Indexes of the three agents.
const ALL: [usize; 3] = [0, 1, 2];
/// Upper bound for the whole script (it needs about 10 s: a 5 s lock-delay, one blocking wait).
const SCRIPT_LIMIT: Duration = Duration::from_secs(300);
/// The script's exit status when py-consul cannot be imported.
const EXIT_NO_LIBRARY: i32 = 77;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/consul_client/test_client.py")
}

/// Skips (returns) with `reason`, or fails when `FAILOVERD_REQUIRE_CONSUL_CLIENT=1`.
fn skip(reason: &str) {
    if std::env::var("FAILOVERD_REQUIRE_CONSUL_CLIENT").as_deref() == Ok("1") {
        panic!("FAILOVERD_REQUIRE_CONSUL_CLIENT=1 but {reason}");
    }
    println!("skipping: {reason}");
}

/// The installed py-consul version, or why it cannot be used.
fn py_consul_version() -> Result<String, String> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import consul, consul.std; print(getattr(consul, '__version__', '?'))",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or("").trim().to_string();
        return Err(format!("py-consul is not importable by python3 ({last})"));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Waits until something accepts TCP connections on `addr`.
fn wait_listening(addr: &str) {
    let deadline = Instant::now() + PATIENCE;
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the script with `env`, bounded by [`SCRIPT_LIMIT`]; (exit code, stdout + stderr).
fn run_script(env: &[(&str, String)]) -> (i32, String) {
    let mut child = Command::new("python3")
        .arg("-u")
        .arg(script())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env_remove("CONSUL_HTTP_TOKEN")
        .env_remove("CONSUL_HTTP_ADDR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let started = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait for python3") {
            break status.code().unwrap_or(-1);
        }
        if started.elapsed() > SCRIPT_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break -1;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut output = stdout.join().unwrap_or_default();
    output.push_str(&stderr.join().unwrap_or_default());
    (code, output)
}

/// py-consul, unmodified, creates a session, acquires, renews, watches with a
/// blocking query on a follower and releases against a 3-node failoverd cluster.
#[tokio::test]
async fn py_consul_session_lock_watch_release() {
    let version = match py_consul_version() {
        Ok(version) => version,
        Err(reason) => return skip(&reason),
    };
    println!("py-consul {version}");

    let mut cluster = Cluster::new(&ROLES);
    cluster.start_in_order(&ALL);
    let leader = cluster.wait_leader(&ALL).await;
    let follower = ALL
        .into_iter()
        .filter(|&i| i != leader)
        .min_by_key(|&i| cluster.agents[i].role != "validator")
        .expect("a follower");
    let leader_addr = cluster.agents[leader].consul_addr.clone();
    let follower_addr = cluster.agents[follower].consul_addr.clone();
    wait_listening(&leader_addr);
    wait_listening(&follower_addr);
    println!(
        "leader {} at {leader_addr}, follower {} ({}) at {follower_addr}",
        cluster.agents[leader].name, cluster.agents[follower].name, cluster.agents[follower].role
    );

    let (code, output) = run_script(&[
        ("CONSUL_LEADER_HTTP_ADDR", leader_addr),
        ("CONSUL_FOLLOWER_HTTP_ADDR", follower_addr),
        ("CONSUL_EXPECT_PEERS", ALL.len().to_string()),
    ]);
    println!("{output}");
    if code == EXIT_NO_LIBRARY {
        return skip("py-consul is not importable by the script's python3");
    }
    assert_eq!(
        code,
        0,
        "test_client.py failed (exit {code}); output above\n{}",
        cluster.logs()
    );
}
