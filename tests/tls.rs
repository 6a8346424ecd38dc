//! Mutual TLS between peers, over real processes: `failoverd tls init` material
//! forms a cluster; a member with a certificate from another CA, or with no TLS
//! at all, is refused (and the refusal logged with the peer's address) while the
//! rest of the cluster keeps committing; a bad `[cluster.tls]` exits 64.

mod common;

use std::io::Read;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use std::time::Instant;

use common::run_cli;
use common::run_cli_env;
use common::Cluster;

const REFUSED: &str = "refused peer connection: TLS handshake failed";

/// Runs `failoverd tls init --out dir` for the given agents (named as in the harness).
fn tls_init(cluster: &Cluster, dir: &Path, agents: &[usize]) {
    let out = dir.display().to_string();
    let nodes: Vec<String> = agents
        .iter()
        .map(|&i| format!("{}={}", cluster.agents[i].name, cluster.agents[i].peer_addr))
        .collect();
    let mut args = vec!["tls", "init", "--out", out.as_str()];
    for node in &nodes {
        args.extend(["--node", node.as_str()]);
    }
    let (code, stdout, stderr) = run_cli(&args);
    assert_eq!(code, 0, "tls init failed:\n{stdout}\n{stderr}");
}

/// The `[cluster.tls]` section for node `name` with the files in `dir`.
fn tls_toml(dir: &Path, name: &str) -> String {
    format!(
        "[cluster.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        dir.join("ca.pem").display(),
        dir.join(format!("{name}.pem")).display(),
        dir.join(format!("{name}-key.pem")).display(),
    )
}

/// A started 3-node cluster whose peers all use the certificates in `<tmp>/tls`;
/// returns it with its leader once a first write has converged everywhere.
async fn tls_cluster() -> (Cluster, usize) {
    let mut cluster = Cluster::new(&["validator", "validator", "arbiter"]);
    let dir = cluster.dir.path().join("tls");
    tls_init(&cluster, &dir, &[0, 1, 2]);
    for i in 0..3 {
        cluster.agents[i].extra_toml = tls_toml(&dir, &cluster.agents[i].name);
        cluster.write_config(i);
    }
    cluster.start_in_order(&[0, 1, 2]);
    let leader = cluster.wait_leader(&[0, 1, 2]).await;
    let index = cluster.put_eventually(leader, "formed", "yes").await;
    cluster.wait_converged(&[0, 1, 2], index).await;
    (cluster, leader)
}

/// Number of lines of agent `i`'s log from byte `from` on that contain `needle`.
fn count(cluster: &Cluster, i: usize, from: usize, needle: &str) -> usize {
    cluster.log_text(i).get(from..).unwrap_or("").matches(needle).count()
}

/// Asserts that agent `i` answers status, has applied less than `index` and has no `key`.
async fn assert_behind(cluster: &Cluster, i: usize, index: u64, key: &str) {
    let status = cluster.status(i).await.expect("the refused node's API answers");
    let applied = status["applied_index"].as_u64().unwrap_or(0);
    assert!(applied < index, "refused node applied {applied} >= {index}: {status}");
    let url = format!("{}/v1/kv/{key}", cluster.agents[i].api());
    let resp = cluster.http.get(url).send().await.expect("GET on the refused node");
    assert_eq!(resp.status().as_u16(), 404, "refused node has {key}");
}

/// `tls init` writes the CA and one cert/key per node, all 0600, and three nodes using them form a cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_init_material_forms_a_cluster() {
    let (cluster, leader) = tls_cluster().await;
    let dir = cluster.dir.path().join("tls");
    let mut names = vec!["ca.pem".to_string(), "ca-key.pem".to_string()];
    for a in &cluster.agents {
        names.push(format!("{}.pem", a.name));
        names.push(format!("{}-key.pem", a.name));
    }
    for name in &names {
        let meta = std::fs::metadata(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name} mode");
    }
    for i in 0..3 {
        let started = cluster.wait_log(i, 0, &["agent started", "tls=true"], 1).await;
        assert_eq!(started.len(), 1, "{started:?}");
    }
    let index = cluster.put_eventually(leader, "k", "v").await;
    let (_, digest) = cluster.wait_converged(&[0, 1, 2], index).await;
    assert!(!digest.is_empty());
    for i in 0..3 {
        assert_eq!(cluster.get(i, "k").await.as_deref(), Some("v"));
        assert_eq!(
            count(&cluster, i, 0, "refused peer connection"),
            0,
            "{}",
            cluster.log_text(i)
        );
    }
}

