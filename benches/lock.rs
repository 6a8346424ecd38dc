//! Lock-service latency and throughput through the Consul-compatible API of a
//! three-node loopback cluster (release build, default timings):
//!
//! * acquire and renew latency, p50/p99, through the leader's API and through a
//!   follower's (forwarded to the leader);
//! * KV put throughput with 16 concurrent clients for 5 s.
//!
//! Run with `cargo bench --bench lock`. Numbers are printed, not asserted.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use failoverd::local_cluster::LocalCluster;
use failoverd::raft::Role;

const ROLES: [Role; 3] = [Role::Validator, Role::Validator, Role::Arbiter];

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what}: n={} p50={:.2} ms p99={:.2} ms max={:.2} ms",
        samples.len(),
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().unwrap_or(&Duration::ZERO))
    );
}

async fn session(http: &reqwest::Client, api: &str) -> String {
    let body = r#"{"Name":"bench","TTL":"30s","LockDelay":"0s"}"#;
    let resp: serde_json::Value = http
        .put(format!("{api}/v1/session/create"))
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    resp["ID"].as_str().unwrap().to_string()
}

async fn latencies(http: &reqwest::Client, api: &str, label: &str, n: usize) {
    let id = session(http, api).await;
    let key = format!("{api}/v1/kv/bench/lock-{label}");
    let mut acquire = Vec::new();
    let mut renew = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let ok = http
            .put(format!("{key}?acquire={id}"))
            .body("x")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        acquire.push(t.elapsed());
        assert_eq!(ok, "true");
        http.put(format!("{key}?release={id}")).send().await.unwrap();
        let t = Instant::now();
        let resp = http.put(format!("{api}/v1/session/renew/{id}")).send().await.unwrap();
        renew.push(t.elapsed());
        assert!(resp.status().is_success());
    }
    report(&format!("acquire via {label}"), acquire);
    report(&format!("renew via {label}"), renew);
}

async fn throughput(http: &reqwest::Client, api: &str, clients: usize, secs: u64) {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, api, done) = (http.clone(), api.to_string(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < until {
                let url = format!("{api}/v1/kv/bench/put/{c}/{}", i % 100);
                let resp = http.put(url).body("value").send().await.unwrap();
                assert!(resp.status().is_success());
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = done.load(Ordering::Relaxed);
    println!(
        "KV put throughput via the leader, {clients} clients, {secs} s: {n} acknowledged puts, {:.0}/s",
        n as f64 / secs as f64
    );
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let bin = env!("CARGO_BIN_EXE_failoverd").into();
        let mut cluster = LocalCluster::create(bin, &ROLES, |_| String::new()).expect("cluster");
        for i in 0..3 {
            cluster.start(i).expect("start");
        }
        let leader = cluster
            .wait_leader(&[0, 1, 2], Duration::from_secs(30))
            .await
            .expect("leader");
        let follower = (leader + 1) % 3;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let http = reqwest::Client::new();
        let api = |i: usize| format!("http://{}", cluster.nodes[i].consul);
        latencies(&http, &api(leader), "leader", 300).await;
        latencies(&http, &api(follower), "follower", 300).await;
        throughput(&http, &api(leader), 16, 5).await;
    });
}
