//! `failoverd lock`: two contenders, each talking to its own agent's
//! Consul-compatible API; exactly one child runs at a time, and killing the
//! holder's agent hands the lock (and the child) over.

mod common;

use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

/// A child that appends "<name> <unix ns>" to `ledger` every 50 ms.
fn ticker(name: &str, ledger: &std::path::Path) -> String {
    format!(
        "while true; do echo \"{name} $(date +%s%N)\" >> {}; sleep 0.05; done",
        ledger.display()
    )
}

fn contender(consul: &str, name: &str, ledger: &std::path::Path, log: &std::path::Path) -> Child {
    let log = std::fs::File::create(log).expect("log");
    Command::new(common::BIN)
        .args([
            "lock",
            "--consul-url",
            &format!("http://{consul}"),
            "--ttl",
            "3s",
            "--lock-delay",
            "1s",
        ])
        .args(["--grace", "1s", "svc", "--", "sh", "-c", &ticker(name, ledger)])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn failoverd lock")
}

/// (name, first tick ns, last tick ns) per contiguous run of one name.
fn tenures(ledger: &std::path::Path) -> Vec<(String, u128, u128)> {
    let text = std::fs::read_to_string(ledger).unwrap_or_default();
    let mut ticks: Vec<(u128, String)> = text
        .lines()
        .filter_map(|l| {
            l.split_once(' ')
                .and_then(|(n, t)| Some((t.trim().parse().ok()?, n.to_string())))
        })
        .collect();
    ticks.sort();
    let mut runs: Vec<(String, u128, u128)> = Vec::new();
    for (t, name) in ticks {
        match runs.last_mut() {
            Some(run) if run.0 == name => run.2 = t,
            _ => runs.push((name, t, t)),
        }
    }
    runs
}

/// Exactly one child runs at a time, and killing the holder's agent (kill -9)
/// moves the lock and the child to the other contender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_child_at_a_time_and_handover_when_the_holders_agent_dies() {
    let mut cluster = common::Cluster::new(&["validator", "validator", "arbiter"]);
    for i in 0..3 {
        let text = std::fs::read_to_string(&cluster.agents[i].config).expect("config");
        let text = text.replace("[consul_api]\n", "[consul_api]\nsession_ttl_min = \"1s\"\n");
        std::fs::write(&cluster.agents[i].config, text).expect("config");
        cluster.start(i);
    }
    cluster.wait_leader(&[0, 1, 2]).await;
    let dir = cluster.dir.path().to_path_buf();
    let ledger = dir.join("ledger");
    let mut a = contender(&cluster.agents[0].consul_addr, "a", &ledger, &dir.join("lock-a.log"));
    let mut b = contender(&cluster.agents[1].consul_addr, "b", &ledger, &dir.join("lock-b.log"));

    // One of them gets the lock and keeps it while both agents live.
    let deadline = Instant::now() + common::PATIENCE;
    while tenures(&ledger).is_empty() {
        assert!(Instant::now() < deadline, "no child ever ran\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let runs = tenures(&ledger);
    assert_eq!(runs.len(), 1, "one holder while nothing fails: {runs:?}");
    let holder = runs[0].0.clone();

    // Kill the holder's agent: its `failoverd lock` can no longer renew, stops
    // its child, and the other contender takes over once the session expires.
    let holder_agent = if holder == "a" { 0 } else { 1 };
    cluster.kill9(holder_agent);
    let deadline = Instant::now() + common::PATIENCE;
    while tenures(&ledger).iter().all(|r| r.0 == holder) {
        assert!(Instant::now() < deadline, "no handover\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for child in [&mut a, &mut b] {
        let _ = child.kill();
        let _ = child.wait();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let runs = tenures(&ledger);
    let summary: Vec<String> = runs.iter().map(|(n, s, e)| format!("{n}: {s}..{e}")).collect();
    println!("tenures: {summary:?}");
    assert_eq!(runs.len(), 2, "exactly one handover, no interleaving: {summary:?}");
    assert_ne!(runs[0].0, runs[1].0);
    let gap_ms = (runs[1].1 - runs[0].2) / 1_000_000;
    println!("handover gap: {gap_ms} ms");
    // Clean up whatever the killed contender left (its child was stopped by it).
    let _ = Command::new("pkill")
        .arg("-f")
        .arg(ledger.display().to_string())
        .status();
}