/// A member restarted with a certificate from another CA is refused both ways and never catches up; the others commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_with_certificate_from_another_ca_is_refused() {
    let (mut cluster, leader) = tls_cluster().await;
    let bad = (leader + 1) % 3;
    let other = 3 - leader - bad;
    let good = [leader, other];
    for i in good {
        assert_eq!(
            count(&cluster, i, 0, "refused peer connection"),
            0,
            "refusal before the swap"
        );
    }

    let foreign = cluster.dir.path().join("other-ca");
    tls_init(&cluster, &foreign, &[bad]);
    let own = cluster.agents[bad].extra_toml.clone();
    cluster.kill9(bad);
    let from: Vec<usize> = (0..3).map(|i| cluster.log_text(i).len()).collect();
    cluster.agents[bad].extra_toml = tls_toml(&foreign, &cluster.agents[bad].name);
    cluster.write_config(bad);
    cluster.start(bad);

    let index = cluster.put_eventually(leader, "after-swap", "1").await;
    cluster.wait_converged(&good, index).await;
    // The good nodes refuse its connections; it refuses theirs.
    for i in good {
        let lines = cluster.wait_log(i, from[i], &[REFUSED], 1).await;
        assert!(lines.iter().all(|l| l.contains("peer=127.0.0.1:")), "{lines:?}");
    }
    cluster.wait_log(bad, from[bad], &[REFUSED], 1).await;
    let leader_addr = format!("addr={}", cluster.agents[leader].peer_addr);
    cluster
        .wait_log(bad, from[bad], &["peer RPC failed", &leader_addr], 1)
        .await;
    // After the write committed, the leader kept trying and kept being refused.
    let mark = cluster.log_text(bad).len();
    cluster.wait_log(bad, mark, &[REFUSED], 2).await;
    assert_behind(&cluster, bad, index, "after-swap").await;

    let index = cluster.put_eventually(other, "still-committing", "2").await;
    cluster.wait_converged(&good, index).await;
    assert_behind(&cluster, bad, index, "still-committing").await;

    // Control: with its own CA's certificate back, the same node catches up.
    cluster.kill9(bad);
    cluster.agents[bad].extra_toml = own;
    cluster.write_config(bad);
    cluster.start(bad);
    cluster.wait_converged(&[0, 1, 2], index).await;
    assert_eq!(cluster.get(bad, "after-swap").await.as_deref(), Some("1"));
}

/// A member restarted without TLS is refused by its TLS peers (logged with the peer address); the others commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_member_is_refused_by_tls_peers() {
    let (mut cluster, leader) = tls_cluster().await;

    // The peer port refuses a plaintext client and logs exactly its address.
    let from = cluster.log_text(leader).len();
    let mut probe = std::net::TcpStream::connect(&cluster.agents[leader].peer_addr).expect("connect");
    let probe_addr = probe.local_addr().expect("local addr");
    probe.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    probe.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").expect("write");
    let _ = probe.read_to_end(&mut Vec::new());
    cluster
        .wait_log(leader, from, &[REFUSED, &format!("peer={probe_addr}")], 1)
        .await;

    let bad = (leader + 1) % 3;
    let other = 3 - leader - bad;
    let good = [leader, other];
    cluster.kill9(bad);
    let from: Vec<usize> = (0..3).map(|i| cluster.log_text(i).len()).collect();
    cluster.agents[bad].extra_toml.clear();
    cluster.write_config(bad);
    cluster.start(bad);
    cluster
        .wait_log(bad, from[bad], &["agent started", "tls=false"], 1)
        .await;

    let index = cluster.put_eventually(leader, "after-swap", "1").await;
    cluster.wait_converged(&good, index).await;
    for i in good {
        let lines = cluster.wait_log(i, from[i], &[REFUSED], 1).await;
        assert!(lines.iter().all(|l| l.contains("peer=127.0.0.1:")), "{lines:?}");
    }
    let leader_addr = format!("addr={}", cluster.agents[leader].peer_addr);
    cluster
        .wait_log(bad, from[bad], &["peer RPC failed", &leader_addr], 1)
        .await;
    // After the write committed, the plaintext node kept trying and kept being refused.
    let marks: Vec<usize> = good.iter().map(|&i| cluster.log_text(i).len()).collect();
    let refused_after = |i: usize| count(&cluster, good[i], marks[i], REFUSED);
    let deadline = Instant::now() + common::PATIENCE;
    while refused_after(0) + refused_after(1) < 2 {
        assert!(
            Instant::now() < deadline,
            "no refusals after the write\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_behind(&cluster, bad, index, "after-swap").await;

    let index = cluster.put_eventually(other, "still-committing", "2").await;
    cluster.wait_converged(&good, index).await;
    assert_behind(&cluster, bad, index, "still-committing").await;
}

/// A `[cluster.tls]` whose cert_file does not exist exits 64 naming `cluster.tls.cert_file` and the path.
#[test]
fn missing_cert_file_exits_64() {
    let mut cluster = Cluster::new(&["validator"]);
    let dir = cluster.dir.path().join("tls");
    tls_init(&cluster, &dir, &[0]);
    let missing = dir.join("gone.pem");
    let toml = tls_toml(&dir, "node1").replace(
        &dir.join("node1.pem").display().to_string(),
        &missing.display().to_string(),
    );
    cluster.agents[0].extra_toml = toml;
    cluster.write_config(0);
    let config = cluster.agents[0].config.display().to_string();
    let (code, _, stderr) = run_cli_env(&["agent", "--config", &config], &[]);
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("failoverd: config error: cluster.tls.cert_file"),
        "{stderr}"
    );
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
}

/// A `[cluster.tls]` with only two of its three files exits 64 naming `cluster.tls` and the missing key.
#[test]
fn partial_tls_section_exits_64() {
    let mut cluster = Cluster::new(&["validator"]);
    let dir = cluster.dir.path().join("tls");
    tls_init(&cluster, &dir, &[0]);
    let toml = tls_toml(&dir, "node1");
    let partial: String = toml
        .lines()
        .filter(|l| !l.starts_with("key_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    cluster.agents[0].extra_toml = partial;
    cluster.write_config(0);
    let config = cluster.agents[0].config.display().to_string();
    let (code, _, stderr) = run_cli_env(&["agent", "--config", &config], &[]);
    assert_eq!(code, 64, "{stderr}");
    let prefix = format!("failoverd: config error: cluster.tls (file {config}): ");
    assert!(stderr.starts_with(&prefix), "{stderr}");
    assert!(stderr.contains("missing: key_file"), "{stderr}");
}
