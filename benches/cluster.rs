//! Cluster benchmarks on loopback, real processes, default timings:
//!
//! * leader re-election time after `kill -9` of the leader (median of
//!   `FAILOVERD_BENCH_RUNS`, default 5), and the time until a write commits again;
//! * idle RSS and CPU of an arbiter agent over `FAILOVERD_BENCH_IDLE_SECS`
//!   (default 60).
//!
//! Run with `cargo bench --bench cluster`. Numbers are printed, not asserted.

use std::time::Duration;
use std::time::Instant;

use failoverd::local_cluster::LocalCluster;
use failoverd::raft::Role;

const ROLES: [Role; 3] = [Role::Validator, Role::Validator, Role::Arbiter];

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn cluster() -> LocalCluster {
    let bin = env!("CARGO_BIN_EXE_failoverd").into();
    let mut cluster = LocalCluster::create(bin, &ROLES, |_| String::new()).expect("create cluster");
    for i in 0..ROLES.len() {
        cluster.start(i).expect("start agent");
    }
    cluster
}

async fn reelection_once() -> (Duration, Duration) {
    let mut cluster = cluster();
    let all = [0, 1, 2];
    let leader = cluster
        .wait_leader(&all, Duration::from_secs(30))
        .await
        .expect("first leader");
    // Let the cluster settle into steady heartbeats.
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.put(leader, "warm", "up").await.expect("warm-up write");
    cluster.kill9(leader);
    let killed = Instant::now();
    let survivors: Vec<usize> = all.into_iter().filter(|&i| i != leader).collect();
    let new_leader = cluster
        .wait_leader(&survivors, Duration::from_secs(30))
        .await
        .expect("new leader");
    let elected = killed.elapsed();
    while cluster.put(new_leader, "after", "crash").await.is_err() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (elected, killed.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn proc_field(pid: u32, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the ")" that ends the command name: state is field 3.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

async fn arbiter_idle(secs: u64) {
    let cluster = cluster();
    cluster
        .wait_leader(&[0, 1, 2], Duration::from_secs(30))
        .await
        .expect("leader");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = cluster.nodes[2].pid().expect("arbiter pid");
    let ticks0 = cpu_ticks(pid).expect("cpu ticks");
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let ticks1 = cpu_ticks(pid).expect("cpu ticks");
    let elapsed = t0.elapsed().as_secs_f64();
    // Linux reports these in USER_HZ, which is 100 on every mainstream kernel.
    let cpu = (ticks1 - ticks0) as f64 / 100.0 / elapsed * 100.0;
    let rss = proc_field(pid, "status", "VmRSS:").unwrap_or(0);
    let hwm = proc_field(pid, "status", "VmHWM:").unwrap_or(0);
    let threads = proc_field(pid, "status", "Threads:").unwrap_or(0);
    println!("arbiter idle over {elapsed:.0} s: CPU {cpu:.2}% of one core, RSS {rss} KiB (peak {hwm} KiB), {threads} threads");
}

fn main() {
    // `cargo bench` passes `--bench`; a plain `cargo test` run of benches passes nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let runs = env_or("FAILOVERD_BENCH_RUNS", 5);
    let mut elections = Vec::new();
    let mut writes = Vec::new();
    for run in 1..=runs {
        let (elected, writable) = runtime.block_on(reelection_once());
        println!(
            "run {run}: new leader after {:.0} ms, first write committed after {:.0} ms",
            elected.as_secs_f64() * 1000.0,
            writable.as_secs_f64() * 1000.0
        );
        elections.push(elected);
        writes.push(writable);
    }
    println!(
        "re-election after kill -9 of the leader (heartbeat 250ms, election timeout 1s..2s), median of {runs}: {:.0} ms (writable again: {:.0} ms)",
        median(elections).as_secs_f64() * 1000.0,
        median(writes).as_secs_f64() * 1000.0
    );
    runtime.block_on(arbiter_idle(env_or("FAILOVERD_BENCH_IDLE_SECS", 60)));
}
